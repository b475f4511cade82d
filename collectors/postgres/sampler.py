"""DB load: active sessions counted once a second between cycles, averaged per wait class each cycle.

This is the measure managed database consoles call DB load (average active sessions). A session that
is active with no wait event is on CPU, or waiting for it. The samples run on the target's one
connection, in a thread of the collector's own that yields to the cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import psycopg

from collectors.base import CollectorError
from collectors.postgres.queries import LOAD_SAMPLE_SQL, number
from collectors.postgres.session import Session

WAIT_CLASSES = ("cpu", "io", "lock", "lwlock", "client", "other")
CLASS_OF_WAIT_TYPE = {None: "cpu", "IO": "io", "Lock": "lock", "LWLock": "lwlock", "Client": "client"}
Counts = Iterable[tuple[str | None, float]]  # active sessions per wait event type


class LoadSampler:
    """Sums active sessions per wait class. Every method runs with the session's lock held, by the
    sampler thread (through ``Session.idle``) or by the cycle, so the sums need no lock of their own."""

    def __init__(self, session: Session, period: float | None) -> None:
        """``period`` None: no thread; each cycle's own sample is the load (cycles of a second or less)."""
        self._session = session
        self._period = period
        self._sums = dict.fromkeys(WAIT_CLASSES, 0.0)
        self._samples = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, connection: psycopg.Connection) -> None:
        rows = connection.execute(LOAD_SAMPLE_SQL).fetchall()
        # Checked before any is added: a bad row must not leave half a sample in the sums.
        self.add([(wait_type, number(sessions, "active sessions")) for wait_type, sessions in rows])

    def add(self, counts: Counts) -> None:
        for wait_type, sessions in counts:
            self._sums[CLASS_OF_WAIT_TYPE.get(wait_type, "other")] += sessions
        self._samples += 1

    def average(self, current: Counts) -> dict[str, float]:
        """The average per wait class since the previous call; ``current``, the cycle's own sample,
        stands in when the thread took none (cycles of a second or less run no thread)."""
        if not self._samples:
            self.add(current)
        averages = {wait_class: total / self._samples for wait_class, total in self._sums.items()}
        self._sums = dict.fromkeys(WAIT_CLASSES, 0.0)
        self._samples = 0
        return averages

    def start(self, name: str) -> None:
        if self._thread is None and self._period is not None:
            self._thread = threading.Thread(
                target=self._run, args=[self._period], name=f"load-sampler-{name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self._period)

    def _run(self, period: float) -> None:
        while not self._stopping.wait(period):
            try:
                with self._session.idle() as connection:
                    if connection is not None:
                        self.take(connection)
            except CollectorError:
                pass  # a broken connection is the next cycle's to reopen and report

"""Runs collector cycles on APScheduler; the only place where collector errors are caught.

Each target has one worker thread that runs its ``collect()``; the scheduler's job hands it a cycle
and waits at most the cycle timeout, so a collector that hangs in a driver call is reported (reason
``timeout``) while every other job keeps its cycle. A collector whose previous cycle is still hung is
not handed another: one thread per target, never a pile-up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from agent.redact import REDACTOR
from agent.store import Store
from collectors.base import Collector, CollectorError, Reason, Sample

log = logging.getLogger("tierwatch.scheduler")
MAX_CONCURRENT_JOBS = 32
CLOSE_TIMEOUT = 2.0


@dataclass
class _Outcome:
    finished: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    sample: Sample | None = None
    error: tuple[Reason, str] | None = None
    duration: float = 0.0


class CollectorRunner:
    def __init__(self, collector: Collector, store: Store, timeout: float) -> None:
        self.collector = collector
        self.key = (collector.name, collector.target)
        self._store = store
        self._timeout = timeout
        self._in_flight: _Outcome | None = None
        self._stopping = False
        self._reported: Reason | None = None
        self._cycles: queue.SimpleQueue[_Outcome | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        store.register(*self.key)

    def run_cycle(self) -> None:
        previous = self._in_flight
        if previous is not None and not previous.finished.is_set():
            stuck_for = time.monotonic() - previous.started
            self._failed(Reason.TIMEOUT, f"previous cycle still running after {stuck_for:.1f} s", stuck_for)
            return
        outcome = self._in_flight = _Outcome()
        if self._worker is None:
            name = "collect-{}-{}".format(*self.key)
            self._worker = threading.Thread(target=self._work, name=name, daemon=True)
            self._worker.start()
        self._cycles.put(outcome)
        finished = outcome.finished.wait(self._timeout)
        if self._stopping:
            return
        if not finished:
            self._failed(Reason.TIMEOUT, f"no answer within {self._timeout:g} s", self._timeout)
        elif outcome.sample is not None:
            self._succeeded(outcome.sample, outcome.duration)
        elif outcome.error is not None:
            self._failed(*outcome.error, outcome.duration)

    def stop(self) -> None:
        """Ends the worker after its current cycle and releases a job waiting on a hung one, so
        shutdown never waits for a timeout."""
        self._stopping = True
        self._cycles.put(None)
        if self._in_flight is not None:
            self._in_flight.finished.set()

    def _work(self) -> None:
        while (outcome := self._cycles.get()) is not None:
            self._collect(outcome)

    def _collect(self, outcome: _Outcome) -> None:

        try:
            outcome.sample = self.collector.collect()
        except CollectorError as error:
            outcome.error = (error.reason, error.detail)
        except Exception as error:  # a collector bug must not take the agent down
            outcome.error = (Reason.OTHER, f"{type(error).__name__}: {error}")
        finally:
            outcome.duration = time.monotonic() - outcome.started
            outcome.finished.set()

    def _succeeded(self, sample: Sample, duration: float) -> None:
        self._store.record_success(sample, duration)
        if self._reported is not None:
            log.info("collector %s/%s recovered", *self.key)
            self._reported = None

    def _failed(self, reason: Reason, detail: str, duration: float) -> None:
        detail = REDACTOR.scrub(detail)
        self._store.record_failure(self.key, reason, detail, duration)
        # One line per change of state, not per cycle: a target down for an hour is one warning.
        if self._reported != reason:
            log.warning("collector %s/%s failed (%s): %s", *self.key, reason.value, detail)
            self._reported = reason
        else:
            log.debug("collector %s/%s still failing (%s): %s", *self.key, reason.value, detail)


class Scheduler:
    def __init__(self, runners: Iterable[CollectorRunner], interval: float) -> None:
        self.runners = list(runners)
        self._interval = interval
        workers = max(1, min(MAX_CONCURRENT_JOBS, len(self.runners) + 1))
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": max(1, int(interval))},
            timezone=UTC,
        )

    def add_job(self, function: Callable[[], None], job_id: str) -> None:
        self._scheduler.add_job(
            function, "interval", seconds=self._interval, id=job_id, next_run_time=datetime.now(UTC)
        )

    def start(self) -> None:
        for runner in self.runners:
            self.add_job(runner.run_cycle, "collect:{}:{}".format(*runner.key))
        self._scheduler.start()

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()
        self._scheduler.shutdown(wait=False)
        # A collector hung in a driver call may not let go of its connection; never wait on it long.
        closer = threading.Thread(target=self._close_collectors, name="close-collectors", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT)

    def _close_collectors(self) -> None:
        for runner in self.runners:
            try:
                runner.collector.close()
            except Exception as error:  # closing is best effort at shutdown
                log.debug("closing %s/%s: %s", *runner.key, REDACTOR.scrub(str(error)))

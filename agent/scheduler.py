"""Runs collector cycles on APScheduler; the only place where collector errors are caught.

Each target has one worker thread that runs its ``collect()``; the scheduler's job hands it a cycle
and waits at most the cycle timeout, so a collector that hangs in a driver call is reported (reason
``timeout``) while every other job keeps its cycle. A collector whose previous cycle is still hung is
not handed another: one thread per target, never a pile-up.

What runs after a round (the alerting cycle) is no job of its own: the last collector job to end its
cycle runs it, so it judges this round's samples rather than the last round's, and no extra thread
wakes up and contends with the collectors every interval.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.schedulers.background import BackgroundScheduler

from agent.redact import REDACTOR
from agent.store import Store
from collectors.base import Collector, CollectorError, Reason, Sample

log = logging.getLogger("tierwatch.scheduler")
CLOSE_TIMEOUT = 2.0


class _Outcome:
    """One cycle handed to a worker. ``done`` is held until the cycle ends: the job waits by
    acquiring it, which is one C-level timed wait where an Event is a Condition and a fresh lock."""

    __slots__ = ("done", "duration", "error", "finished", "sample", "started")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.finished = False
        self.started = time.monotonic()
        self.sample: Sample | None = None
        self.error: tuple[Reason, str] | None = None
        self.duration = 0.0

    def end(self) -> None:
        self.finished = True
        with contextlib.suppress(RuntimeError):  # already ended: the worker and stop() both end one
            self.done.release()


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
        if previous is not None and not previous.finished:
            stuck_for = time.monotonic() - previous.started
            self._failed(Reason.TIMEOUT, f"previous cycle still running after {stuck_for:.1f} s", stuck_for)
            return
        outcome = self._in_flight = _Outcome()
        if self._worker is None:
            name = "collect-{}-{}".format(*self.key)
            self._worker = threading.Thread(target=self._work, name=name, daemon=True)
            self._worker.start()
        self._cycles.put(outcome)
        finished = outcome.done.acquire(timeout=self._timeout)
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
            self._in_flight.end()

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
            outcome.end()

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


class JobThreads(BaseExecutor):
    """An APScheduler executor that runs each job on a thread of its own, started at the job's first
    run and kept: a run is one queue hand-off to a waiting thread, without the pool's futures and
    done-callbacks. With max_instances=1 a job never needs more than one thread, and a job whose run
    hangs holds only its own."""

    def __init__(self) -> None:
        super().__init__()
        self._queues: dict[str, queue.SimpleQueue[tuple[Any, list[datetime]] | None]] = {}
        self._threads: list[threading.Thread] = []

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        # Called under the executor's lock: no two submissions race to start a job's thread.
        runs = self._queues.get(job.id)
        if runs is None:
            runs = self._queues[job.id] = queue.SimpleQueue()
            thread = threading.Thread(target=self._work, args=(runs,), name=f"job-{job.id}", daemon=True)
            self._threads.append(thread)
            thread.start()
        runs.put((job, run_times))

    def _work(self, runs: queue.SimpleQueue[tuple[Any, list[datetime]] | None]) -> None:
        while (run := runs.get()) is not None:
            job, run_times = run
            try:
                events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
            except BaseException:
                self._run_job_error(job.id, *sys.exc_info()[1:])
            else:
                self._run_job_success(job.id, events)

    def shutdown(self, wait: bool = True) -> None:
        for runs in self._queues.values():
            runs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class Round:
    """Calls ``after`` once every collector has ended its cycle of a round, on the thread of the
    last one. Every job ends its cycle within the cycle timeout (a hung collector is reported, not
    waited for), so a round always completes; a collector whose run was skipped only delays it."""

    def __init__(self, keys: Iterable[tuple[str, str]], after: Callable[[], None]) -> None:
        self._keys = frozenset(keys)
        self._pending = set(self._keys)
        self._after = after
        self._lock = threading.Lock()
        self._running = threading.Lock()
        self.stopped = False

    def finished(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._pending.discard(key)
            if self._pending or self.stopped:
                return
            self._pending = set(self._keys)
        # A round that completes while the last one's run is still going is coalesced into it.
        if not self._running.acquire(blocking=False):
            return
        try:
            self._after()
        except Exception as error:  # a bug after a round must not cost the collector job its cycle
            log.error("after-round job failed: %s", REDACTOR.scrub(f"{type(error).__name__}: {error}"))
        finally:
            self._running.release()


class Scheduler:
    def __init__(
        self,
        runners: Iterable[CollectorRunner],
        interval: float,
        after_each_round: Callable[[], None],
    ) -> None:
        """``after_each_round`` runs once all runners have ended a cycle (never, with no runners)."""
        self.runners = list(runners)
        self._interval = interval
        self._round = Round((runner.key for runner in self.runners), after_each_round)
        self._scheduler = BackgroundScheduler(
            executors={"default": JobThreads()},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": max(1, int(interval))},
            timezone=UTC,
        )

    def start(self) -> None:
        # Every job counts its intervals from one instant, so all are due together: the scheduler
        # wakes once per interval for all of them instead of once per job, and a round ends soon.
        anchor = datetime.now(UTC)
        for runner in self.runners:
            self._scheduler.add_job(
                self._cycle_of(runner),
                "interval",
                seconds=self._interval,
                start_date=anchor,
                id="collect:{}:{}".format(*runner.key),
                next_run_time=anchor,
            )
        self._scheduler.start()

    def _cycle_of(self, runner: CollectorRunner) -> Callable[[], None]:
        def cycle() -> None:
            try:
                runner.run_cycle()
            finally:
                self._round.finished(runner.key)

        return cycle

    def stop(self) -> None:
        self._round.stopped = True
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

"""Runs collector cycles on APScheduler; the only place where collector errors are caught.

Each target's job runs its ``collect()`` on a thread of its own (JobThreads), so a collector that
hangs in a driver call holds only that thread while every other job keeps its cycle. When the hung
job's next run comes due, the executor does not queue it but tells the runner, which reports the
cycle as timed out (reason ``timeout``) once it has run longer than the cycle timeout: one thread per
target, never a pile-up, and a hung target shows as down at the next interval.

What runs after a round (the alerting cycle) is no job of its own: the last collector job to end its
cycle runs it, so it judges this round's samples rather than the last round's, and no extra thread
wakes up and contends with the collectors every interval.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.schedulers.background import BackgroundScheduler

from agent.redact import REDACTOR
from agent.store import Store
from collectors.base import Collector, CollectorError, Reason, Sample

log = logging.getLogger("tierwatch.scheduler")
CLOSE_TIMEOUT = 2.0


class CollectorRunner:
    """Runs one target's cycles and records each outcome. Cycles run on the caller's thread, one at a
    time: a call while a cycle is still going only reports that cycle if it is past its timeout."""

    def __init__(self, collector: Collector, store: Store, timeout: float) -> None:
        self.collector = collector
        self.key = (collector.name, collector.target)
        self._store = store
        self._timeout = timeout
        self._started: float | None = None  # monotonic start of the cycle in flight
        self._stopping = False
        self._reported: Reason | None = None
        store.register(*self.key)

    def run_cycle(self) -> None:
        if self._started is not None:
            self.overdue()
            return
        started = self._started = time.monotonic()
        outcome = self._collect()
        duration = time.monotonic() - started
        self._started = None
        if self._stopping:
            return
        if isinstance(outcome, Sample):
            self._succeeded(outcome, duration)
        else:
            self._failed(*outcome, duration)

    def _collect(self) -> Sample | tuple[Reason, str]:
        try:
            return self.collector.collect()
        except CollectorError as error:
            return error.reason, error.detail
        except Exception as error:  # a collector bug must not take the agent down
            return Reason.OTHER, f"{type(error).__name__}: {error}"

    def overdue(self) -> bool:
        """The next cycle is due while this one is still going: past the timeout, it is reported as
        timed out (again at every due cycle while it lasts), and True returned; within it, it is let
        run."""
        started = self._started
        if started is None or self._stopping:
            return False
        stuck_for = time.monotonic() - started
        if stuck_for < self._timeout:
            return False
        self._failed(Reason.TIMEOUT, f"cycle still running after {stuck_for:.1f} s", stuck_for)
        return True

    def stop(self) -> None:
        """Results of a cycle still running are dropped: the pipeline it belongs to is gone."""
        self._stopping = True

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
    hangs holds only its own.

    A run that comes due while the job's last run is still going is not queued but handed to
    ``on_busy`` (the job id): APScheduler would raise and log a warning for every such run."""

    def __init__(self, on_busy: Callable[[str], None]) -> None:
        super().__init__()
        self._on_busy = on_busy
        self._queues: dict[str, queue.SimpleQueue[tuple[Any, list[datetime]] | None]] = {}
        self._threads: list[threading.Thread] = []

    def submit_job(self, job: Any, run_times: list[datetime]) -> None:
        with self._lock:
            if self._instances[job.id] < job.max_instances:
                self._do_submit_job(job, run_times)
                self._instances[job.id] += 1
                return
        self._on_busy(job.id)

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


class SteadyScheduler(BackgroundScheduler):
    """APScheduler times its jobs by the wall clock: set back (an NTP step, a VM restored from a
    snapshot), it would hold every job until the clock caught up, and collection would stop for as
    long as the step, every value and alert frozen. No job here is ever due more than one interval
    ahead, so one that is was put there by such a step: it is made due now."""

    def __init__(self, interval: float, **options: Any) -> None:
        super().__init__(**options)
        # A second of slack: the trigger's float arithmetic may put a run a microsecond further out.
        self._longest_wait = timedelta(seconds=interval + 1.0)

    def _process_jobs(self) -> float | None:
        # Checked on the wait the pass asks for, so that a pass costs nothing more while the clock
        # holds steady: this thread wakes every interval, and each wake is paid in CPU.
        wait = super()._process_jobs()
        if wait is None or wait <= self._longest_wait.total_seconds():
            return wait
        now = datetime.now(self.timezone)
        for job in self.get_jobs():
            if job.next_run_time is not None and job.next_run_time - now > self._longest_wait:
                job.modify(next_run_time=now)
        return 0.0


class Round:
    """Calls ``after`` once every collector has ended its cycle of a round, on the thread of the
    last one. A hung collector counts as ended each time its next cycle comes due (it is reported, not
    waited for), so a round always completes; a cycle that runs long within its timeout delays it."""

    def __init__(self, keys: Iterable[tuple[str, str]], after: Callable[[], None]) -> None:
        self._keys = frozenset(keys)
        self._pending = set(self._keys)
        self._after = after
        self._lock = threading.Lock()
        self._running = threading.Lock()
        self._stopped = False

    def finished(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._pending.discard(key)
            if self._pending or self._stopped:
                return
            self._pending = set(self._keys)
        # A round that completes while the last one's run is still going is coalesced into it.
        if not self._running.acquire(blocking=False):
            return
        try:
            if not self._stopped:  # checked again under _running, which stop() waits for
                self._after()
        except Exception as error:  # a bug after a round must not cost the collector job its cycle
            log.error("after-round job failed: %s", REDACTOR.scrub(f"{type(error).__name__}: {error}"))
        finally:
            self._running.release()

    def stop(self, timeout: float) -> None:
        """No run of ``after`` starts from now on; one that is running is given ``timeout`` to end,
        so that what it leaves behind is complete when a reload takes it over."""
        self._stopped = True
        if self._running.acquire(timeout=timeout):
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
        self._by_job_id = {_job_id(runner): runner for runner in self.runners}
        self._scheduler = SteadyScheduler(
            interval,
            executors={"default": JobThreads(self._busy)},
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
                id=_job_id(runner),
                next_run_time=anchor,
            )
        self._scheduler.start()

    def _busy(self, job_id: str) -> None:
        runner = self._by_job_id[job_id]
        runner.overdue()
        self._round.finished(runner.key)

    def _cycle_of(self, runner: CollectorRunner) -> Callable[[], None]:
        def cycle() -> None:
            try:
                runner.run_cycle()
            finally:
                self._round.finished(runner.key)

        return cycle

    def stop(self) -> None:
        self._round.stop(CLOSE_TIMEOUT)
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


def _job_id(runner: CollectorRunner) -> str:
    return "collect:{}:{}".format(*runner.key)

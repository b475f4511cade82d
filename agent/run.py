"""``tierwatch run``: the long-running agent, and its configuration reload on SIGHUP."""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from agent.alerting import AlertingJob, configured_rules
from agent.config import Config, ConfigError
from agent.exporter import MetricsPage
from agent.http import AgentServer
from agent.scheduler import CollectorRunner, Scheduler
from agent.store import Store
from agent.wiring import build_collectors, register_secrets, use_procfs
from alerts.alertmanager import AlertmanagerSender, without_credentials
from alerts.present import alert_json

log = logging.getLogger("tierwatch")
EXIT_OK, EXIT_CANNOT_RUN = 0, 2
HAND_OVER_SECONDS = 2.0


def listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def alertmanager_sender(config: Config) -> AlertmanagerSender | None:
    section = config.alertmanager
    if not section.urls:
        return None
    return AlertmanagerSender(
        section.urls,
        config.interval,
        section.resend_interval,
        timeout=section.timeout,
        static_labels=section.labels,
        runbook_base_url=config.runbook_base_url,
    )


@dataclass
class Pipeline:
    """Everything one configuration sets up behind the HTTP server: collectors, their jobs, the
    store they fill, the alerting job and the sender. A reload builds a new one and swaps it in."""

    config: Config
    store: Store
    page: MetricsPage
    scheduler: Scheduler
    alerting: AlertingJob
    sender: AlertmanagerSender | None
    # Each target's description, made at build: from then on a reload has stopped the running
    # configuration, and nothing that could still fail on the new one's input may be left to do.
    descriptions: dict[tuple[str, str], str]

    @classmethod
    def build(cls, config: Config) -> Pipeline:
        """Raises ConfigError (bad rule override, a collector that cannot be built) before anything runs."""
        register_secrets(config)
        rules = configured_rules(config)
        collectors = build_collectors(config)
        store = Store(window_seconds=config.window)
        runners = [CollectorRunner(collector, store, config.cycle_timeout) for collector in collectors]
        sender = alertmanager_sender(config)
        alerting = AlertingJob(store, rules, sender.notify if sender else None)
        scheduler = Scheduler(runners, config.interval, after_each_round=alerting.run_cycle)
        specs = {collector.name: collector.metrics for collector in collectors}
        page = MetricsPage(store, specs, sender.deliveries if sender else None)
        descriptions = {runner.key: runner.collector.describe() for runner in runners}
        return cls(config, store, page, scheduler, alerting, sender, descriptions)

    def alerts(self) -> list[dict[str, Any]]:
        return [alert_json(alert, self.config.runbook_base_url) for alert in self.store.alerts()]

    def start(self) -> None:
        for (collector, _), description in self.descriptions.items():
            log.info("collector %s: monitoring %s", collector, description)
        if not self.descriptions:
            log.warning("no collector is configured: nothing is monitored, and /readyz answers 503")
        use_procfs(self.config)
        if self.sender is not None:
            urls = (without_credentials(url) for url in self.config.alertmanager.urls)
            log.info("sending alerts to %s", ", ".join(urls))
            self.sender.start()
        self.scheduler.start()

    def stop(self, handing_over: bool = False) -> None:
        """``handing_over``: a reload will take over, so a post in progress is given a moment to end
        and be counted (bounded: a SIGTERM meanwhile still stops the agent within seconds)."""
        self.scheduler.stop()
        if self.sender is not None:
            self.sender.stop(wait=HAND_OVER_SECONDS if handing_over else 0.0)

    def take_over(self, previous: Pipeline) -> None:
        """Before ``start``: continues what ``previous`` (stopped) knew of the targets both
        configurations watch alike, so that a reload neither resets nor re-raises an alert. A target
        that kept its name but now points elsewhere (another address, say) starts afresh: its window
        would mix two servers' readings."""
        same = {key for key, text in self.descriptions.items() if previous.descriptions.get(key) == text}
        self.store.carry_over(previous.store, same)
        if self.sender is not None and previous.sender is not None:
            self.sender.carry_over(previous.sender)
        self.alerting.carry_over(previous.alerting, same)  # last: it may hand the sender resolutions

    def serve_through(self, server: AgentServer) -> None:
        server.page, server.store, server.alerts = self.page, self.store, self.alerts


class Signals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reload; the main thread acts on them, not the handler.

    The kernel hands a process's signal to any of its threads, and Python runs the handler only when
    the main thread next runs Python code: one blocked on a lock never would, and the signal would
    wait for the next one. So the main thread waits on a socket that the C-level handler writes to
    (signal.set_wakeup_fd), whichever thread the signal reached."""

    def __init__(self) -> None:
        self._woken, self._waker = socket.socketpair()
        for end in (self._woken, self._waker):
            end.setblocking(False)
        signal.set_wakeup_fd(self._waker.fileno(), warn_on_full_buffer=False)
        self.stopping = False
        self.reloading = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)

    def wait(self) -> None:
        """Until a signal comes. Its handler has run by the time the caller reads the flags: Python
        runs pending handlers after a call returns, here the drain's."""
        select.select([self._woken], [], [])
        with contextlib.suppress(BlockingIOError):
            while self._woken.recv(64):
                pass

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._woken.close()
        self._waker.close()

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stopping = True

    def _reload(self, _signum: int, _frame: FrameType | None) -> None:
        self.reloading = True


def reload(current: Pipeline, server: AgentServer, load: Callable[[], Config]) -> Pipeline:
    """The new configuration's pipeline, or the running one when the new configuration is unusable."""
    try:
        config = load()
        fresh = Pipeline.build(config)
    except (ConfigError, OSError, ValueError) as error:
        log.error("reload failed, keeping the running configuration: %s", error)
        return current
    except Exception as error:  # a bug in building must not end a running agent
        log.exception("reload failed, keeping the running configuration: %s", type(error).__name__)
        return current
    if config.listen != current.config.listen:
        log.warning("listen changed to %s: it takes effect at the next restart", config.listen)
    current.stop(handing_over=True)
    fresh.take_over(current)
    fresh.serve_through(server)
    fresh.start()
    log.info("configuration reloaded")
    return fresh


def run_agent(config: Config, load: Callable[[], Config]) -> int:
    """Runs until SIGTERM/SIGINT; on SIGHUP ``load`` gives the configuration to switch to."""
    pipeline = Pipeline.build(config)
    try:
        server = AgentServer(listen_address(config.listen), pipeline.page, pipeline.store, pipeline.alerts)
    except OSError as error:
        log.error("cannot listen on %s: %s", config.listen, error.strerror or error)
        return EXIT_CANNOT_RUN
    signals = Signals()
    server.start()
    pipeline.start()
    log.info("serving http://%s/metrics every %g s", config.listen, config.interval)
    while not signals.stopping:
        signals.wait()
        if signals.reloading and not signals.stopping:
            signals.reloading = False
            pipeline = reload(pipeline, server, load)
    signals.close()
    server.stop()
    pipeline.stop()
    log.info("stopped")
    return EXIT_OK

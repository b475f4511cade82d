"""``tierwatch run``: the long-running agent."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from agent.alerting import AlertingJob, configured_rules
from agent.config import Config
from agent.exporter import MetricsPage
from agent.http import AgentServer
from agent.scheduler import CollectorRunner, Scheduler
from agent.store import Store
from agent.wiring import build_collectors, register_secrets
from alerts.alertmanager import AlertmanagerSender
from alerts.present import alert_json
from collectors.base import Collector

log = logging.getLogger("tierwatch")
EXIT_OK, EXIT_CANNOT_RUN = 0, 2


def listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def metric_specs(collectors: list[Collector]) -> dict[str, tuple]:
    return {collector.name: collector.metrics for collector in collectors}


def alertmanager_sender(config: Config) -> AlertmanagerSender | None:
    section = config.alertmanager
    if not section.urls:
        return None
    log.info("sending alerts to %s", ", ".join(section.urls))
    return AlertmanagerSender(
        section.urls,
        config.interval,
        section.resend_interval,
        timeout=section.timeout,
        static_labels=section.labels,
        runbook_base_url=config.runbook_base_url,
    )


def run_agent(config: Config) -> int:
    register_secrets(config)
    rules = configured_rules(config)
    collectors = build_collectors(config)
    for collector in collectors:
        log.info("collector %s: monitoring %s", collector.name, collector.describe())
    store = Store(window_seconds=config.window)
    runners = [CollectorRunner(collector, store, config.cycle_timeout) for collector in collectors]
    scheduler = Scheduler(runners, config.interval)
    sender = alertmanager_sender(config)
    scheduler.add_job(AlertingJob(store, rules, sender.notify if sender else None).run_cycle, "alerting")

    def active_alerts() -> list[dict[str, object]]:
        return [alert_json(alert, config.runbook_base_url) for alert in store.alerts()]

    page = MetricsPage(store, metric_specs(collectors))
    try:
        server = AgentServer(listen_address(config.listen), page, store, active_alerts)
    except OSError as error:
        log.error("cannot listen on %s: %s", config.listen, error.strerror or error)
        return EXIT_CANNOT_RUN
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    if sender is not None:
        sender.start()
    scheduler.start()
    log.info("serving http://%s/metrics every %g s", config.listen, config.interval)
    while not stop.wait(1.0):
        pass
    server.stop()
    scheduler.stop()
    if sender is not None:
        sender.stop()
    log.info("stopped")
    return EXIT_OK

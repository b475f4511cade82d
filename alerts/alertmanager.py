"""Sends alerts to every configured Alertmanager (API v2) with Prometheus's notifier semantics.

Firing alerts are sent when they start firing and re-sent every ``resend_interval`` with endsAt in
the future (4 x max(interval, resend_interval)), so Alertmanager resolves them by itself if the agent
dies. A resolution is sent with endsAt = the time it resolved, and re-sent for 15 minutes. Each
endpoint keeps its own schedule and backoff; what is sent is always the current state, so an
Alertmanager that was down gets everything that still matters when it returns. All HTTP happens on
the sender's threads, one per Alertmanager as Prometheus posts to each at once: the alerting cycle
only hands over state and never waits, and an Alertmanager that hangs delays no other.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from alerts.lifecycle import Alert, AlertKey, State
from alerts.present import describe_evidence, details_text, rfc3339
from collectors.urls import basic_auth_request, open_request

log = logging.getLogger("tierwatch.alertmanager")
RESOLVED_RESEND_SECONDS = 15 * 60
MAX_ALERTS = 10_000
MAX_BACKOFF_SECONDS = 60.0
# 2.0 ** 1024 overflows: without a bound, an Alertmanager down for ~17 h (1024 retries a minute
# apart) would raise on every retry from then on.
MAX_BACKOFF_DOUBLINGS = 16
TICK_SECONDS = 1.0
MAX_REFUSAL_CHARS = 300  # of Alertmanager's explanation of a refused post, in the log
Post = Callable[[str, bytes, float], None]


def post_json(url: str, body: bytes, timeout: float) -> None:
    request = basic_auth_request(url, {"Content-Type": "application/json"}, data=body, method="POST")
    with open_request(request, timeout) as response:
        response.read()
        if response.geturl() != request.full_url:
            # urllib follows a 301, 302 or 303 with a GET and no body, which Alertmanager answers
            # with 200: it would count as delivered, and the alerts were never posted.
            moved_to = without_credentials(response.geturl())
            raise ValueError(f"redirected to {moved_to}, which a post cannot follow; configure that URL")


def _problem(error: Exception) -> str:
    """What went wrong; for a post Alertmanager refused, with the start of its explanation (a 400
    names the label or field it could not take)."""
    reason = str(getattr(error, "reason", None) or error)
    if isinstance(error, urllib.error.HTTPError):
        try:
            explanation = error.read(MAX_REFUSAL_CHARS).decode("utf-8", "replace").strip()
        except (OSError, HTTPException):
            explanation = ""
        if explanation:
            return f"{reason}: {explanation}"
    return reason


def without_credentials(url: str) -> str:
    """The URL as it may be shown in a metric label: no user or password."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


@dataclass(frozen=True)
class Deliveries:
    """Counts since start, for /metrics: alerts in successful and in failed posts per Alertmanager
    (by URL without credentials), and resolutions dropped because the queue was full."""

    sent: tuple[tuple[str, int], ...]
    failed: tuple[tuple[str, int], ...]
    dropped: int


@dataclass
class _Endpoint:
    url: str
    shown_as: str
    alerts_sent: int = 0
    alerts_failed: int = 0
    last_sent: float | None = None
    sent_keys: frozenset[tuple[AlertKey, str]] = frozenset()
    failures: int = 0
    retry_at: float = 0.0
    reported: str | None = None
    wake: threading.Event = field(default_factory=threading.Event)


class AlertmanagerSender:
    def __init__(
        self,
        urls: tuple[str, ...],
        interval: float,
        resend_interval: float,
        *,
        timeout: float,
        static_labels: Mapping[str, str],
        runbook_base_url: str,
        post: Post = post_json,
        clock: Callable[[], float] = time.time,
        steady_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` dates what is sent (endsAt, the age of a resolution); ``steady_clock`` times
        re-sends and retries, which a wall clock set back would hold off for the size of the step."""
        self._endpoints = [
            _Endpoint(url.rstrip("/") + "/api/v2/alerts", without_credentials(url.rstrip("/")))
            for url in urls
        ]
        self._dropped = 0
        self._resend = resend_interval
        self._ends_after = 4 * max(interval, resend_interval)
        self._timeout = timeout
        self._labels = dict(static_labels)
        self._runbook_base = runbook_base_url
        self._post = post
        self._clock = clock
        self._steady_clock = steady_clock
        self._lock = threading.Lock()
        self._firing: dict[AlertKey, Alert] = {}
        self._resolved: dict[AlertKey, Alert] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(endpoint,), name="alertmanager-sender", daemon=True)
            for endpoint in self._endpoints
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def carry_over(self, previous: AlertmanagerSender) -> None:
        """Before ``start``, after a reload: takes the resolutions ``previous`` was still re-sending,
        and its counts for each Alertmanager both send to, which count since the agent started."""
        with previous._lock:
            resolved, dropped = dict(previous._resolved), previous._dropped
        counts = {endpoint.url: endpoint for endpoint in previous._endpoints}
        with self._lock:
            self._resolved.update(resolved)
            self._dropped += dropped
        for endpoint in self._endpoints:
            if (before := counts.get(endpoint.url)) is not None:
                endpoint.alerts_sent, endpoint.alerts_failed = before.alerts_sent, before.alerts_failed

    def stop(self, wait: float = 0.0) -> None:
        """Ends the sender threads; ``wait`` > 0 waits that long for posts in progress to end."""
        self._stop.set()
        self._wake_all()
        deadline = time.monotonic() + wait
        for thread in self._threads:
            if wait > 0 and thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def notify(self, active: list[Alert], resolved: list[Alert]) -> None:
        """Takes one cycle's state; pending alerts are not sent, as in Prometheus."""
        now = self._clock()
        with self._lock:
            self._firing = {alert.key: alert for alert in active if alert.state is State.FIRING}
            for alert in resolved:
                self._resolved[alert.key] = alert
            for key in list(self._resolved):
                alert = self._resolved[key]
                if key in self._firing or now - (alert.resolved_at or now) > RESOLVED_RESEND_SECONDS:
                    del self._resolved[key]
            overflow = len(self._firing) + len(self._resolved) - MAX_ALERTS
            for key in sorted(self._resolved, key=lambda k: self._resolved[k].resolved_at or 0)[
                : max(0, overflow)
            ]:
                del self._resolved[key]  # a full queue drops the oldest resolutions first
                self._dropped += 1
        self._wake_all()

    def _wake_all(self) -> None:
        for endpoint in self._endpoints:
            endpoint.wake.set()

    def deliveries(self) -> Deliveries:
        return Deliveries(
            sent=tuple((endpoint.shown_as, endpoint.alerts_sent) for endpoint in self._endpoints),
            failed=tuple((endpoint.shown_as, endpoint.alerts_failed) for endpoint in self._endpoints),
            dropped=self._dropped,
        )

    def send_due(self) -> None:
        """One pass over the endpoints, one after another; the sender threads each do their own."""
        for endpoint in self._endpoints:
            self._send_due_to(endpoint)

    def _send_due_to(self, endpoint: _Endpoint) -> None:
        """Sends if the alerts changed since the last post to ``endpoint``, or a re-send or a retry is due."""
        now = self._steady_clock()
        if now < endpoint.retry_at:
            return
        with self._lock:
            alerts = [*self._firing.values(), *self._resolved.values()]
        keys = frozenset((alert.key, alert.state.value) for alert in alerts)
        # New firing alerts and new resolutions go out at once; the rest on the re-send schedule.
        changed = bool(keys - endpoint.sent_keys)
        resend_due = bool(alerts) and (endpoint.last_sent is None or now - endpoint.last_sent >= self._resend)
        if changed or resend_due:
            self._send(endpoint, alerts, keys, now)

    def _send(self, endpoint: _Endpoint, alerts: list[Alert], keys: frozenset[Any], now: float) -> None:
        wall = self._clock()
        body = json.dumps([self._payload(alert, wall) for alert in alerts]).encode()
        try:
            self._post(endpoint.url, body, self._timeout)
        # HTTPException: a reply that is not HTTP (a TLS port, another protocol, a cut-off body).
        except (OSError, urllib.error.URLError, ValueError, HTTPException) as error:
            endpoint.alerts_failed += len(alerts)
            endpoint.failures += 1
            doublings = min(endpoint.failures - 1, MAX_BACKOFF_DOUBLINGS)
            backoff = min(MAX_BACKOFF_SECONDS, self._resend, 2.0**doublings)
            endpoint.retry_at = now + backoff
            problem = _problem(error)
            if endpoint.reported != problem:
                log.warning(
                    "sending %d alerts to %s failed: %s; retrying",
                    len(alerts),
                    without_credentials(endpoint.url),
                    problem,
                )
                endpoint.reported = problem
            return
        endpoint.alerts_sent += len(alerts)
        if endpoint.failures:
            log.info("alerts delivered to %s again", without_credentials(endpoint.url))
        endpoint.failures, endpoint.retry_at, endpoint.reported = 0, 0.0, None
        endpoint.last_sent, endpoint.sent_keys = now, keys

    def _payload(self, alert: Alert, now: float) -> dict[str, Any]:
        verdict = alert.verdict
        rule = verdict.rule
        # As Prometheus sends it: the alert started when it fired, not when it began pending.
        starts_at = alert.fired_at or alert.active_since
        # Alertmanager refuses an alert that ends before it starts, which a wall clock set back since
        # it fired would make of every post until the clock caught up.
        if alert.state is State.RESOLVED:
            ends_at = max(alert.resolved_at or now, starts_at)
        else:
            ends_at = max(now, starts_at) + self._ends_after
        return {
            "labels": {
                **self._labels,
                "alertname": rule.name,
                "severity": rule.severity.value,
                "tier": rule.tier,
                "target": verdict.target,
            },
            "annotations": {
                "summary": verdict.summary,
                "description": describe_evidence(verdict),
                "remediation": verdict.remediation,
                "runbook_url": self._runbook_base + rule.runbook,
                **({"details": details} if (details := details_text(verdict)) else {}),
            },
            "startsAt": rfc3339(starts_at),
            "endsAt": rfc3339(ends_at),
        }

    def _loop(self, endpoint: _Endpoint) -> None:
        while not self._stop.is_set():
            endpoint.wake.wait(TICK_SECONDS)
            endpoint.wake.clear()
            if self._stop.is_set():
                break
            try:
                self._send_due_to(endpoint)
            except Exception:  # a bug here must not end alert delivery for the agent's lifetime
                log.exception("sending alerts failed; trying again in %g s", TICK_SECONDS)

"""Alert delivery: the sender's schedule (unit), a real Alertmanager (integration), and the whole agent
raising and resolving an alert that reaches Alertmanager with its annotations."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from dataclasses import replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.redact import ScrubbingFilter
from alerts.alertmanager import RESOLVED_RESEND_SECONDS, AlertmanagerSender, post_json
from alerts.classifier import Verdict
from alerts.lifecycle import Alert, State
from alerts.present import MAX_DETAILS_CHARS
from alerts.table import RULES
from tests.fixtures.alertmanager_server import Alertmanager
from tests.proc_trees import DATA
from tests.scenarios import active_alerts
from tests.support import AgentProcess, free_port, http_get, value

RULE = RULES[0]  # MemorySwapping


def alert(state: State, since: float = 100.0, resolved_at: float | None = None) -> Alert:
    """Firing (or fired, when resolved) from ``since``, after pending for 30 s."""
    verdict = Verdict(RULE, "host", "node-a", True, {"host_memory_used_ratio": 0.95}, "node-a is swapping")
    fired_at = None if state is State.PENDING else since
    return Alert(
        verdict, state, active_since=since - 30, last_held=since, fired_at=fired_at, resolved_at=resolved_at
    )


class Recorder:
    def __init__(self) -> None:
        self.posts: list[tuple[str, list[dict[str, Any]]]] = []
        self.timeouts: set[float] = set()
        self.failing = False

    def __call__(self, url: str, body: bytes, timeout: float) -> None:
        self.timeouts.add(timeout)
        if self.failing:
            raise ConnectionRefusedError("connection refused")
        self.posts.append((url, json.loads(body)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sender(post: Recorder, clock: Clock, urls: tuple[str, ...] = ("http://am-a:9093",)) -> AlertmanagerSender:
    return AlertmanagerSender(
        urls,
        5.0,
        60.0,
        timeout=1.0,
        static_labels={"cluster": "test"},
        runbook_base_url="https://x/",
        post=post,
        clock=clock,
        steady_clock=clock,
    )


def test_a_wall_clock_set_back_holds_off_neither_resends_nor_valid_times() -> None:
    """Re-sends keep their interval on the steady clock, and no alert is sent ending before it
    started, which Alertmanager refuses: the one fired before the step keeps its startsAt."""
    post, wall, steady = Recorder(), Clock(), Clock()
    out = AlertmanagerSender(
        ("http://am-a:9093",),
        5.0,
        60.0,
        timeout=1.0,
        static_labels={},
        runbook_base_url="",
        post=post,
        clock=wall,
        steady_clock=steady,
    )
    fired = alert(State.FIRING, since=wall.now)
    out.notify([fired], [])
    out.send_due()
    wall.now -= 3600
    steady.now += 60
    out.notify([fired], [])
    out.send_due()
    assert len(post.posts) == 2  # re-sent after 60 s, not after the hour the wall clock went back
    resolved = replace(fired, state=State.RESOLVED, resolved_at=wall.now)
    out.notify([], [resolved])
    out.send_due()
    assert len(post.posts) == 3
    for _, alerts in post.posts:
        (sent,) = alerts
        assert sent["startsAt"] == "1970-01-01T00:16:40.000Z"  # fired at 1000 s
        assert sent["endsAt"] >= sent["startsAt"]


def test_firing_is_sent_at_once_then_every_resend_interval() -> None:
    post, clock = Recorder(), Clock()
    out = sender(post, clock, ("http://am-a:9093/", "http://am-b:9093"))
    out.notify([alert(State.PENDING)], [])
    out.send_due()
    assert post.posts == []  # pending alerts are not sent
    out.notify([alert(State.FIRING)], [])
    out.send_due()
    assert [url for url, _ in post.posts] == [
        "http://am-a:9093/api/v2/alerts",
        "http://am-b:9093/api/v2/alerts",
    ]
    assert post.timeouts == {1.0}

    sent = post.posts[0][1][0]
    assert sent["labels"] == {
        "cluster": "test",
        "alertname": "MemorySwapping",
        "severity": "critical",
        "tier": "host",
        "target": "node-a",
    }
    assert sent["annotations"]["summary"] == "node-a is swapping"
    assert sent["annotations"]["description"] == "host_memory_used_ratio=0.95"
    assert sent["annotations"]["runbook_url"] == "https://x/docs/alerts/MemorySwapping.md"
    assert "RAM" in sent["annotations"]["remediation"]
    assert "details" not in sent["annotations"]  # the host has none
    assert sent["startsAt"] == "1970-01-01T00:01:40.000Z"  # when it fired, as Prometheus sends it
    assert sent["endsAt"] == "1970-01-01T00:20:40.000Z"  # now (1000 s) + 4 x max(5, 60) s
    clock.now += 30
    out.notify([alert(State.FIRING)], [])
    out.send_due()
    assert len(post.posts) == 2  # nothing new, not yet due
    clock.now += 30
    out.send_due()
    assert len(post.posts) == 4  # re-sent after 60 s to both


def test_the_targets_details_travel_as_a_bounded_annotation() -> None:
    post, clock = Recorder(), Clock()
    out = sender(post, clock)
    slow = {"command": "KEYS *", "duration_seconds": 0.5}
    details = {"maxmemory_policy": "noeviction", "slowlog": [slow]}
    cache = replace(alert(State.FIRING).verdict, details=details)
    huge = replace(cache, target="node-b", details={"slowlog": [slow] * 500})
    out.notify([Alert(v, State.FIRING, 100.0, 100.0, fired_at=100.0) for v in (cache, huge)], [])
    out.send_due()
    annotations = [sent["annotations"] for sent in post.posts[0][1]]
    assert json.loads(annotations[0]["details"]) == details
    assert len(annotations[1]["details"]) == MAX_DETAILS_CHARS
    assert annotations[1]["details"].endswith("...")


def test_resolution_is_sent_with_end_time_and_repeated_for_15_minutes() -> None:
    post, clock = Recorder(), Clock()
    out = sender(post, clock)
    out.notify([alert(State.FIRING)], [])
    out.send_due()
    clock.now += 10
    out.notify([], [alert(State.RESOLVED, resolved_at=clock.now)])
    out.send_due()
    resolved = post.posts[-1][1][0]
    assert resolved["endsAt"] == "1970-01-01T00:16:50.000Z"  # the moment it resolved
    clock.now += RESOLVED_RESEND_SECONDS - 20
    out.notify([], [])
    out.send_due()
    assert post.posts[-1][1][0]["endsAt"] == resolved["endsAt"]
    count = len(post.posts)
    clock.now += 60
    out.notify([], [])
    out.send_due()
    assert len(post.posts) == count  # after 15 minutes the resolution is dropped


def test_unreachable_alertmanager_is_retried_with_backoff() -> None:
    post, clock = Recorder(), Clock()
    out = sender(post, clock)
    post.failing = True
    out.notify([alert(State.FIRING)], [])
    out.send_due()
    clock.now += 0.5
    out.send_due()  # within the 1 s backoff: no attempt
    post.failing = False
    out.send_due()
    assert post.posts == []
    clock.now += 1
    out.send_due()
    assert len(post.posts) == 1


def test_a_reply_that_is_not_http_is_a_failed_delivery() -> None:
    """An Alertmanager URL that points at something else (here a server greeting in its own
    protocol) fails that post and is retried; it must not end the sender."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        greeter = threading.Thread(target=greet_once, args=(listener,), daemon=True)
        greeter.start()
        out = AlertmanagerSender(
            (url,), 5.0, 60.0, timeout=2.0, static_labels={}, runbook_base_url="", post=post_json
        )
        out.notify([alert(State.FIRING)], [])
        out.send_due()
        greeter.join(5)
    assert out.deliveries().failed == ((url, 1),)
    assert out.deliveries().sent == ((url, 0),)


def greet_once(listener: socket.socket) -> None:
    connection, _ = listener.accept()
    with connection:
        connection.recv(65536)
        connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")


def test_backoff_stays_bounded_however_long_an_alertmanager_is_down() -> None:
    """Retries a minute apart for a day: the doubling backoff must not overflow (it did after 1024
    failures, ~17 h, and from then on no Alertmanager listed after that one was posted to)."""
    post, clock = Recorder(), Clock()
    out = sender(post, clock, ("http://am-a:9093", "http://am-b:9093"))
    post.failing = True
    out.notify([alert(State.FIRING)], [])
    for _ in range(24 * 60):
        out.send_due()
        clock.now += 60
    assert out.deliveries().failed == (("http://am-a:9093", 24 * 60), ("http://am-b:9093", 24 * 60))
    post.failing = False
    out.send_due()
    assert [url for url, _ in post.posts] == [
        "http://am-a:9093/api/v2/alerts",
        "http://am-b:9093/api/v2/alerts",
    ]


def test_a_redirected_post_is_a_failed_delivery(
    alertmanager: Alertmanager, caplog: pytest.LogCaptureFixture
) -> None:
    """An http URL that a proxy redirects (to https, say): urllib follows a 301 with a GET, which
    Alertmanager answers with 200 and its alert list. That delivered nothing and must not count as sent."""
    with Redirector(alertmanager.url) as proxy:
        out = AlertmanagerSender((proxy.url,), 5.0, 60.0, timeout=2.0, static_labels={}, runbook_base_url="")
        out.notify([alert(State.FIRING, since=time.time())], [])
        with caplog.at_level(logging.WARNING, logger="tierwatch.alertmanager"):
            out.send_due()
    assert out.deliveries().failed == ((proxy.url, 1),)
    assert out.deliveries().sent == ((proxy.url, 0),)
    (line,) = [record.getMessage() for record in caplog.records]
    assert f"redirected to {alertmanager.url}/api/v2/alerts" in line


class Redirector(ThreadingHTTPServer):
    """Answers every request with a 301 to the same path on ``target``."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        class Moved(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(301)
                self.send_header("Location", target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Moved)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def __exit__(self, *args: object) -> None:
        self.shutdown()
        super().__exit__(*args)


def test_deliveries_are_counted_per_alertmanager_without_credentials() -> None:
    post, clock = Recorder(), Clock()
    out = sender(post, clock, ("http://tierwatch:s3cret-pass@am-a:9093/", "http://am-b:9093"))
    post.failing = True
    out.notify([alert(State.FIRING)], [])
    out.send_due()  # both fail
    post.failing = False
    clock.now += 1
    out.send_due()  # both succeed
    deliveries = out.deliveries()
    assert deliveries.sent == (("http://am-a:9093", 1), ("http://am-b:9093", 1))
    assert deliveries.failed == (("http://am-a:9093", 1), ("http://am-b:9093", 1))
    assert deliveries.dropped == 0
    assert post.posts[0][0] == "http://tierwatch:s3cret-pass@am-a:9093/api/v2/alerts"  # still used to post


def test_a_reloaded_sender_re_sends_what_the_last_one_still_had_to() -> None:
    post, clock = Recorder(), Clock()
    before = sender(post, clock, ("http://am-a:9093", "http://am-b:9093"))
    before.notify([alert(State.FIRING)], [])
    before.send_due()
    before.notify([], [alert(State.RESOLVED, resolved_at=clock.now)])
    before.stop()  # reloaded before the resolution went out
    after = sender(post, clock, ("http://am-a:9093", "http://am-c:9093"))
    after.carry_over(before)
    after.notify([], [])
    after.send_due()
    resolutions = [(url, [a["endsAt"] for a in alerts]) for url, alerts in post.posts[2:]]
    assert resolutions == [
        ("http://am-a:9093/api/v2/alerts", ["1970-01-01T00:16:40.000Z"]),
        ("http://am-c:9093/api/v2/alerts", ["1970-01-01T00:16:40.000Z"]),
    ]
    # counted on for an Alertmanager both configurations name, from zero for a new one
    assert after.deliveries().sent == (("http://am-a:9093", 2), ("http://am-c:9093", 1))


def test_resolutions_dropped_from_a_full_queue_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("alerts.alertmanager.MAX_ALERTS", 2)
    out = sender(Recorder(), Clock())
    resolved = [
        Alert(
            replace(verdict, target=f"node-{n}"),
            State.RESOLVED,
            100.0,
            100.0,
            fired_at=100.0,
            resolved_at=900.0,
        )
        for n, verdict in enumerate([alert(State.RESOLVED).verdict] * 5)
    ]
    out.notify([], resolved)
    assert out.deliveries().dropped == 3


def test_real_alertmanager_receives_and_resolves(alertmanager: Alertmanager) -> None:
    out = AlertmanagerSender(
        (alertmanager.url,), 1.0, 1.0, timeout=2.0, static_labels={}, runbook_base_url=""
    )
    out.notify([alert(State.FIRING, since=time.time())], [])
    out.send_due()
    held = alertmanager.alerts()
    assert [a["labels"]["alertname"] for a in held] == ["MemorySwapping"]
    assert held[0]["annotations"]["summary"] == "node-a is swapping"
    assert held[0]["annotations"]["runbook_url"] == "docs/alerts/MemorySwapping.md"
    wait_until(lambda: alertmanager.webhook.statuses("MemorySwapping") == ["firing"], "firing notification")
    out.notify([], [alert(State.RESOLVED, since=time.time() - 5, resolved_at=time.time())])
    out.send_due()
    wait_until(lambda: alertmanager.alerts() == [], "alert to resolve")
    wait_until(
        lambda: alertmanager.webhook.statuses("MemorySwapping")[-1:] == ["resolved"], "resolved notification"
    )


def test_a_refused_post_is_logged_with_alertmanagers_reason(
    alertmanager: Alertmanager, caplog: pytest.LogCaptureFixture
) -> None:
    # The config refuses such a label; a sender given one anyway shows why Alertmanager said no.
    out = AlertmanagerSender(
        (alertmanager.url,), 1.0, 1.0, timeout=2.0, static_labels={"my-team": "db"}, runbook_base_url=""
    )
    out.notify([alert(State.FIRING, since=time.time())], [])
    with caplog.at_level(logging.WARNING, logger="tierwatch.alertmanager"):
        out.send_due()
    assert out.deliveries().failed == ((alertmanager.url, 1),)
    (line,) = [record.getMessage() for record in caplog.records]
    assert "Bad Request: " in line
    assert "my-team" in line


def test_alertmanager_down_while_firing_gets_it_when_back(alertmanager: Alertmanager) -> None:
    alertmanager.stop()
    out = AlertmanagerSender(
        (alertmanager.url,), 0.5, 0.5, timeout=1.0, static_labels={}, runbook_base_url=""
    )
    out.start()
    try:
        out.notify([alert(State.FIRING, since=time.time())], [])
        # sent while it was down, and retried: what arrives later is a retry, not a first send
        wait_until(lambda: out.deliveries().failed[0][1] >= 2, "two failed attempts", 5)
        alertmanager.start()
        wait_until(
            lambda: [a["labels"]["alertname"] for a in alertmanager.alerts()] == ["MemorySwapping"],
            "delivery",
        )
    finally:
        out.stop()


def test_an_alertmanager_that_hangs_delays_no_other(alertmanager: Alertmanager) -> None:
    """Listed first, an Alertmanager that takes connections and never answers must not hold the
    alert back from the one that works for its 10 s timeout (Prometheus posts to each at once)."""
    with socket.create_server(("127.0.0.1", 0)) as hanging:  # the kernel accepts; nobody answers
        hanging_url = f"http://127.0.0.1:{hanging.getsockname()[1]}"
        out = AlertmanagerSender(
            (hanging_url, alertmanager.url), 5.0, 60.0, timeout=10.0, static_labels={}, runbook_base_url=""
        )
        out.start()
        try:
            out.notify([alert(State.FIRING, since=time.time())], [])
            wait_until(lambda: len(alertmanager.alerts()) == 1, "delivery past the hanging one", 4.0)
        finally:
            out.stop()


def test_a_failed_post_is_logged_without_the_urls_credentials(caplog: pytest.LogCaptureFixture) -> None:
    """A token given as the URL's user name is a secret too: the log names the Alertmanager as the
    metrics do, without user information, even past the agent's scrubbing filter."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens: refused
    out = AlertmanagerSender(
        (f"http://am-token-7f3a9c@{address}",), 5.0, 60.0, timeout=2.0, static_labels={}, runbook_base_url=""
    )
    caplog.handler.addFilter(ScrubbingFilter())
    out.notify([alert(State.FIRING)], [])
    with caplog.at_level(logging.WARNING, logger="tierwatch.alertmanager"):
        out.send_due()
    (line,) = [record.getMessage() for record in caplog.records]
    assert f"to http://{address}/api/v2/alerts failed" in line
    assert "am-token-7f3a9c" not in line


def wait_until(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s")


@pytest.fixture
def live_proc(tmp_path: Path) -> Path:
    """A procfs the test can switch between recorded hosts while the agent reads it."""
    root = tmp_path / "live"
    shutil.copytree(DATA / "swapping" / "t1", root)
    return root


def switch(root: Path, tree: str) -> None:
    shutil.rmtree(root / "proc")
    shutil.copytree(DATA / tree / "t1" / "proc", root / "proc")


def swapping_host_agent(live_proc: Path, alertmanager: Alertmanager) -> dict[str, Any]:
    """An agent's config: the host collector on ``live_proc`` (swapping at first), sending to
    ``alertmanager``."""
    return {
        "interval": 0.5,
        "host": {
            "name": "node-a",
            "procfs": str(live_proc / "proc"),
            "sysfs": str(live_proc / "sys"),
            "cgroupfs": str(live_proc / "cgroup"),
        },
        "alertmanager": {"urls": [alertmanager.url], "resend_interval": 1},
        # A recorded tree repeats one snapshot, so its swap-in rate reads 0 and the disk rule would hold
        # too; which rule a swapping host gets is the classifier test's business, delivery is this one's.
        "rules": {"MemorySwapping": {"for": 1, "keep_firing_for": 0}, "DiskIOBound": {"enabled": False}},
    }


def test_agent_raises_and_resolves_through_alertmanager(
    tmp_path: Path, live_proc: Path, alertmanager: Alertmanager
) -> None:
    with AgentProcess(tmp_path, swapping_host_agent(live_proc, alertmanager)) as agent:
        # memory 95% used with a 42.5% memory stall: swapping
        wait_until(
            lambda: alertmanager.webhook.statuses("MemorySwapping") == ["firing"], "firing notification"
        )
        held = alertmanager.alerts()[0]
        assert held["labels"]["target"] == "node-a"
        assert held["labels"]["severity"] == "critical"
        assert held["annotations"]["summary"].startswith("node-a is swapping: memory 95% used")
        assert "host_memory_used_ratio=0.95" in held["annotations"]["description"]
        api = json.loads(http_get(f"{agent.url}/api/v1/alerts")[1])
        assert [(a["name"], a["state"], a["tier"], a["target"]) for a in api] == [
            ("MemorySwapping", "firing", "host", "node-a")
        ]
        assert api[0]["evidence"]["host_memory_used_ratio"] == pytest.approx(0.95)
        assert api[0]["runbook_url"] == "docs/alerts/MemorySwapping.md"
        series = agent.metrics()
        labels = {
            "alertname": "MemorySwapping",
            "alertstate": "firing",
            "severity": "critical",
            "tier": "host",
        }
        assert value(series, "tierwatch_alert", **labels, target="node-a") == 1
        sent = value(series, "tierwatch_alertmanager_alerts_sent_total", alertmanager=alertmanager.url)
        assert sent is not None
        assert sent >= 1
        assert value(series, "tierwatch_alertmanager_alerts_failed_total", alertmanager=alertmanager.url) == 0
        switch(live_proc, "no-psi")  # the host calms down
        wait_until(lambda: alertmanager.webhook.statuses("MemorySwapping")[-1:] == ["resolved"], "resolution")
        assert json.loads(http_get(f"{agent.url}/api/v1/alerts")[1]) == []
        assert alertmanager.alerts() == []


def test_reload_neither_resets_nor_re_raises_a_firing_alert(
    tmp_path: Path, live_proc: Path, alertmanager: Alertmanager
) -> None:
    config = swapping_host_agent(live_proc, alertmanager)
    # Kept firing for its default 120 s after it stops holding: the end of the test shows that a rule
    # the reload disables does not wait for that.
    config["rules"] = {**config["rules"], "MemorySwapping": {"for": 1}}
    with AgentProcess(tmp_path, config) as agent:
        wait_until(
            lambda: alertmanager.webhook.statuses("MemorySwapping") == ["firing"], "firing notification"
        )
        (before,) = active_alerts(agent)
        (held_before,) = alertmanager.alerts()
        sent_before = sent_total(agent, alertmanager)
        # A reload that changes something else: the firing alert goes on as it was.
        agent.reload({**config, "alertmanager": {"urls": [alertmanager.url], "resend_interval": 2}})
        agent.wait_for(lambda: "configuration reloaded" in agent.log(), "the reload")
        time.sleep(2.5)  # five cycles and a re-send under the new configuration
        after = [(a["name"], a["state"], a["active_since"]) for a in active_alerts(agent)]
        assert after == [("MemorySwapping", "firing", before["active_since"])]
        assert alertmanager.webhook.statuses("MemorySwapping") == ["firing"]
        (held,) = alertmanager.alerts()
        assert held["startsAt"] == held_before["startsAt"]
        assert datetime.fromisoformat(held["startsAt"]) == datetime.fromisoformat(before["fired_at"])
        assert sent_total(agent, alertmanager) > sent_before  # counted on from before the reload
        # A reload that disables the rule resolves the alert at once, and the resolution is delivered.
        rules = {**config["rules"], "MemorySwapping": {"enabled": False}}
        agent.reload({**config, "rules": rules})
        wait_until(
            lambda: alertmanager.webhook.statuses("MemorySwapping")[-1:] == ["resolved"], "resolution", 10
        )
        assert active_alerts(agent) == []
        assert alertmanager.alerts() == []


def sent_total(agent: AgentProcess, alertmanager: Alertmanager) -> float:
    sent = value(agent.metrics(), "tierwatch_alertmanager_alerts_sent_total", alertmanager=alertmanager.url)
    assert sent is not None
    return sent

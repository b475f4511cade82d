"""The agent's cheaper per-cycle and per-scrape paths answer exactly as the general ones did.

- HTTP: requests are parsed without the email package and a response is written at once; every
  answer, to well-formed and malformed requests alike, equals the standard library's.
- /metrics: a family is built and formatted again only when its data changed; the page always
  equals prometheus_client's rendering of freshly built families.
- Scheduling: jobs run on a thread each, on one common clock; the scheduler still catches.
- Store: a status update keeps what it does not change.
"""

from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import agent.http
from agent.exporter import MetricsPage, StoreCollector, family_text
from agent.http import AgentServer, _Handler
from agent.scheduler import CollectorRunner, Round, Scheduler
from agent.store import Store
from alerts.classifier import Verdict
from alerts.lifecycle import Alert, State
from alerts.table import RULES
from collectors.base import Collector, Kind, MetricSpec, Reason, Sample
from tests.support import assert_promtool_accepts, parse_metrics
from tests.support import value as value_of

SPECS = (
    MetricSpec("test_load_ratio", Kind.GAUGE, "Load."),
    MetricSpec("test_requests_total", Kind.COUNTER, "Requests.", ("route",)),
    MetricSpec("test_disk_busy_ratio", Kind.GAUGE, "Busy.", ("device",)),
)


class Scripted(Collector):
    """Returns the values it is given, so a test decides what changes between cycles."""

    name = "scripted"
    tier = "host"
    metrics = SPECS

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.values: dict[tuple[str, tuple[str, ...]], float] = {}

    def collect(self) -> Sample:
        out = self.builder()
        for (name, labels), value in self.values.items():
            out.set(name, value, *labels)
        return out.build(self.name, self.target, time.time())


# --- HTTP ----------------------------------------------------------------------------------------


class _StandardHandler(_Handler):
    """The same endpoints as the standard library answers them: its request parsing and its
    header writing, headers and body apart."""

    parse_request = BaseHTTPRequestHandler.parse_request

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def servers() -> Iterator[tuple[int, int]]:
    """(ours, the standard library's) over one store and page."""
    store = Store()
    collector = Scripted("a")
    collector.values = {("test_load_ratio", ()): 0.5}
    store.register(collector.name, collector.target)
    store.record_success(collector.collect(), 0.01)
    page = MetricsPage(store, {collector.name: collector.metrics})
    ours = AgentServer(("127.0.0.1", 0), page, store)
    standard = AgentServer(("127.0.0.1", 0), page, store)
    standard.RequestHandlerClass = _StandardHandler
    for server in (ours, standard):
        server.start()
    yield ours.server_address[1], standard.server_address[1]
    for server in (ours, standard):
        server.stop()


def exchange(port: int, raw: bytes) -> bytes:
    """Sends raw bytes, then reads until the server closes; the Date header is blanked out."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(raw)
        connection.shutdown(socket.SHUT_WR)
        received = []
        while chunk := connection.recv(65536):
            received.append(chunk)
    return re.sub(rb"Date: [^\r\n]*", b"Date: -", b"".join(received))


GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
REQUESTS = {
    "kept-alive scrapes": b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n" * 2,
    "every endpoint": b"".join(
        f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for path in ("/metrics?x=1", "/healthz", "/readyz", "/api/v1/alerts", "/nope", "//api/v1/alerts")
    ),
    "close": b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n" + GET,
    "close with a blank after it is not close": b"GET /healthz HTTP/1.1\r\nConnection: close \r\n\r\n" + GET,
    "HTTP/1.0 closes": b"GET /healthz HTTP/1.0\r\n\r\n" + GET,
    "HTTP/1.0 keep-alive": b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n" + GET,
    "bare newlines": b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n",
    "HTTP/0.9": b"GET /healthz\r\n",
    "HTTP/0.9 not GET": b"POST /healthz\r\n",
    "HTTP/2": b"GET /healthz HTTP/2.0\r\n\r\n",
    "bad version": b"GET /healthz HTTP/1.x\r\n\r\n",
    "superscript version": b"GET /healthz HTTP/1.\xb2\r\n\r\n",
    "four words": b"GET /healthz HTTP/1.1 more\r\n\r\n",
    "one word": b"GET\r\n\r\n",
    "empty line": b"\r\n",
    "HEAD": b"HEAD /metrics HTTP/1.1\r\n\r\nHEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    "unsupported method": b"DELETE /metrics HTTP/1.1\r\n\r\n",
    "expect 100-continue": b"GET /healthz HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    "folded header": b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n  2\r\nConnection: close\r\n\r\n" + GET,
    "no colon ends the headers": b"GET /healthz HTTP/1.1\r\nbogus\r\nConnection: close\r\n\r\n" + GET,
    "nameless field": b"GET /healthz HTTP/1.1\r\n: x\r\nConnection: close\r\n\r\n" + GET,
    "latin-1 value": b"GET /healthz HTTP/1.1\r\nX-Name: \xe9t\xe9\r\nConnection: close\r\n\r\n",
    "lone carriage return": b"GET /healthz HTTP/1.1\r\nX-A: 1\rConnection: close\r\n\r\n" + GET,
    "headers cut short": b"GET /healthz HTTP/1.1\r\nHost: x",
    "99 fields": b"GET /healthz HTTP/1.1\r\n" + b"X-A: 1\r\n" * 99 + b"\r\n",
    "100 fields": b"GET /healthz HTTP/1.1\r\n" + b"X-A: 1\r\n" * 100 + b"\r\n",
    "longest line": b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * (65536 - 7) + b"\r\n\r\n",
    "line too long": b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * (65536 - 6) + b"\r\n",
}


@pytest.mark.parametrize("raw", REQUESTS.values(), ids=REQUESTS.keys())
def test_answers_equal_the_standard_librarys(servers: tuple[int, int], raw: bytes) -> None:
    ours, standard = servers
    expected = exchange(standard, raw)
    assert exchange(ours, raw) == expected


SMUGGLED = b"GET /metrics HTTP/1.1\r\n\r\n"
BODIES = {
    "content-length": b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "chunked": b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_a_body_is_never_read_as_the_next_request(servers: tuple[int, int], body: bytes) -> None:
    """The standard library leaves a body unread on the connection, where it was answered as a
    request of its own (the GET inside it here, or a headerless 400 page for a chunk size line).
    No endpoint reads one: the answer closes the connection, and says so."""
    ours, _ = servers
    answer = exchange(ours, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + body + GET)
    assert answer.count(b"HTTP/1.1 ") == 1
    assert answer.endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\nok\n")


def test_an_empty_body_keeps_the_connection(servers: tuple[int, int]) -> None:
    ours, _ = servers
    answer = exchange(ours, b"GET /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n" + GET)
    assert answer.count(b"\r\n\r\nok\n") == 2
    assert b"Connection" not in answer


def test_head_answers_the_headers_of_get(servers: tuple[int, int]) -> None:
    ours, _ = servers
    got, head = (exchange(ours, f"{verb} /metrics HTTP/1.0\r\n\r\n".encode()) for verb in ("GET", "HEAD"))
    assert got.startswith(head)
    assert head.endswith(b"\r\n\r\n")
    # The format the page is written in, whatever prometheus_client's newest format is.
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in head
    assert b"Content-Length: %d\r\n" % len(got.partition(b"\r\n\r\n")[2]) in head


def test_an_idle_connection_is_closed(servers: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Handler, "timeout", 0.3)
    ours, _ = servers
    with socket.create_connection(("127.0.0.1", ours), timeout=10) as connection:
        started = time.monotonic()
        assert connection.recv(1) == b""  # closed by the agent, not by this client's 10 s
    assert time.monotonic() - started < 5


def test_a_head_sent_a_byte_at_a_time_is_cut_at_its_deadline(
    servers: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte comes well within the idle timeout, which bounded every read alone: 64 such
    clients held every connection slot, and Prometheus got 503s."""
    monkeypatch.setattr(agent.http, "HEAD_TIMEOUT_SECONDS", 0.5)
    ours, _ = servers
    with socket.create_connection(("127.0.0.1", ours), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\n")
        cut_after = trickle(connection, 5)
    assert cut_after is not None
    assert cut_after < 3


def trickle(connection: socket.socket, seconds: float) -> float | None:
    """Sends a byte every 50 ms for up to ``seconds``: how long until the peer had closed, or None."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        try:
            connection.sendall(b"X")
        except OSError:  # reset or broken pipe
            return elapsed
        time.sleep(0.05)
    return None


def test_a_new_connection_has_the_head_deadline_to_send_its_request(
    servers: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.http, "HEAD_TIMEOUT_SECONDS", 0.3)
    ours, _ = servers
    with socket.create_connection(("127.0.0.1", ours), timeout=10) as connection:
        started = time.monotonic()
        assert connection.recv(1) == b""  # the idle timeout is 300 s
    assert time.monotonic() - started < 5


def test_a_kept_alive_connection_waits_the_idle_timeout_between_requests(
    servers: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between scrapes the head deadline does not apply: Prometheus keeps its connection."""
    monkeypatch.setattr(agent.http, "HEAD_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(_Handler, "timeout", 1.5)
    ours, _ = servers
    with socket.create_connection(("127.0.0.1", ours), timeout=10) as connection:
        for _ in range(2):
            connection.sendall(GET)
            assert connection.recv(65536).endswith(b"\r\n\r\nok\n")
            time.sleep(0.6)  # past the head deadline, within the idle timeout
        started = time.monotonic()
        assert connection.recv(1) == b""  # then idled out
    assert time.monotonic() - started < 5


def test_a_client_that_resets_costs_a_debug_line_not_a_traceback(
    servers: tuple[int, int], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """socketserver printed a traceback to stderr, past the agent's log format and scrubbing, for
    every reset: Prometheus resets its connection when a scrape times out."""
    ours, _ = servers
    with caplog.at_level(logging.DEBUG, logger="tierwatch.http"):
        with socket.create_connection(("127.0.0.1", ours), timeout=10) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\n")
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [record.getMessage() for record in caplog.records] == [
        "HTTP connection ended: [Errno 104] Connection reset by peer"
    ]
    assert capsys.readouterr().err == ""


def test_a_failing_endpoint_is_logged_through_logging(
    servers: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken() -> bytes:
        raise RuntimeError("a bug in rendering")

    monkeypatch.setattr(MetricsPage, "render", lambda _self: broken())
    ours, _ = servers
    with caplog.at_level(logging.ERROR, logger="tierwatch.http"):
        assert exchange(ours, b"GET /metrics HTTP/1.1\r\n\r\n") == b""  # no answer, not a crash
    (record,) = caplog.records
    assert record.getMessage() == "HTTP request failed"
    assert record.exc_info is not None
    assert "a bug in rendering" in str(record.exc_info[1])
    assert capsys.readouterr().err == ""


def test_connections_past_the_limit_get_a_503_not_a_thread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(agent.http, "MAX_CONNECTIONS", 4)  # read when a server is made
    store = Store()
    server = AgentServer(("127.0.0.1", 0), MetricsPage(store, {}), store)
    server.start()
    port = server.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    try:
        with caplog.at_level(logging.WARNING, logger="tierwatch.http"):
            for _ in range(2):  # the server accepts in order: every held one has its thread by now
                with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
                    assert refused.recv(65536).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert len(caplog.records) == 1  # once, not per refused connection
        held.pop().close()

        def served() -> bool:
            try:
                return exchange(port, GET).endswith(b"ok\n")
            except OSError:  # refused while the request was unread: reset
                return False

        deadline = time.monotonic() + 5
        while not (answered := served()) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the closed one's thread has ended
        assert answered
    finally:
        for connection in held:
            connection.close()
        server.stop()


def test_one_write_per_response(servers: tuple[int, int]) -> None:
    # Headers and body arrive together: the first read of a small response holds all of it.
    ours, _ = servers
    with socket.create_connection(("127.0.0.1", ours), timeout=10) as connection:
        connection.sendall(GET)
        first = connection.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert first.endswith(b"\r\n\r\nok\n")


def test_stop_ends_the_serving_thread() -> None:
    store = Store()
    server = AgentServer(("127.0.0.1", 0), MetricsPage(store, {}), store)
    server.start()
    port = server.server_address[1]
    assert exchange(port, GET).endswith(b"ok\n")
    serving = server._thread
    server.stop()
    assert serving is not None
    assert not serving.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# --- /metrics ------------------------------------------------------------------------------------


def fresh_render(store: Store, specs: dict[str, tuple[MetricSpec, ...]]) -> bytes:
    """What prometheus_client renders from families all built anew."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, specs))
    return generate_latest(registry)


class OneFamily:
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> list[Metric]:
        return [self.family]


def test_family_text_is_what_prometheus_client_writes() -> None:
    odd = GaugeMetricFamily(
        "tierwatch_test_odd", "Help with a \\ backslash\nand a newline.", labels=["target", "path"]
    )
    texts = ["/plain", 'a " quote', "a \\ backslash", "a \n newline", "ünïcödé", ""]
    values = [0, -0.0, 1e-9, 1.5e300, 2**53 + 1, float("nan"), float("inf"), float("-inf"), 0.1]
    for text, value in zip(texts, values, strict=False):
        odd.add_metric(["a", text], value)
    counter = CounterMetricFamily("tierwatch_test_events_total", "Events.", labels=["kind"])
    counter.add_metric(["x"], 3)
    unlabelled = GaugeMetricFamily("tierwatch_test_plain", "No labels.", value=7.25)
    empty = GaugeMetricFamily("tierwatch_test_none_yet", "No series.", labels=["target"])
    for family in (odd, counter, unlabelled, empty):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(OneFamily(family))  # type: ignore[arg-type]
        assert family_text(family) == generate_latest(registry), family.name


def test_a_label_value_that_is_no_valid_text_costs_the_page_nothing() -> None:
    """A name from the environment with a byte that is no UTF-8 (TIERWATCH_HOST__NAME=$'node\\xff')
    reaches Python as a lone surrogate; the page is still served, valid UTF-8, with "?" for it."""
    undecodable = b"node\xff".decode("utf-8", "surrogateescape")
    store = Store()
    collector = Scripted(undecodable)
    collector.values = {("test_load_ratio", ()): 0.5, ("test_disk_busy_ratio", (undecodable,)): 0.25}
    store.register(collector.name, collector.target)
    store.record_success(collector.collect(), 0.01)
    store.set_alerts((firing(0, undecodable),), {})
    page = MetricsPage(store, {Scripted.name: SPECS}).render().decode("utf-8")
    assert_promtool_accepts(page)
    series = parse_metrics(page)
    assert value_of(series, "tierwatch_test_load_ratio", target="node?") == 0.5
    assert value_of(series, "tierwatch_test_disk_busy_ratio", target="node?", device="node?") == 0.25
    assert value_of(series, "tierwatch_collector_up", collector="scripted", target="node?") == 1
    rule = RULES[0]
    labels = {"alertstate": "firing", "severity": rule.severity.value, "tier": rule.tier}
    assert value_of(series, "tierwatch_alert", alertname=rule.name, target="node?", **labels) == 1


def firing(rule_index: int, target: str) -> Alert:
    rule = RULES[rule_index]
    verdict = Verdict(rule, next(iter(rule.when)), target, True, {}, "summary")
    return Alert(verdict, State.FIRING, 1.0, 2.0, fired_at=2.0)


def test_page_equals_a_fresh_render_as_data_changes() -> None:
    store = Store()
    a, b = Scripted("a"), Scripted("b")
    specs = {Scripted.name: SPECS}
    for collector in (a, b):
        store.register(collector.name, collector.target)
    page = MetricsPage(store, specs)
    steps = [
        lambda: None,
        lambda: a.values.update({("test_load_ratio", ()): 0.5, ("test_requests_total", ("/x",)): 1}),
        lambda: b.values.update({("test_load_ratio", ()): 0.25}),
        lambda: None,  # nothing changes but the timestamps
        lambda: a.values.update({("test_requests_total", ("/x",)): 2}),
        lambda: a.values.update({("test_requests_total", ("/y",)): 1}),  # a new label value
        lambda: a.values.update({("test_disk_busy_ratio", ("sda",)): 0.1}),  # a new family
        lambda: a.values.pop(("test_disk_busy_ratio", ("sda",))),  # and gone again
        lambda: store.set_alerts((firing(0, "a"),), {("signal", "a"): 1.0}),
        lambda: store.set_alerts((firing(0, "a"), firing(1, "b")), {("signal", "a"): 2.0}),
        lambda: store.record_failure(("scripted", "b"), Reason.TIMEOUT, "no answer", 0.8),
        lambda: store.record_failure(("scripted", "b"), Reason.TIMEOUT, "still running", 1.8),
        lambda: store.set_alerts((), {}),
    ]
    for number, step in enumerate(steps):
        step()
        for collector in (a, b):
            if number < 10 or collector is a:  # b is down from step 10 on
                store.record_success(collector.collect(), 0.001 * number)
        assert page.render() == fresh_render(store, specs), f"step {number}"
        assert page.render() == fresh_render(store, specs), f"step {number}, rendered again"


def test_unchanged_family_is_neither_built_nor_formatted_again() -> None:
    store = Store()
    collector = Scripted("a")
    collector.values = {("test_load_ratio", ()): 0.5, ("test_requests_total", ("/x",)): 1}
    store.register(collector.name, collector.target)
    store.record_success(collector.collect(), 0.01)
    stores_collector = StoreCollector(store, {Scripted.name: SPECS})
    first = {family.name: family for family in stores_collector.collect()}
    collector.values[("test_requests_total", ("/x",))] = 2
    store.record_success(collector.collect(), 0.01)
    second = {family.name: family for family in stores_collector.collect()}
    assert second["tierwatch_test_load_ratio"] is first["tierwatch_test_load_ratio"]
    assert second["tierwatch_collector_up"] is first["tierwatch_collector_up"]
    assert second["tierwatch_test_requests"] is not first["tierwatch_test_requests"]
    assert (
        second["tierwatch_collector_last_success_timestamp_seconds"]
        is not (first["tierwatch_collector_last_success_timestamp_seconds"])
    )


# --- scheduling ----------------------------------------------------------------------------------


def test_jobs_have_a_thread_each_and_one_clock() -> None:
    store = Store()
    runners = [CollectorRunner(Scripted(target), store, timeout=5.0) for target in ("a", "b")]
    scheduler = Scheduler(runners, 0.1, after_each_round=lambda: None)
    scheduler.start()
    try:
        jobs = scheduler._scheduler.get_jobs()
        assert len(jobs) == 2
        assert len({job.next_run_time for job in jobs}) == 1  # all due together
        assert len({job.trigger.start_date for job in jobs}) == 1
        deadline = time.monotonic() + 10
        while min(status.cycles for status in store.statuses().values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        names = {thread.name for thread in threading.enumerate()}
    finally:
        scheduler.stop()
    assert {"job-collect:scripted:a", "job-collect:scripted:b"} <= names
    assert all(store.statuses()[("scripted", target)].cycles >= 3 for target in ("a", "b"))


def test_after_each_round_runs_once_every_collector_ended_its_cycle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The alerting cycle runs once per round, after both collectors, on a collector job's thread;
    one that raises is logged (scrubbed) and keeps the rounds going."""
    store = Store()
    runners = [CollectorRunner(Scripted(target), store, timeout=5.0) for target in ("a", "b")]
    seen: list[tuple[int, int, str]] = []

    def after() -> None:
        cycles = [store.statuses()[("scripted", target)].cycles for target in ("a", "b")]
        seen.append((cycles[0], cycles[1], threading.current_thread().name))
        if len(seen) == 2:
            raise RuntimeError("a bug in the alerting cycle")

    scheduler = Scheduler(runners, 0.1, after_each_round=after)
    with caplog.at_level(logging.ERROR, logger="tierwatch.scheduler"):
        scheduler.start()
        deadline = time.monotonic() + 10
        while len(seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        scheduler.stop()
    assert len(seen) >= 5
    # The i-th run comes after both collectors' i-th cycles, and there is one run per round.
    assert all(min(a, b) >= i for i, (a, b, _) in enumerate(seen, start=1))
    assert len(seen) <= min(status.cycles for status in store.statuses().values())
    assert {thread for _, _, thread in seen} <= {"job-collect:scripted:a", "job-collect:scripted:b"}
    assert [record.getMessage() for record in caplog.records] == [
        "after-round job failed: RuntimeError: a bug in the alerting cycle"
    ]


def test_stopping_a_round_waits_for_its_run_and_starts_no_other() -> None:
    """A reload takes over what the last alerting run left: stop() returns only once that run ended."""
    release, runs = threading.Event(), []

    def after() -> None:
        runs.append(time.monotonic())
        release.wait(5)

    round_ = Round([("scripted", "a")], after)
    running = threading.Thread(target=round_.finished, args=(("scripted", "a"),))
    running.start()
    while not runs:
        time.sleep(0.01)
    threading.Timer(0.3, release.set).start()
    began = time.monotonic()
    round_.stop(timeout=5)
    assert time.monotonic() - began >= 0.25  # it waited for the run
    running.join(5)
    round_.finished(("scripted", "a"))
    assert len(runs) == 1  # none after stop


def test_anchor_is_the_start_not_the_construction() -> None:
    # A pipeline may be built well before it starts (reload); its first cycles are not "missed".
    scheduler = Scheduler([CollectorRunner(Scripted("a"), Store(), timeout=5.0)], 60.0, lambda: None)
    time.sleep(0.05)
    before = datetime.now(UTC)
    scheduler.start()
    try:
        (job,) = scheduler._scheduler.get_jobs()
        assert job.trigger.start_date >= before
    finally:
        scheduler.stop()


def test_cycle_result_is_recorded_by_the_job() -> None:
    store = Store()
    collector = Scripted("a")
    collector.values = {("test_load_ratio", ()): 0.5}
    runner = CollectorRunner(collector, store, timeout=5.0)
    runner.run_cycle()
    runner.run_cycle()
    status = store.statuses()[("scripted", "a")]
    assert status.up
    assert status.cycles == 2
    runner.stop()


# --- store ---------------------------------------------------------------------------------------


def test_status_updates_keep_what_they_do_not_change() -> None:
    store = Store()
    collector = Scripted("a")
    store.register(collector.name, collector.target)
    sample = collector.collect()
    store.record_success(sample, 0.1)
    store.record_failure(("scripted", "a"), Reason.AUTH, "denied", 0.2)
    failed = store.statuses()[("scripted", "a")]
    assert failed.last_success_timestamp == sample.timestamp  # a failure keeps the last success
    assert failed.errors_total[Reason.AUTH] == 1
    assert failed.last_error == (Reason.AUTH, "denied")
    assert not failed.up
    store.record_success(collector.collect(), 0.3)
    recovered = store.statuses()[("scripted", "a")]
    assert recovered.errors_total[Reason.AUTH] == 1  # a success keeps the error counts
    assert recovered.last_error is None
    assert recovered.up
    assert recovered.cycles == 3
    assert recovered.duration_seconds == 0.3

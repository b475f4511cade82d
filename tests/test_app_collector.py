"""The app collector against a real small HTTP app under a known load, and against a CPU-burning child.

The load (tests/fixtures/app_server.py) is 300 requests: 30 answered 500, 20 taking 0.3 s and the rest
0.02 s. With the app's buckets that puts the 297th-ranked request (p99) in (0.25, 0.5], 17 of that
bucket's 20 observations in: PromQL's histogram_quantile says 0.25 + 0.25 x 17/20 = 0.4625 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.config import ConfigError
from agent.config.loader import validate_config
from collectors.app import AppCollector, build
from collectors.app.histogram import histogram_quantile
from collectors.app.process import ProcessUsage
from collectors.app.scrape import Scraper
from collectors.base import CollectorError, Reason, Sample
from tests.fixtures.app_server import TRICKLE_INTERVAL, AppServer, LoadPlan, ServiceProxy, run_load
from tests.support import REPO, free_port, require_tool, running, start_python

REQUESTS, LATENCY = "http_requests_total", "http_request_duration_seconds"


def app_collector(**entry: Any) -> AppCollector:
    config = validate_config({"interval": 2, "app": [{"name": "shop-web", **entry}]})
    return build(config, config.app[0])


def scraper(url: str, requests: str | None = REQUESTS, timeout: float = 2.0) -> AppCollector:
    return AppCollector("shop-web", [Scraper(url, requests, LATENCY, timeout)])


def test_rate_error_ratio_and_latency_under_load(app_server: AppServer) -> None:
    collector = app_collector(
        metrics_url=f"{app_server.url}/metrics", requests_metric=REQUESTS, latency_metric=LATENCY
    )
    before_first = time.monotonic()
    first = collector.collect()
    after_first = time.monotonic()
    # No request yet: the families are declared but have no series, and one scrape has no rate.
    assert first.series("app_requests_per_second") == {}
    plan = LoadPlan()
    run_load(app_server, plan)
    before_second = time.monotonic()
    second = collector.collect()
    after_second = time.monotonic()

    # Every series was born during the cycle (prometheus_client creates a labelled child on its first
    # increment), so all of the load counts.
    rate = second.get("app_requests_per_second")
    assert rate is not None
    # The collector's own clock readings fall inside these marks, whatever the machine's load.
    assert plan.total / (after_second - before_first) <= rate <= plan.total / (before_second - after_first)

    assert second.get("app_request_error_ratio") == pytest.approx(plan.errors / plan.total)
    assert plan.errors / plan.total == pytest.approx(0.1)

    durations = sorted(app_server.durations)
    fast, slow = durations[: plan.total - plan.slow], durations[plan.total - plan.slow :]
    # The premise of the expected p99: fast requests below 0.25 s, slow ones in (0.25, 0.5].
    assert max(fast) <= 0.25 < min(slow)
    assert max(slow) <= 0.5
    p99 = second.get("app_request_latency_p99_seconds")
    assert p99 == pytest.approx(0.4625, abs=1e-9)
    true_p99 = durations[int(0.99 * plan.total) - 1]
    assert 0.25 < true_p99 <= 0.5  # the estimate is within the bucket that holds the true value
    p50 = second.get("app_request_latency_p50_seconds")
    assert p50 is not None
    assert 0.01 < p50 <= 0.05

    # A quiet cycle: rate 0, and no error ratio or latency because there was no request.
    third = collector.collect()
    assert third.get("app_requests_per_second") == 0
    assert third.get("app_request_error_ratio") is None
    assert third.get("app_request_latency_p99_seconds") is None


@pytest.mark.parametrize(
    ("start_time", "why"),
    [(True, "process_start_time_seconds changed"), (False, "a counter went down")],
)
def test_an_app_restart_skips_one_cycle(start_time: bool, why: str) -> None:
    """Counters of two processes cannot be subtracted: the cycle across a restart has no rates, and
    the next one counts the new process's requests only. Without a start time on the page, the
    counters going down give the restart away."""
    app = AppServer(start_time=start_time)
    try:
        collector = scraper(f"{app.url}/metrics")
        run_load(app, LoadPlan(total=40, fast_delay=0, slow_delay=0))
        collector.collect()
    finally:
        app.stop()
    app = AppServer(app.port, start_time=start_time)  # counters start from zero again
    try:
        run_load(app, LoadPlan(total=20, fast_delay=0, slow_delay=0))
        before_across = time.monotonic()
        across = collector.collect()
        after_across = time.monotonic()
        run_load(app, LoadPlan(total=10, fast_delay=0, slow_delay=0))
        before_next = time.monotonic()
        sample = collector.collect()
        after_next = time.monotonic()
    finally:
        app.stop()
    for name in ("app_requests_per_second", "app_request_error_ratio", "app_request_latency_p99_seconds"):
        assert across.get(name) is None, name
    assert across.details["instance_changed"] == why
    # The collector reads its clock inside each collect(), so its interval lies between these bounds:
    # exact whatever else the machine is doing.
    rate = sample.get("app_requests_per_second")
    assert rate is not None
    assert 10 / (after_next - before_across) <= rate <= 10 / (before_next - after_across)
    assert "instance_changed" not in sample.details
    assert sample.get("app_request_error_ratio") == pytest.approx(1 / 10)


def test_replicas_behind_one_url_are_not_subtracted() -> None:
    """A metrics_url that is a Service: each scrape lands on the other replica. The busier replica has
    served five times as many requests; counting that as one cycle's increase would report thousands
    of requests per second."""
    replicas = [AppServer(), AppServer()]
    service = ServiceProxy(replicas)
    try:
        run_load(replicas[0], LoadPlan(total=250, fast_delay=0, slow_delay=0))
        run_load(replicas[1], LoadPlan(total=50, fast_delay=0, slow_delay=0))
        collector = scraper(f"{service.url}/metrics")
        samples = [collector.collect() for _ in range(4)]
    finally:
        service.stop()
        for replica in replicas:
            replica.stop()
    for sample in samples:
        for name in ("app_requests_per_second", "app_request_error_ratio", "app_request_latency_p50_seconds"):
            assert sample.get(name) is None, name
    assert [sample.details.get("instance_changed") for sample in samples] == [
        None,
        *["process_start_time_seconds changed"] * 3,
    ]


def test_a_page_that_trickles_in_times_out_within_the_budget(app_server: AppServer) -> None:
    """Each byte arrives well within the socket timeout, so only a deadline over the whole read stops
    a page that would take TRICKLE_BYTES x TRICKLE_INTERVAL (5 s) to arrive."""
    budget = 0.5
    started = time.monotonic()
    with pytest.raises(CollectorError) as failure:
        scraper(f"{app_server.url}/trickle", timeout=budget).collect()
    elapsed = time.monotonic() - started
    assert failure.value.reason is Reason.TIMEOUT, failure.value
    assert "page not complete within 0.5 s" in failure.value.detail
    assert budget <= elapsed < budget + 2 * TRICKLE_INTERVAL + 0.3


def test_error_ratio_is_absent_without_a_status_label(app_server: AppServer) -> None:
    collector = scraper(f"{app_server.url}/metrics", requests="queue_jobs_total")
    collector.collect()
    run_load(app_server, LoadPlan(total=30, fast_delay=0, slow_delay=0))
    sample = collector.collect()
    rate = sample.get("app_requests_per_second")
    assert rate is not None
    assert rate > 0
    assert sample.get("app_request_error_ratio") is None


def test_requests_counted_by_the_latency_histogram(app_server: AppServer) -> None:
    """Apps instrumented with a histogram alone (Micrometer, prom-client) count requests in its
    ``_count``, which one family holds together with the buckets."""
    collector = scraper(f"{app_server.url}/metrics", requests=f"{LATENCY}_count")
    before_first = time.monotonic()
    collector.collect()
    after_first = time.monotonic()
    plan = LoadPlan(total=60, fast_delay=0, slow_delay=0)
    run_load(app_server, plan)
    before_second = time.monotonic()
    sample = collector.collect()
    after_second = time.monotonic()
    assert "metrics_not_on_page" not in sample.details
    rate = sample.get("app_requests_per_second")
    assert rate is not None
    assert plan.total / (after_second - before_first) <= rate <= plan.total / (before_second - after_first)
    assert sample.get("app_request_latency_p99_seconds") is not None


def test_a_metric_missing_from_the_page_is_named(app_server: AppServer) -> None:
    collector = scraper(f"{app_server.url}/metrics", requests="http_requests_typo_total")
    collector.collect()
    sample = collector.collect()
    assert sample.get("app_requests_per_second") is None
    assert sample.details["metrics_not_on_page"] == ["http_requests_typo_total"]


def test_scrape_failures_have_reasons(app_server: AppServer) -> None:
    cases = [
        (f"http://127.0.0.1:{free_port()}/metrics", Reason.UNREACHABLE, "Connection refused"),
        (f"{app_server.url}/broken", Reason.PARSE, "invalid metric name"),
        (f"{app_server.url}/nothing-here?token=secret", Reason.OTHER, "HTTP 404"),
        (f"{app_server.url}/slow", Reason.TIMEOUT, "no answer within 0.3 s"),
    ]
    for url, reason, text in cases:
        started = time.monotonic()
        with pytest.raises(CollectorError) as failure:
            scraper(url, timeout=0.3).collect()
        assert failure.value.reason is reason, failure.value
        assert text in failure.value.detail
        assert "secret" not in failure.value.detail
        assert time.monotonic() - started < 1.0


def test_pool_size_and_hpa(app_server: AppServer) -> None:
    collector = app_collector(
        metrics_url=f"{app_server.url}/metrics?token=secret",
        requests_metric=REQUESTS,
        pool_size=20,
        hpa="web",
    )
    sample = collector.collect()
    assert sample.get("app_pool_size") == 20
    assert sample.details["hpa"] == "web"
    assert collector.describe() == (
        f"app shop-web (metrics {app_server.url}/metrics; pool size 20; scaled by HPA web)"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, "set at least one of process, metrics_url, pool_size, hpa"),
        (
            {"pool_size": 5, "requests_metric": REQUESTS},
            "requests_metric and latency_metric need metrics_url",
        ),
        ({"metrics_url": "http://127.0.0.1:9/metrics"}, "metrics_url needs requests_metric"),
        (
            {"metrics_url": "file:///etc/passwd", "requests_metric": REQUESTS},
            "must be an http:// or https://",
        ),
        (
            {"metrics_url": "http://127.0.0.1:90x/metrics", "requests_metric": REQUESTS},
            "metrics_url has a port that is not a number from 0 to 65535",
        ),
        (
            {"metrics_url": "http://127.0.0.1:99999/metrics", "requests_metric": REQUESTS},
            "metrics_url has a port that is not a number from 0 to 65535",
        ),
        (
            {"metrics_url": "http://u:p@[bad/metrics", "requests_metric": REQUESTS},
            "metrics_url is not a URL",
        ),
        (
            {"metrics_url": "http://u:8081/Vb7n@app/metrics", "requests_metric": REQUESTS},
            "metrics_url: the user name or password holds a '/'",
        ),
    ],
)
def test_unusable_entries_are_refused(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        app_collector(**entry)


def start_burner(tag: str) -> subprocess.Popen[bytes]:
    """A child process with a distinctive command line that keeps one CPU busy for at most 10 s."""
    return start_python(10, tag)


@pytest.fixture
def burner() -> Iterator[str]:
    tag = f"tierwatch-burner-{uuid.uuid4().hex[:8]}"
    child = start_burner(tag)
    yield tag
    child.kill()
    child.wait()


def one_busy_process(sample: Sample) -> float:
    """The cores that the sample's one matched process, a burner using about a core, used."""
    assert sample.get("app_processes") == 1
    cores = sample.get("app_process_cpu_cores")
    assert cores is not None
    assert 0.5 < cores <= 1.1
    return cores


def test_a_worker_started_within_the_cycle_counts_all_its_cpu() -> None:
    """Servers that recycle workers (max_requests) start new ones all the time: a worker born since the
    last cycle used all of its CPU time within this one."""
    tag = f"tierwatch-recycled-{uuid.uuid4().hex[:8]}"
    collector = AppCollector("shop-web", [ProcessUsage(tag)])
    collector.collect()  # no worker yet
    time.sleep(0.1)  # its start time must fall after this cycle's, which the clock gives to 10 ms
    worker = start_burner(tag)
    try:
        time.sleep(1.5)
        sample = collector.collect()
    finally:
        worker.kill()
        worker.wait()
    one_busy_process(sample)


def test_process_cpu_and_memory_exclude_the_agent(burner: str) -> None:
    # The pattern also matches this test process's own command line, which must not count.
    own = re.escape(" ".join(psutil.Process().cmdline()))
    collector = AppCollector("shop-web", [ProcessUsage(f"{burner}|^{own}$")])
    collector.collect()
    time.sleep(1.5)
    sample = collector.collect()
    cores = one_busy_process(sample)
    assert sample.get("app_process_cpu_ratio") == pytest.approx(cores / (os.cpu_count() or 1))
    rss = sample.get("app_process_resident_memory_bytes")
    assert rss is not None
    assert rss > 1_000_000


NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def start_burner_with_pid(tag: str, pid: int) -> subprocess.Popen[bytes]:
    """A burner that the kernel gives ``pid``, as it hands out pids again once they wrap at pid_max."""
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip("choosing the next pid needs root (CAP_CHECKPOINT_RESTORE)")
    for _ in range(100):  # other processes of the machine may take the pid first
        NS_LAST_PID.write_text(str(pid - 1))
        child = start_burner(tag)
        if child.pid == pid:
            return child
        child.kill()
        child.wait()
    pytest.fail(f"pid {pid} was not handed out again")


def test_a_reused_pid_is_not_taken_for_the_process_that_had_it() -> None:
    """A worker that exits, then a new one given its pid within one cycle: the new worker started
    within the cycle and used all its CPU time in it; subtracting the old worker's larger CPU time
    left the cycle without a CPU value."""
    tag = f"tierwatch-reused-{uuid.uuid4().hex[:8]}"
    collector = AppCollector("shop-web", [ProcessUsage(tag)])
    old = start_burner(tag)
    with running(old):
        collector.collect()
        time.sleep(2.0)
        collector.collect()  # the old worker's 2 s of CPU time are the base of the next delta
    time.sleep(0.1)  # the new worker's start time must fall after this cycle's, known to 10 ms
    new = start_burner_with_pid(tag, old.pid)
    with running(new):
        time.sleep(1.0)
        sample = collector.collect()
    one_busy_process(sample)


def test_the_agent_does_not_match_itself_outside_its_pid_namespace() -> None:
    """An agent in a container of its own PID namespace reading the host's procfs (no hostPID): its
    os.getpid() is another process's pid there, and its own command line matched the pattern."""
    unshare = require_tool("unshare", "/usr/bin/unshare")
    tag = f"tierwatch-itself-{uuid.uuid4().hex[:8]}"
    # Anchored at the interpreter: unshare's own command line holds the child's after "unshare".
    pattern = f"^{re.escape(sys.executable)} -c # {tag}"
    code = (
        f"# {tag}\n"
        "from collectors.app.metrics import APP_METRICS\n"
        "from collectors.app.process import ProcessUsage\n"
        "from collectors.base import SampleBuilder\n"
        "import os, re\n"
        "own = open('/proc/self/cmdline').read().rstrip('\\0').replace('\\0', ' ')\n"
        f"matched = bool(re.search({pattern!r}, own))\n"
        "out = SampleBuilder(APP_METRICS)\n"
        f"ProcessUsage({pattern!r}).collect(out)\n"
        "print(os.getpid(), matched, out.build('app', 'web', 0).get('app_processes'))\n"
    )
    command = [unshare, "--user", "--map-root-user", "--pid", "--fork", sys.executable, "-c", code]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"no unprivileged PID namespaces here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    # The premises: pid 1 in its namespace, not its pid in the procfs it reads; the pattern matches it.
    assert result.stdout.split() == ["1", "True", "0.0"]


def test_histogram_quantile_follows_promql() -> None:
    inf = float("inf")
    # Interpolation inside a bucket; the lowest bucket starts at 0.
    assert histogram_quantile(0.5, [(0.1, 10), (0.2, 30), (inf, 40)]) == pytest.approx(0.15)
    assert histogram_quantile(0.25, [(0.1, 20), (0.2, 30), (inf, 40)]) == pytest.approx(0.05)
    # A rank in the +Inf bucket: the highest finite bound.
    assert histogram_quantile(0.99, [(0.1, 10), (0.2, 10), (inf, 40)]) == 0.2
    # Counts that dip (a series appearing mid-cycle) are made monotonic first.
    assert histogram_quantile(0.5, [(0.1, 10), (0.2, 8), (inf, 20)]) == pytest.approx(0.1)
    assert histogram_quantile(0.5, [(0.1, 0), (inf, 0)]) is None
    assert histogram_quantile(0.5, [(0.1, 3), (0.2, 5)]) is None  # no +Inf bucket

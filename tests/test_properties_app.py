"""Bad input for the app collector's scrape: metrics pages with odd counter values, odd histogram
buckets, or no metrics text at all, served over loopback HTTP to the real scraper.

No instrumented app writes a negative or NaN counter, so these pages are made up; they are served by
a plain HTTP server rather than patched into the scraper, so that fetching and decoding run too.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from collectors.app.histogram import histogram_quantile
from collectors.app.metrics import APP_METRICS
from collectors.app.scrape import Scraper
from collectors.base import CollectorError, SampleBuilder
from tests.test_properties_base import NUMBERS, THOROUGH, check_ratio_sets, check_sample, mostly

SHARES = {
    "app_request_error_ratio",
    # From psutil's CPU times, not from parsed input: no property here drives it.
    "app_process_cpu_ratio",
}
NOT_SHARES: dict[str, str] = {}

REQUESTS = "http_requests_total"
LATENCY = "http_request_duration_seconds"
STATUSES = ("200", "404", "500", "503", "5xx", "2xx", "", "5000")
BOUNDS = ("0.005", "0.1", "1", "1.0", "10", "-1", "0", "NaN", "+Inf", "-Inf", "1e400", "x")


class PageServer(ThreadingHTTPServer):
    """Serves ``page`` at every path, as an app's /metrics would."""

    daemon_threads = True
    page = b""


class PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.server.page)))
        self.end_headers()
        self.wfile.write(self.server.page)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per example on stderr would drown the test output


@pytest.fixture(scope="module")
def page_server() -> Iterator[PageServer]:
    server = PageServer(("127.0.0.1", 0), PageHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def sample_value(value: float) -> str:
    """A value as the text format writes it."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@st.composite
def pages(draw: st.DrawFn, step: int = 0) -> str:
    """A page with the requests counter by status and the latency histogram; the values grow with
    ``step`` (the cycle) from odd starting points, and now and then the page is broken."""
    lines = [f"# TYPE {REQUESTS.removesuffix('_total')} counter"]
    for status in draw(st.lists(st.sampled_from(STATUSES), unique=True, max_size=4)):
        value = draw(mostly(st.integers(0, 1000), NUMBERS)) * (step + 1)
        lines.append(f'{REQUESTS}{{code="{status}"}} {sample_value(value)}')
    lines.append(f"# TYPE {LATENCY} histogram")
    bounds = draw(
        mostly(st.just(["0.1", "1", "+Inf"]), st.lists(st.sampled_from(BOUNDS), unique=True, max_size=4))
    )
    for bound in bounds:
        value = draw(mostly(st.integers(0, 1000), NUMBERS)) * (step + 1)
        lines.append(f'{LATENCY}_bucket{{le="{bound}"}} {sample_value(value)}')
    lines.append(f"{LATENCY}_count {sample_value(draw(NUMBERS))}")
    fault = draw(mostly(st.none(), st.sampled_from(["garbage line", "garbage page", "no families"])))
    if fault == "garbage line":
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=30)))
    elif fault == "garbage page":
        lines = [draw(st.text(max_size=60))]
    elif fault == "no families":
        lines = ["# HELP other_total nothing", "other_total 1"]
    return "\n".join(lines) + "\n"


@st.composite
def scrapes(draw: st.DrawFn) -> list[tuple[str, float]]:
    """Consecutive scrapes: (page, seconds since the previous one)."""
    return [
        (draw(pages(step)), draw(mostly(st.floats(0.5, 10), st.floats(0, 10))))
        for step in range(draw(st.integers(1, 3)))
    ]


def test_every_ratio_series_is_decided() -> None:
    check_ratio_sets(APP_METRICS, SHARES, NOT_SHARES)


@THOROUGH
@given(cycles=scrapes())
def test_scrapes_emit_finite_values_and_shares_within_0_and_1(
    page_server: PageServer, cycles: list[tuple[str, float]]
) -> None:
    now = [0.0]
    url = f"http://127.0.0.1:{page_server.server_address[1]}/metrics"
    scraper = Scraper(url, REQUESTS, LATENCY, 2.0, clock=lambda: now[0])
    for page, gap in cycles:
        page_server.page = page.encode()
        now[0] += gap
        out = SampleBuilder(APP_METRICS)
        try:
            scraper.collect(out)
        except CollectorError as error:
            event(f"error {error.detail.rsplit('/metrics: ', 1)[-1][:30]}")
            continue
        sample = out.build("app", "web", 0.0)
        for share in SHARES & {name for name, _ in sample.values}:
            event(f"{share} emitted")
        check_sample(sample, SHARES)


finite_bounds = st.floats(-1e6, 1e6, allow_nan=False)


@THOROUGH
@given(
    q=st.floats(0.01, 0.99),
    buckets=st.lists(st.tuples(finite_bounds, st.floats(0, 1e9)), max_size=6),
    overflow=st.floats(0, 1e9),
)
def test_histogram_quantile_stays_within_the_bucket_bounds(
    q: float, buckets: list[tuple[float, float]], overflow: float
) -> None:
    estimate = histogram_quantile(q, [*buckets, (math.inf, overflow)])
    if estimate is None:
        return
    bounds = [bound for bound, _ in buckets]
    # Interpolation runs between 0 (below the lowest bucket) and the highest finite bound.
    assert min(0.0, *bounds) <= estimate <= max(bounds)


@THOROUGH
@given(q=st.floats(0.01, 0.99), buckets=st.lists(st.tuples(st.floats(), st.floats()), max_size=6))
def test_histogram_quantile_of_any_buckets_does_not_raise(
    q: float, buckets: list[tuple[float, float]]
) -> None:
    # The scraper passes sums of parsed floats: NaN and infinities included, never anything else.
    histogram_quantile(q, buckets)

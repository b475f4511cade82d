"""The app's own Prometheus endpoint: request rate, 5xx share and latency quantiles over the last cycle.

Each cycle scrapes the page once and takes the increase of every counter series since the previous
successful scrape. A series first seen after that scrape was born since then (a labelled child is
created on its first increment, so the first 500 of an app shows up as a new series): its whole value
is this cycle's increase.

Two pages can only be subtracted when they come from the same process. When they do not (the app
restarted, or the URL is a Service whose scrapes land on different replicas), the difference is
meaningless: another replica's lifetime total would pass for one cycle's requests. A change of
``process_start_time_seconds`` or any counter series going down marks such a cycle, which then has no
rates; the next page from the same process has them again. Without that gauge, a scrape that moves
to a replica with larger counters cannot be told apart, which is why the URL must reach one instance.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from collectors.app.histogram import histogram_quantile
from collectors.base import CollectorError, Reason, SampleBuilder, as_finite
from collectors.deltas import Deltas
from collectors.urls import basic_auth_request, build_opener

STATUS_LABELS = ("status", "code", "status_code")
SERVER_ERROR = re.compile(r"5(\d\d|xx)", re.IGNORECASE)
# The classic text format: prometheus_client's parser does not read OpenMetrics or protobuf.
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
MAX_BYTES = 16 * 2**20
# Each socket read returns what has arrived, up to this, so the deadline is checked as bytes trickle in.
CHUNK_BYTES = 64 * 2**10
# The process collectors of the Prometheus client libraries export it: one value per process.
START_TIME = "process_start_time_seconds"
# Latency histograms not in seconds, by the unit suffix of their name.
UNIT_SCALES = {"_milliseconds": 1e-3, "_ms": 1e-3, "_microseconds": 1e-6}
# Env proxies are for the outside world; a scrape of the app next door must not go through one.
OPENER = build_opener(urllib.request.ProxyHandler({}))

Labels = tuple[tuple[str, str], ...]


@dataclass
class Page:
    """What one scrape found: the configured counters by label set, and the page's process start time."""

    requests: dict[Labels, float] = field(default_factory=dict)
    buckets: dict[Labels, float] = field(default_factory=dict)
    declared: set[str] = field(default_factory=set)
    start: float | None = None


def safe_url(url: str) -> str:
    """The URL without credentials, query or fragment, for logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


class Late(Exception):
    """The page was still arriving when the scrape's time was up."""


def read_body(response: http.client.HTTPResponse, deadline: float) -> bytes:
    """The body, at most MAX_BYTES + 1 of it. The socket timeout bounds each read, not their sum: a
    page trickling in a byte at a time would keep a single read() going for ever, so the body comes
    in chunks and the monotonic deadline is checked before each."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BYTES:
        if time.monotonic() >= deadline:
            raise Late
        chunk = response.read1(min(CHUNK_BYTES, MAX_BYTES + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def fetch(url: str, timeout: float) -> str:
    """The page at ``url``. ``timeout`` bounds the connection and each wait for data, and the body's
    reading as a whole."""
    where = f"scraping {safe_url(url)}"
    request = basic_auth_request(url, {"Accept": ACCEPT, "User-Agent": "tierwatch"})
    deadline = time.monotonic() + timeout
    try:
        with OPENER.open(request, timeout=timeout) as response:
            body = read_body(response, deadline)
    except Late:
        raise CollectorError(Reason.TIMEOUT, f"{where}: page not complete within {timeout:.2g} s") from None
    except urllib.error.HTTPError as error:
        reason = {401: Reason.AUTH, 403: Reason.PERMISSION}.get(error.code, Reason.OTHER)
        raise CollectorError(reason, f"{where}: HTTP {error.code}") from None
    except urllib.error.URLError as error:
        cause = error.reason
        if isinstance(cause, TimeoutError):
            raise CollectorError(Reason.TIMEOUT, f"{where}: no answer within {timeout:.2g} s") from None
        raise CollectorError(Reason.UNREACHABLE, f"{where}: {cause}") from None
    except TimeoutError:
        raise CollectorError(Reason.TIMEOUT, f"{where}: no answer within {timeout:.2g} s") from None
    except (http.client.HTTPException, OSError) as error:
        raise CollectorError(Reason.UNREACHABLE, f"{where}: {type(error).__name__}: {error}") from None
    if len(body) > MAX_BYTES:
        raise CollectorError(Reason.OTHER, f"{where}: the page is larger than {MAX_BYTES // 2**20} MiB")
    return body.decode("utf-8", errors="replace")


def counter_value(value: float) -> float | None:
    """A counter's or bucket's reading as a float; None for what no counter holds: a negative, NaN or
    infinite value, or digits beyond a float (the parser returns integral values as ints). Such a
    series is left out like an absent one, so it can neither crash the sums nor push the 5xx share
    out of [0, 1]."""
    number = as_finite(value)
    return number if number is not None and number >= 0 else None


def counts_requests(family: Metric, requests: str) -> bool:
    """Whether the family holds the requests counter: the counter itself, or the ``_count`` of a
    histogram or summary (Micrometer and prom-client apps count requests only there)."""
    if family.type in ("histogram", "summary"):
        return requests == f"{family.name}_count"
    return family.name in (requests, requests.removesuffix("_total"))


class Scraper:
    def __init__(
        self,
        url: str,
        requests_metric: str | None,
        latency_metric: str | None,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._requests = requests_metric
        self._latency = latency_metric.removesuffix("_bucket") if latency_metric else None
        self._timeout = timeout
        self._clock = clock
        self._deltas = Deltas()
        self._start: float | None = None  # of the process behind the previous page
        suffix = next((s for s in UNIT_SCALES if self._latency and self._latency.endswith(s)), None)
        self._latency_scale = UNIT_SCALES[suffix] if suffix else 1.0

    def describe(self) -> str:
        return f"metrics {safe_url(self._url)}"

    def collect(self, out: SampleBuilder) -> None:
        page = self._parse(fetch(self._url, self._timeout))
        # Deltas start only now, after a page that parsed: a failed scrape must not count as one.
        elapsed = self._deltas.begin(self._clock())
        request_increase, requests_fell = self._increases("requests", page.requests, elapsed is not None)
        bucket_increase, buckets_fell = self._increases("buckets", page.buckets, elapsed is not None)
        change = self._instance_change(page.start, requests_fell or buckets_fell)
        missing = sorted({name for name in (self._requests, self._latency) if name} - page.declared)
        if missing:
            out.detail("metrics_not_on_page", missing)
        if not elapsed:
            return
        if change:
            # This page and the previous one are not from the same process: no increase is known.
            out.detail("instance_changed", change)
            return
        self._rates(out, page, elapsed, request_increase, bucket_increase)

    def _parse(self, text: str) -> Page:
        page = Page()
        try:
            for family in text_string_to_metric_families(text):
                if self._requests and counts_requests(family, self._requests):
                    page.declared.add(self._requests)
                    names = {self._requests, f"{family.name}_total"}
                    page.requests.update(self._samples(family.samples, names))
                if self._latency and family.name == self._latency and family.type == "histogram":
                    page.declared.add(self._latency)
                    page.buckets.update(self._samples(family.samples, {f"{self._latency}_bucket"}))
                elif family.name == START_TIME and family.samples:
                    page.start = as_finite(family.samples[0].value)
        except (ValueError, IndexError, TypeError) as error:
            raise CollectorError(Reason.PARSE, f"scraping {safe_url(self._url)}: {error}") from None
        return page

    def _instance_change(self, start: float | None, fell: bool) -> str | None:
        """Why this page is from another process than the previous one, or None when it is not."""
        previous, self._start = self._start, start
        if start != previous:
            return f"{START_TIME} changed"
        if fell:
            return "a counter went down"
        return None

    def _rates(
        self,
        out: SampleBuilder,
        page: Page,
        elapsed: float,
        request_increase: dict[Labels, float],
        bucket_increase: dict[Labels, float],
    ) -> None:
        if self._requests in page.declared:
            out.set("app_requests_per_second", sum(request_increase.values()) / elapsed)
            self._error_ratio(out, request_increase)
        if self._latency in page.declared:
            self._latencies(out, bucket_increase)

    @staticmethod
    def _samples(samples: Iterable[Sample], names: set[str]) -> dict[Labels, float]:
        return {
            tuple(sorted(sample.labels.items())): value
            for sample in samples
            if sample.name in names and (value := counter_value(sample.value)) is not None
        }

    def _increases(
        self, kind: str, values: dict[Labels, float], has_previous: bool
    ) -> tuple[dict[Labels, float], bool]:
        """The increase of each series, and whether any series of the previous page went down."""
        increases = {}
        fell = False
        for labels, value in values.items():
            key: Hashable = (kind, labels)
            delta = self._deltas.delta(key, value)
            if delta is not None:
                increases[labels] = delta
            elif self._deltas.had(key):
                fell = True  # on the previous page, and no increase: it went down
            elif has_previous:
                increases[labels] = value  # born since the previous scrape
        return increases, fell

    @staticmethod
    def _error_ratio(out: SampleBuilder, increases: dict[Labels, float]) -> None:
        errors, with_status = 0.0, 0.0
        for labels, increase in increases.items():
            status = next((value for name, value in labels if name in STATUS_LABELS), None)
            if status is not None:
                with_status += increase
                errors += increase if SERVER_ERROR.fullmatch(status) else 0.0
        out.ratio("app_request_error_ratio", errors, with_status)

    def _latencies(self, out: SampleBuilder, increases: dict[Labels, float]) -> None:
        # Sum the buckets of every series (endpoint, method, ...) by bound, like sum by (le).
        by_bound: dict[float, float] = defaultdict(float)
        for labels, increase in increases.items():
            bound = dict(labels).get("le")
            if bound is None:
                continue
            try:
                by_bound[float(bound)] += increase  # float() reads "+Inf" too
            except ValueError:
                raise CollectorError(Reason.PARSE, f"{self._latency}_bucket has le={bound!r}") from None
        for q, name in ((0.5, "app_request_latency_p50_seconds"), (0.99, "app_request_latency_p99_seconds")):
            value = histogram_quantile(q, by_bound.items())
            if value is not None:
                out.set(name, value * self._latency_scale)

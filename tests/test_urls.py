"""URLs with credentials in them reach their server, with the credentials as basic authorization, and
no other server: a redirect elsewhere does not carry them along."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alerts.alertmanager import post_json
from collectors.app.scrape import fetch
from collectors.urls import basic_auth_request, open_request, origin

PAGE = b"# TYPE http_requests_total counter\nhttp_requests_total 3\n"


class Recording(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str = "127.0.0.1") -> None:
        super().__init__((address, 0), _Handler)
        self.seen: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.moved_to = ""  # where /moved sends the client, with a 302

    @property
    def base(self) -> str:
        return f"{self.server_address[0]}:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recording

    def do_GET(self) -> None:
        self._answer(PAGE)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(b"")

    def _answer(self, body: bytes) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", self.server.moved_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def serving(address: str) -> Iterator[Recording]:
    recording = Recording(address)
    thread = threading.Thread(target=recording.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield recording
    recording.shutdown()
    recording.server_close()


@pytest.fixture
def server() -> Iterator[Recording]:
    yield from serving("127.0.0.1")


@pytest.fixture
def same_address() -> Iterator[Recording]:
    """Another server on the first one's address, on another port."""
    yield from serving("127.0.0.1")


@pytest.fixture
def other_address() -> Iterator[Recording]:
    """Another server on another loopback address: to the client, another host."""
    yield from serving("127.0.0.2")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_alertmanager_post_sends_url_credentials_as_basic_auth(server: Recording) -> None:
    post_json(f"http://tierwatch:s3cr%40t@{server.base}/api/v2/alerts", b"[]", 2.0)
    assert server.seen == [("POST", "/api/v2/alerts", basic("tierwatch", "s3cr@t"))]


def test_app_scrape_sends_url_credentials_as_basic_auth(server: Recording) -> None:
    assert fetch(f"http://scraper:pa55@{server.base}/metrics?x=1", 2.0) == PAGE.decode()
    assert server.seen == [("GET", "/metrics?x=1", basic("scraper", "pa55"))]


def test_url_without_credentials_sends_no_authorization(server: Recording) -> None:
    fetch(f"http://{server.base}/metrics", 2.0)
    assert server.seen == [("GET", "/metrics", None)]


@pytest.fixture(params=["other_address", "same_address"])
def elsewhere(request: pytest.FixtureRequest) -> Recording:
    return request.getfixturevalue(request.param)


def test_scrape_redirected_elsewhere_leaves_the_credentials_behind(
    server: Recording, elsewhere: Recording
) -> None:
    server.moved_to = f"http://{elsewhere.base}/metrics"
    assert fetch(f"http://scraper:pa55@{server.base}/moved", 2.0) == PAGE.decode()
    assert server.seen == [("GET", "/moved", basic("scraper", "pa55"))]
    assert elsewhere.seen == [("GET", "/metrics", None)]


def test_open_request_redirected_elsewhere_leaves_the_credentials_behind(
    server: Recording, elsewhere: Recording
) -> None:
    """What the Alertmanager client opens its requests with."""
    server.moved_to = f"http://{elsewhere.base}/api/v2/alerts"
    request = basic_auth_request(f"http://tierwatch:s3cret@{server.base}/moved", {})
    with open_request(request, 2.0) as response:
        assert response.read() == PAGE
    assert server.seen == [("GET", "/moved", basic("tierwatch", "s3cret"))]
    assert elsewhere.seen == [("GET", "/api/v2/alerts", None)]


def test_a_redirect_within_the_origin_keeps_the_credentials(server: Recording) -> None:
    server.moved_to = f"http://{server.base}/metrics"
    assert fetch(f"http://scraper:pa55@{server.base}/moved", 2.0) == PAGE.decode()
    request = basic_auth_request(f"http://scraper:pa55@{server.base}/moved", {})
    with open_request(request, 2.0) as response:
        assert response.read() == PAGE
    both_ways = [("GET", "/moved", basic("scraper", "pa55")), ("GET", "/metrics", basic("scraper", "pa55"))]
    assert server.seen == both_ways * 2


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("http://Example.org/a", "http://example.org:80/b", True),
        ("https://example.org/a", "https://example.org:443/b", True),
        ("https://example.org/a", "http://example.org/a", False),
        ("https://example.org/a", "http://example.org:443/a", False),
        ("http://example.org/a", "http://example.org:8080/a", False),
        ("http://example.org/a", "http://example.net/a", False),
    ],
)
def test_origin_is_scheme_host_and_port(first: str, second: str, same: bool) -> None:
    """What counts as the same origin, down to the cases no loopback server here can show: a move
    from https to http, and default ports written out."""
    assert (origin(first) == origin(second)) is same

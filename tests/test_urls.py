"""URLs with credentials in them reach their server, with the credentials as basic authorization."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alerts.alertmanager import post_json
from collectors.app.scrape import fetch

PAGE = b"# TYPE http_requests_total counter\nhttp_requests_total 3\n"


class Recording(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, str | None]] = []  # method, path, Authorization

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recording

    def do_GET(self) -> None:
        self._answer(PAGE)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(b"")

    def _answer(self, body: bytes) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Recording]:
    recording = Recording()
    thread = threading.Thread(target=recording.serve_forever, daemon=True)
    thread.start()
    yield recording
    recording.shutdown()
    recording.server_close()


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

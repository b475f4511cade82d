"""The agent's HTTP endpoints: /metrics, /healthz, /readyz and /api/v1/alerts."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from agent.exporter import MetricsPage
from agent.store import Store

log = logging.getLogger("tierwatch.http")
AlertsProvider = Callable[[], list[dict[str, object]]]


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], page: MetricsPage, store: Store, alerts: AlertsProvider = list
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.page = page
        self.store = store
        self.alerts = alerts
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes; with Nagle on, the second would wait for the peer's delayed
    # ACK on a kept-alive connection (as Prometheus scrapes): ~40 ms a response.

    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.server.page.render())
        elif path == "/healthz":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/readyz":
            ready = self.server.store.ready()
            body = b"ready\n" if ready else b"first cycle not finished\n"
            self._send(200 if ready else 503, "text/plain; charset=utf-8", body)
        elif path == "/api/v1/alerts":
            body = json.dumps(self.server.alerts(), separators=(",", ":")).encode()
            self._send(200, "application/json", body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

"""The agent's HTTP endpoints: /metrics, /healthz, /readyz and /api/v1/alerts."""

from __future__ import annotations

import io
import json
import logging
import re
import select
import selectors
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from email.parser import Parser
from http import HTTPStatus
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.exporter import MetricsPage
from agent.store import Store

log = logging.getLogger("tierwatch.http")
AlertsProvider = Callable[[], list[dict[str, object]]]
# The format agent/exporter.py writes. prometheus_client's CONTENT_TYPE_LATEST names whatever format its
# installed version prefers (1.0.0 since 0.21), which is not what this page is.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# http.client's bounds on a header block (the blank line that ends it counts as one).
MAX_LINE = 65536
MAX_HEADERS = 100
IDLE_TIMEOUT_SECONDS = 300.0
# From a request's first byte (a new connection's accept) to the blank line ending its headers: a
# per-read timeout alone let a client sending a byte now and then hold a connection slot for ever.
HEAD_TIMEOUT_SECONDS = 10.0
# Each open connection holds a thread (about 25 KiB resident) until it closes or idles out: past this
# many at once, a newcomer gets a 503 and is closed, so that a client opening connections without end
# cannot grow the agent on the host it watches. Prometheus keeps one per scraping server.
MAX_CONNECTIONS = 64
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 27\r\nConnection: close\r\n\r\ntoo many open connections\r\n"
)
# A header field that the email parser reads as name, colon, value and nothing else.
SIMPLE_FIELD = re.compile(rb"[!-9;-~]+:[^\r\n]*\r?\n")


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
        self._stopping = False
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._refusing = False
        # serve_forever() wakes every half second to look for a shutdown request; this loop sleeps
        # until a connection arrives or stop() writes to this pair.
        self._wake_reader, self._wake_writer = socket.socketpair()

    def server_bind(self) -> None:
        # HTTPServer's would also look the address up with socket.getfqdn, for a server_name nothing
        # here reads: a reverse DNS query at every start (slow where DNS is broken), and the
        # resolver's libraries and the IDNA codec loaded for good (0.3 MiB).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        self._refusing = False
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nothing else will give the slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002 - sys.exc_info() has it
        """socketserver's prints a traceback to stderr, past the logging set up (and its scrubbing)."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the client reset or left: Prometheus does at a scrape timeout
            log.debug("HTTP connection ended: %s", error)
        else:
            log.error("HTTP request failed", exc_info=True)

    def _refuse(self, request: socket.socket) -> None:
        if not self._refusing:
            log.warning(
                "%d HTTP connections are open, the most served at once: refusing more", MAX_CONNECTIONS
            )
            self._refusing = True
        try:
            request.setblocking(False)  # the accepting thread never waits on a client
            request.send(BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake_writer.send(b"\0")
        if self._thread is not None:
            self._thread.join()
        self.server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self and not self._stopping:
                        self._handle_request_noblock()


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in one write (see _send); Nagle stays off so that an error response
    # (headers and body written apart by the standard library) is not held ~40 ms by the peer's
    # delayed ACK on a kept-alive connection, as Prometheus scrapes.
    disable_nagle_algorithm = True
    # A connection that sends nothing for this long is closed: each one holds a thread. Above any
    # sensible scrape interval, so Prometheus's kept-alive connection stays open between scrapes.
    timeout = IDLE_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own file: its reads wait the socket timeout each
        self._reads = _ReadsByDeadline(self.connection)
        self.rfile = io.BufferedReader(self._reads)

    def handle(self) -> None:
        """The standard library's loop, with a deadline for each request's head: a kept-alive
        connection may wait the idle timeout for its next request, not for the rest of one."""
        self.close_connection = True
        self._reads.deadline = time.monotonic() + min(HEAD_TIMEOUT_SECONDS, self.timeout)
        self.handle_one_request()
        while not self.close_connection and self._next_request_began():
            self._reads.deadline = time.monotonic() + HEAD_TIMEOUT_SECONDS
            self.handle_one_request()

    def _next_request_began(self) -> bool:
        """Waits up to the idle timeout for a byte of the next request (pipelined ones are here)."""
        self._reads.deadline = time.monotonic() + self.timeout
        try:
            return bool(self.rfile.peek(1))
        except OSError:  # idled out, or the client reset: nothing to answer
            return False

    def parse_request(self) -> bool:
        """The standard library's parse_request, but for the headers: it reads them with
        http.client.parse_headers, whose email feed parser costs more than the rest of a kept-alive
        scrape's handling together. Plain "Name: value" fields are split by hand into the same
        HTTPMessage; anything else still goes through the email parser."""
        if not self._parse_request_line():
            return False
        headers = self._read_headers()
        if headers is None:
            return False
        self.headers = headers
        connection = headers.get("Connection", "").lower()
        # No endpoint reads a body: left unread, it would be parsed as the next request (RFC 9112 6.3).
        self._body_unread = "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0"
        if connection == "close" or self._body_unread:
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        expect = headers.get("Expect", "").lower()
        expect_continue = expect == "100-continue" and self.request_version >= "HTTP/1.1"
        if expect_continue and self.protocol_version >= "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def _parse_request_line(self) -> bool:
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if not words:
            return False
        if len(words) >= 3:
            version = words[-1]
            number = _version_number(version)
            if number is None or number >= (2, 0):
                status, message = (
                    (HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                    if number is None
                    else (HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({version[5:]})")
                )
                self.send_error(status, message)
                return False
            if number >= (1, 1) and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        if path.startswith("//"):  # as the standard library: it would read as a scheme-relative URL
            path = "/" + path.lstrip("/")
        self.command, self.path = command, path
        return True

    def _read_headers(self) -> HTTPMessage | None:
        # As http.client reads them: lines up to the blank one, bounded in length and number.
        lines = []
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                explain = f"got more than {MAX_LINE} bytes when reading header line"
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", explain)
                return None
            lines.append(line)
            if len(lines) > MAX_HEADERS:
                explain = f"got more than {MAX_HEADERS} headers"
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers", explain)
                return None
            if line in (b"\r\n", b"\n", b""):
                break
        fields = lines[:-1]
        if not all(SIMPLE_FIELD.fullmatch(field) for field in fields):
            # Folded, nameless or malformed lines: the email parser's reading of them, as before.
            return Parser(_class=HTTPMessage).parsestr(b"".join(lines).decode("iso-8859-1"))
        headers = HTTPMessage()
        for field in fields:
            # The email parser's split of a field: name up to the colon, value without leading blanks.
            name, _, value = field.decode("iso-8859-1").partition(":")
            headers.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
        return headers

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._send(200, METRICS_CONTENT_TYPE, self.server.page.render())
        elif path == "/healthz":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/readyz":
            ready = self.server.store.ready()
            body = b"ready\n" if ready else b"first cycle not finished\n"
            self._send(200 if ready else 503, "text/plain; charset=utf-8", body)
        elif path == "/api/v1/alerts":
            body = json.dumps(self.server.alerts(), separators=(",", ":"), default=str).encode()
            self._send(200, "application/json", body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def do_HEAD(self) -> None:
        """What GET answers, without the body: RFC 9110 asks every general-purpose server for HEAD."""
        self.do_GET()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        """What send_response, send_header and end_headers write, with the body in the same write: on
        loopback every write is a trip through the TCP stack charged to this process."""
        self.log_request(status)
        if self.request_version == "HTTP/0.9":  # no status line, no headers: the body alone
            self.wfile.write(body)
            return
        closing = "Connection: close\r\n" if self._body_unread else ""  # as send_error says it
        head = (
            f"{self.protocol_version} {status} {self.responses[status][0]}\r\n"
            f"Server: {self.version_string()}\r\n"
            f"Date: {self.date_time_string()}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{closing}\r\n"
        )
        self.wfile.write(head.encode("latin-1") + (b"" if self.command == "HEAD" else body))

    def log_message(self, format: str, *args: object) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s - %s", self.address_string(), format % args)


class _ReadsByDeadline(io.RawIOBase):
    """A connection's reads, none waiting past ``deadline`` (monotonic). The socket's own timeout
    stays the idle one, for writes."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._poll = select.poll()
        self._poll.register(connection, select.POLLIN)
        self.deadline = 0.0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wait = self.deadline - time.monotonic()
        if wait <= 0 or not self._poll.poll(wait * 1000):
            raise TimeoutError("timed out")
        return self._connection.recv_into(buffer)


def _version_number(version: str) -> tuple[int, int] | None:
    """(major, minor) of "HTTP/major.minor", None when malformed (RFC 2145: two integers)."""
    if not version.startswith("HTTP/"):
        return None
    parts = version[5:].split(".")
    if len(parts) != 2 or not all(part.isascii() and part.isdigit() and len(part) <= 10 for part in parts):
        return None
    return int(parts[0]), int(parts[1])

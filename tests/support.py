"""Helpers shared by the tests: free ports, tool lookup, /metrics parsing, and the agent as a process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Self

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
# `make test` sets this: a missing tool is then a failure, not a skip.
REQUIRE_TOOLS = os.environ.get("REQUIRE_TEST_TOOLS") == "1"
# How every deployment starts the agent (the Makefile's RUN_ENV, the Dockerfile's ENV, each container
# of the Helm chart), so that tests and benchmarks run it that way too:
# - two malloc arenas: with glibc's default of one per allocating thread, up to 8 per CPU, the agent's
#   threads let RSS creep for minutes (benchmarks/soak.py);
# - no docstrings or asserts (1.7 MiB less RSS), read from the bytecode cache that `make` fills for the
#   venv's interpreter, whose standard library may not be writable.
DEPLOYED_ENVIRONMENT = {
    "MALLOC_ARENA_MAX": "2",
    "PYTHONOPTIMIZE": "2",
    "PYTHONPYCACHEPREFIX": str(Path(sys.prefix) / "pycache"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def require_tool(name: str, *candidates: str) -> str:
    """The path of a tool the test needs; skips (fails under `make test`) when it is missing."""
    for candidate in (*candidates, shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = f"{name} is not installed (`make test` installs it)"
    if REQUIRE_TOOLS:
        pytest.fail(message)
    pytest.skip(message)


Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float | None:
    """The value of the one series with exactly these labels, or None."""
    return series.get((name, frozenset(labels.items())))


# The agents and servers under test are on loopback: a proxy in the environment must not answer for them.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with LOCAL.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class BackgroundLoop:
    """A daemon thread that runs ``_run`` while a ``with`` block lasts: ``_stop`` is set at its end, and
    ``_run`` returns when it sees it."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        raise NotImplementedError


class AgentProcess:
    """``tierwatch run`` as a child process, started as deployed, with a config written from a dict."""

    def __init__(
        self, tmp_path: Path, config: Mapping[str, Any], env: Mapping[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.config_path = tmp_path / "tierwatch.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(config)))
        self.log_path = tmp_path / "agent.log"
        self._env = {**os.environ, **DEPLOYED_ENVIRONMENT, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> AgentProcess:
        self.spawn()
        try:
            self.wait_for(lambda: http_get(f"{self.url}/healthz", 1)[0] == 200, "healthz")
            if wait_ready:
                self.wait_for(lambda: http_get(f"{self.url}/readyz", 1)[0] == 200, "readyz")
        except BaseException:
            # __exit__ never runs for a failed __enter__: an agent left behind would go on polling.
            self.stop()
            raise
        return self

    def spawn(self) -> subprocess.Popen[bytes]:
        """Starts the agent without waiting for anything."""
        command = [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--config",
            str(self.config_path),
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=self._env, stdout=log, stderr=log)
        return self.process

    def wait_for(self, condition: Any, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            assert self.process.poll() is None, f"agent exited:\n{self.log()}"
            try:
                if condition():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"agent: no {what} within {timeout} s\n{self.log()}")

    def metrics_text(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200
        return body.decode()

    def metrics(self) -> Series:
        return parse_metrics(self.metrics_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def reload(self, config: Mapping[str, Any] | str) -> None:
        """Rewrites the config file (a dict, or text as it is) and sends SIGHUP."""
        text = config if isinstance(config, str) else yaml.safe_dump(dict(config))
        self.config_path.write_text(text)
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()


def start_python(seconds: float, tag: str = "", *, busy: bool = True) -> subprocess.Popen[bytes]:
    """A child process that keeps one CPU busy (or sleeps) for at most ``seconds``, with ``tag`` in its
    command line for the app collector's process matching."""
    loop = "while time.time() < end: pass" if busy else "time.sleep(max(0.0, end - time.time()))"
    code = f"import time\nend = time.time() + {seconds}  # {tag}\n{loop}\n"
    return subprocess.Popen([sys.executable, "-c", code])


@contextmanager
def running(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kills ``processes`` when the block ends, however it ends."""
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def every_core_busy(seconds: float) -> AbstractContextManager[None]:
    """A busy-looping process per core of this machine, none of them a server's, for at most ``seconds``."""
    return running(*(start_python(seconds) for _ in range(os.cpu_count() or 1)))


def assert_promtool_accepts(page: str) -> None:
    """``promtool check metrics`` finds nothing to say about the page: no error, no lint warning."""
    promtool = require_tool("promtool", "/usr/bin/promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=page, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""

"""SIGHUP reloads the configuration; an unusable new one keeps the running one and says why."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

import psutil
import pytest
import yaml

from agent.config.loader import validate_config
from agent.run import Pipeline
from tests.fixtures.redis_server import RedisServer
from tests.scenarios import quiet_host
from tests.support import AgentProcess, free_port, value


def up(agent: AgentProcess, collector: str, target: str) -> float | None:
    return value(agent.metrics(), "tierwatch_collector_up", collector=collector, target=target)


def test_reload_switches_targets_and_keeps_serving(tmp_path: Path, redis_server: RedisServer) -> None:
    first = {"interval": 0.5, "host": quiet_host()}
    with AgentProcess(tmp_path, first) as agent:
        port = agent.port
        assert up(agent, "host", "node-a") == 1
        agent.reload({**first, "redis": [{"name": "sessions", "url": redis_server.url}]})
        agent.wait_for(lambda: up(agent, "redis", "sessions") == 1, "the new redis target")
        assert up(agent, "host", "node-a") == 1
        # a target dropped from the config disappears from /metrics
        agent.reload(
            {
                "interval": 0.5,
                "host": {"enabled": False},
                "redis": [{"name": "sessions", "url": redis_server.url}],
            },
        )
        agent.wait_for(lambda: up(agent, "host", "node-a") is None, "the host target to go")
        assert agent.port == port
        assert agent.log().count("configuration reloaded") == 2


def test_invalid_new_config_keeps_the_old_one(tmp_path: Path) -> None:
    config = {"interval": 0.5, "host": quiet_host()}
    with AgentProcess(tmp_path, config) as agent:
        for broken, reason in (
            ("interval: [\n", "YAML syntax error at line"),
            (yaml.safe_dump({**config, "hots": {}}), "hots: unknown key"),
            (
                yaml.safe_dump({**config, "rules": {"MemorySwapping": {"memory": 1}}}),
                "unknown threshold memory",
            ),
            # read silently as interval 2 before; now refused like any other broken file
            (yaml.safe_dump(config) + "interval: 2\n", "a key given twice in one mapping"),
        ):
            agent.reload(broken)
            agent.wait_for(lambda reason=reason: reason in agent.log(), f"the reason ({reason})")
            assert "reload failed, keeping the running configuration" in agent.log()
            assert agent.process is not None
            assert agent.process.poll() is None
            assert up(agent, "host", "node-a") == 1
        assert "configuration reloaded" not in agent.log()


def test_reload_continues_a_target_it_watches_alike_and_restarts_one_that_moved(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    nobody_listens = f"redis://127.0.0.1:{free_port()}"
    config = {
        "interval": 0.5,
        "host": {"enabled": False},
        "redis": [{"name": "sessions", "url": nobody_listens}],
    }
    with AgentProcess(tmp_path, config) as agent:
        agent.wait_for(lambda: (unreachable(agent) or 0) >= 2, "two failed cycles")
        before = unreachable(agent)
        agent.reload({**config, "window": 600})  # another setting changed: the target goes on
        agent.wait_for(lambda: agent.log().count("configuration reloaded") == 1, "the first reload")
        assert (unreachable(agent) or 0) >= before  # counted on, not from zero
        agent.reload({**config, "redis": [{"name": "sessions", "url": redis_server.url}]})
        agent.wait_for(lambda: up(agent, "redis", "sessions") == 1, "the moved target")
        assert unreachable(agent) == 0  # another server: its history is not the old one's


def unreachable(agent: AgentProcess) -> float | None:
    return value(
        agent.metrics(),
        "tierwatch_collector_errors_total",
        collector="redis",
        target="sessions",
        reason="unreachable",
    )


def test_a_configuration_only_built_leaves_psutils_procfs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a reload that fails after building does: the running configuration keeps its procfs.
    monkeypatch.setattr(psutil, "PROCFS_PATH", "/proc")
    config = validate_config({"interval": 1, "host": quiet_host()})
    pipeline = Pipeline.build(config)
    assert psutil.PROCFS_PATH == "/proc"
    pipeline.start()
    try:
        assert quiet_host()["procfs"] == psutil.PROCFS_PATH
    finally:
        pipeline.stop()


TGKILL = {"x86_64": 234, "aarch64": 131}  # the syscall's number: the C library has no wrapper


def signal_thread(pid: int, tid: int, signum: int) -> None:
    """Sends ``signum`` to one thread of process ``pid``, as the kernel may pick any to deliver to."""
    number = TGKILL.get(os.uname().machine)
    if number is None:
        pytest.skip(f"tgkill's syscall number on {os.uname().machine} is not known here")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(number, pid, tid, signum) == 0, os.strerror(ctypes.get_errno())


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_that_reaches_another_thread_is_acted_on(tmp_path: Path, signum: int) -> None:
    """The kernel may deliver a process's signal to any thread; the main thread, blocked waiting for
    one, must still wake up and act on it."""
    config = {"interval": 0.5, "host": quiet_host()}
    with AgentProcess(tmp_path, config) as agent:
        assert agent.process is not None
        pid = agent.process.pid
        thread = next(int(task) for task in os.listdir(f"/proc/{pid}/task") if int(task) != pid)
        agent.config_path.write_text(yaml.safe_dump(config))
        signal_thread(pid, thread, signum)
        if signum == signal.SIGHUP:
            agent.wait_for(lambda: "configuration reloaded" in agent.log(), "the reload", timeout=5.0)
        else:
            assert agent.process.wait(timeout=5) == 0

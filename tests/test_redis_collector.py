"""The Redis collector against real redis-server processes: each test causes the condition it checks.

Cycles are driven by calling ``collect()`` with a fake monotonic clock, so rates, ratios and backoff
delays come out exact without sleeping.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import pytest
import redis.exceptions as redis_errors
from redis.connection import AbstractConnection, Connection

from agent.config.model import Config, RedisTarget, Secret
from alerts.classifier import classify
from alerts.table import RULES, SIGNALS
from collectors.base import CollectorError, Reason, Sample
from collectors.redis import RedisCollector, build, open_connection
from tests.fixtures.redis_server import RedisServer, RedisServers
from tests.support import free_port
from tests.test_properties_redis import StandInConnection

ACL_PASSWORD = "acl-pass-7f3e"
# The line docs/redis.md gives to operators; this test is what proves it is enough.
LEAST_PRIVILEGE_ACL = (
    f"user tierwatch on >{ACL_PASSWORD} -@all +info +slowlog|get +slowlog|len +client|list +client|setname"
)
BUSY_SCRIPT = "local i = 0 while i < 10000000 do i = i + 1 end return i"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeCollector = Callable[..., RedisCollector]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_collector(clock: FakeClock) -> Iterator[MakeCollector]:
    """Collectors on the fake clock, with a first backoff of 1 s; closed when the test ends."""
    made: list[RedisCollector] = []

    def make(url: str, password: str | None = None, timeout: float = 2.0) -> RedisCollector:
        entry = RedisTarget(name="cache", url=Secret(url), password=Secret(password) if password else None)
        connection, address = open_connection(entry, timeout)
        collector = RedisCollector("cache", connection, address=address, first_backoff=1.0, clock=clock)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def failure(collector: RedisCollector) -> CollectorError:
    with pytest.raises(CollectorError) as raised:
        collector.collect()
    return raised.value


def test_connected_clients_against_maxclients(
    redis_servers: RedisServers, make_collector: MakeCollector, clock: FakeClock
) -> None:
    server = redis_servers.start("maxclients 40")
    collector = make_collector(server.url)
    held = [server.client() for _ in range(36)]
    try:
        for client in held:
            client.ping()
        sample = collector.collect()
        # 36 held clients plus the collector's own connection.
        assert sample.get("redis_connected_clients") == 37
        assert sample.get("redis_maxclients") == 40
        assert sample.get("redis_clients_used_ratio") == 37 / 40
        assert sample.get("redis_rejected_connections_total") == 0
        held += [server.client() for _ in range(3)]
        for client in held[36:]:
            client.ping()
        with socket.create_connection((server.host, server.port), timeout=5) as extra:
            assert extra.recv(100).startswith(b"-ERR max number of clients reached")
        clock.advance(2.0)
        sample = collector.collect()
        assert sample.get("redis_connected_clients") == 40
        assert sample.get("redis_clients_used_ratio") == 1.0
        assert sample.get("redis_rejected_connections_total") == 1
        assert sample.get("redis_rejected_connections_per_second") == 0.5
    finally:
        for client in held:
            client.close()


def test_evictions_counted_when_maxmemory_is_full(
    redis_servers: RedisServers, make_collector: MakeCollector, clock: FakeClock
) -> None:
    server = redis_servers.start("maxmemory 2mb", "maxmemory-policy allkeys-lru")
    collector = make_collector(server.url)
    assert collector.collect().get("redis_evicted_keys_total") == 0
    written = 4000
    with server.client() as client:
        pipe = client.pipeline(transaction=False)
        for number in range(written):
            pipe.set(f"filler:{number}", "v" * 1000)
        pipe.execute()
        evicted = written - client.dbsize()
    assert evicted > 0
    clock.advance(2.0)
    sample = collector.collect()
    assert sample.get("redis_evicted_keys_total") == evicted
    assert sample.get("redis_evicted_keys_per_second") == evicted / 2.0
    assert sample.get("redis_memory_max_bytes") == 2 * 1024 * 1024
    used = sample.get("redis_memory_used_bytes")
    assert used is not None
    assert sample.get("redis_memory_used_ratio") == used / (2 * 1024 * 1024)
    assert sample.get("redis_memory_used_ratio") > 0.9
    assert sample.details["maxmemory_policy"] == "allkeys-lru"


def test_full_noeviction_server_refusing_writes_is_memory_pressure(
    redis_servers: RedisServers, make_collector: MakeCollector, clock: FakeClock
) -> None:
    # noeviction is Redis's default policy: a full server evicts nothing and refuses writes instead.
    server = redis_servers.start("maxmemory 2mb", "maxmemory-policy noeviction")
    collector = make_collector(server.url)
    first = collector.collect()
    assert first.get("redis_oom_rejected_commands_total") == 0
    with server.client() as client:
        pipe = client.pipeline(transaction=False)
        for number in range(4000):  # 4 MB of values: about half are refused
            pipe.set(f"filler:{number}", "v" * 1000)
        replies = pipe.execute(raise_on_error=False)
    refused = sum(isinstance(reply, redis_errors.OutOfMemoryError) for reply in replies)
    assert refused > 0
    clock.advance(2.0)
    second = collector.collect()
    assert second.get("redis_oom_rejected_commands_total") == refused
    assert second.get("redis_oom_rejected_commands_per_second") == refused / 2.0
    assert second.get("redis_evicted_keys_per_second") == 0
    assert second.get("redis_memory_used_ratio") >= 0.9
    assert second.details["maxmemory_policy"] == "noeviction"
    verdicts = classify({("redis", "cache"): (first, second)}, RULES, SIGNALS)
    (pressure,) = [verdict for verdict in verdicts if verdict.rule.name == "RedisMemoryPressure"]
    assert pressure.truth is True
    assert pressure.because == ("redis_memory_used_ratio", "redis_oom_rejected_per_second")


def test_unlimited_maxmemory_has_no_ratio(redis_server: RedisServer, make_collector: MakeCollector) -> None:
    sample = make_collector(redis_server.url).collect()
    assert sample.get("redis_memory_max_bytes") == 0
    assert sample.get("redis_memory_used_bytes") > 0
    assert sample.series("redis_memory_used_ratio") == {}


def test_hit_ratio_over_one_cycle(redis_server: RedisServer, make_collector: MakeCollector) -> None:
    collector = make_collector(redis_server.url)
    with redis_server.client() as client:
        client.set("hit-ratio:present", "1")
        before = collector.collect()
        for _ in range(30):
            client.get("hit-ratio:present")
        for _ in range(10):
            client.get("hit-ratio:absent")
    after = collector.collect()
    assert after.get("redis_keyspace_hit_ratio") == 0.75
    assert after.get("redis_keyspace_hits_total") - before.get("redis_keyspace_hits_total") == 30
    assert after.get("redis_keyspace_misses_total") - before.get("redis_keyspace_misses_total") == 10
    # No lookups in a cycle: the ratio is unknown, not 0 or 1.
    assert collector.collect().series("redis_keyspace_hit_ratio") == {}


def test_client_blocked_on_blpop(redis_server: RedisServer, make_collector: MakeCollector) -> None:
    collector = make_collector(redis_server.url)
    assert collector.collect().get("redis_blocked_clients") == 0
    with redis_server.client() as blocked, redis_server.client() as admin:
        waiter = threading.Thread(target=blocked.blpop, args=(["blocked:queue"], 10))
        waiter.start()
        try:
            wait_until(lambda: admin.info("clients")["blocked_clients"] == 1, "blocked client")
            assert collector.collect().get("redis_blocked_clients") == 1
        finally:
            admin.lpush("blocked:queue", "release")
            waiter.join(5)
    assert collector.collect().get("redis_blocked_clients") == 0


def test_renamed_config_is_not_missed_when_info_reports_the_settings(
    redis_servers: RedisServers, make_collector: MakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_servers.start(
        'rename-command CONFIG ""', "maxclients 50", "maxmemory 3mb", "maxmemory-policy volatile-lru"
    )
    collector = make_collector(server.url)
    with caplog.at_level(logging.INFO, logger="tierwatch.redis"):
        samples = [collector.collect(), collector.collect()]
    for sample in samples:
        assert sample.get("redis_maxclients") == 50
        assert sample.get("redis_memory_max_bytes") == 3 * 1024 * 1024
        assert sample.details["maxmemory_policy"] == "volatile-lru"
    assert [record for record in caplog.records if record.name == "tierwatch.redis"] == []
    assert server.info("stats")["total_error_replies"] == 0  # no CONFIG was even tried


def test_commands_sent_are_the_named_ones_only(
    redis_servers: RedisServers, make_collector: MakeCollector
) -> None:
    # With a zero threshold the slow log records every command with its arguments and client name.
    server = redis_servers.start("slowlog-log-slower-than 0", "slowlog-max-len 1000")
    collector = make_collector(server.url)
    collector.collect()
    collector.collect()  # this server's INFO reports the three settings: no CONFIG GET at all
    with server.client() as admin:
        entries = admin.slowlog_get(1000)
    # redis-py leaves these two fields of the slow log as bytes.
    ours = sorted(entry["command"].decode() for entry in entries if entry["client_name"] == b"tierwatch")
    assert ours == sorted(
        [
            "CLIENT SETNAME tierwatch",
            "INFO all",
            "INFO all",
            "SLOWLOG GET 5",
            "SLOWLOG GET 5",
            "SLOWLOG LEN",
            "SLOWLOG LEN",
        ]
    )


def test_restart_recovery_and_backoff(
    redis_servers: RedisServers, make_collector: MakeCollector, clock: FakeClock
) -> None:
    server = redis_servers.start()
    collector = make_collector(server.url)
    with server.client() as admin:
        for number in range(50):
            admin.set(f"restart:{number}", number)
    assert collector.collect().get("redis_commands_processed_total") >= 50
    server.restart()
    # The connection kept from before the restart is replaced within the same cycle.
    assert collector.collect().get("redis_commands_processed_total") < 50

    server.stop()
    down = failure(collector)
    assert down.reason is Reason.UNREACHABLE
    assert down.detail.endswith("(next attempt in 1 s)")
    server.start()
    connections = server.info("stats")["total_connections_received"]
    waiting = failure(collector)
    assert waiting.reason is Reason.UNREACHABLE
    assert "next attempt in 1 s" in waiting.detail
    # Only the test's own INFO connection arrived: the collector did not try during its backoff.
    assert server.info("stats")["total_connections_received"] == connections + 1
    clock.advance(1.0)
    assert collector.collect().get("redis_connected_clients") == 1

    server.stop()
    assert failure(collector).detail.endswith("(next attempt in 1 s)")
    clock.advance(1.0)
    assert failure(collector).detail.endswith("(next attempt in 2 s)")
    clock.advance(1.0)
    assert failure(collector).detail.endswith("(next attempt in 1 s)")


def test_unreachable_port(make_collector: MakeCollector) -> None:
    error = failure(make_collector(f"redis://127.0.0.1:{free_port()}/0"))
    assert error.reason is Reason.UNREACHABLE
    assert "Connection refused" in error.detail


def test_hung_server_is_a_timeout(
    redis_servers: RedisServers, make_collector: MakeCollector, clock: FakeClock
) -> None:
    server = redis_servers.start()
    collector = make_collector(server.url, timeout=0.3)
    collector.collect()
    server.pause()
    try:
        started = time.monotonic()
        error = failure(collector)
        assert error.reason is Reason.TIMEOUT
        assert time.monotonic() - started < 1.0
    finally:
        server.resume()
    clock.advance(1.0)
    assert collector.collect().get("redis_connected_clients") == 1


def test_wrong_or_missing_password_is_auth_without_echo(
    redis_servers: RedisServers, make_collector: MakeCollector
) -> None:
    server = redis_servers.start(password="right-pass-91b2")
    port = server.port
    cases = [
        make_collector(f"redis://:wrong-pass-5c0d@127.0.0.1:{port}/0"),
        make_collector(f"redis://127.0.0.1:{port}/0", password="wrong-pass-5c0d"),
        make_collector(f"redis://127.0.0.1:{port}/0"),
    ]
    for collector in cases:
        error = failure(collector)
        assert error.reason is Reason.AUTH
        assert "wrong-pass-5c0d" not in str(error)
        assert "wrong-pass-5c0d" not in collector.describe()
    assert (
        make_collector(server.url, password="right-pass-91b2").collect().get("redis_connected_clients") == 1
    )


def test_least_privilege_acl_user_is_enough(
    redis_servers: RedisServers, make_collector: MakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_servers.start(LEAST_PRIVILEGE_ACL)
    collector = make_collector(f"redis://tierwatch:{ACL_PASSWORD}@127.0.0.1:{server.port}/0")
    with server.client() as subscriber_client, server.client() as admin:
        subscriber = subscriber_client.pubsub()
        subscriber.subscribe("updates")
        wait_until(lambda: admin.info("stats")["pubsub_channels"] == 1, "subscription")
        with caplog.at_level(logging.INFO, logger="tierwatch.redis"):
            samples = [collector.collect(), collector.collect()]
        subscriber.close()
        denied = admin.acl_log()
        commands = admin.info("commandstats")
    for sample in samples:
        assert sample.get("redis_maxclients") == 10000
        assert sample.get("redis_pubsub_clients") == 1
        assert sample.get("redis_slowlog_length") == 0
        assert sample.details["slowlog"] == []
    assert [record for record in caplog.records if record.name == "tierwatch.redis"] == []
    assert "cmdstat_config|get" not in commands  # this server's INFO reports all three settings
    assert denied == []


def test_acl_without_config_or_info(
    redis_servers: RedisServers, make_collector: MakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_servers.start(
        "maxclients 60",
        f"user noconfig on >{ACL_PASSWORD} -@all +info +slowlog|get +slowlog|len +client|list "
        "+client|setname",
        f"user noinfo on >{ACL_PASSWORD} -@all +config|get +slowlog|get +slowlog|len +client|setname",
    )
    without_config = make_collector(f"redis://noconfig:{ACL_PASSWORD}@127.0.0.1:{server.port}/0")
    with caplog.at_level(logging.INFO, logger="tierwatch.redis"):
        assert without_config.collect().get("redis_maxclients") == 60
        assert without_config.collect().get("redis_maxclients") == 60
    assert [record for record in caplog.records if record.name == "tierwatch.redis"] == []
    error = failure(make_collector(f"redis://noinfo:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"))
    assert error.reason is Reason.PERMISSION
    assert error.detail.startswith("INFO failed")


def test_pubsub_channels_patterns_clients_and_output_buffer(
    redis_server: RedisServer, make_collector: MakeCollector
) -> None:
    collector = make_collector(redis_server.url)
    with (
        redis_server.client() as first,
        redis_server.client() as second,
        redis_server.client() as admin,
    ):
        channels, patterns = first.pubsub(), second.pubsub()
        channels.subscribe("news", "prices")
        patterns.psubscribe("alerts.*")
        wait_until(lambda: admin.info("stats")["pubsub_patterns"] == 1, "subscriptions")
        # A subscriber that never reads: its replies pile up in Redis's output buffer.
        for _ in range(320):
            admin.publish("news", "x" * 65536)
        wait_until(lambda: admin.info("clients")["client_recent_max_output_buffer"] > 2**20, "output buffer")
        sample = collector.collect()
        channels.close()
        patterns.close()
    assert sample.get("redis_pubsub_channels") == 2
    assert sample.get("redis_pubsub_patterns") == 1
    assert sample.get("redis_pubsub_clients") == 2
    assert sample.get("redis_client_max_output_buffer_bytes") > 2**20
    with redis_server.client() as admin:
        wait_until(lambda: admin.info("stats")["pubsub_channels"] == 0, "unsubscription")
    after = collector.collect()
    assert after.get("redis_pubsub_channels") == 0
    assert after.get("redis_pubsub_clients") == 0


def test_many_subscribers_are_not_listed_every_cycle(
    redis_server: RedisServer, make_collector: MakeCollector
) -> None:
    """Before Redis 7.4 subscribers are counted with CLIENT LIST, which formats a line per subscriber
    on Redis's only thread: 250 of them are listed once every three cycles."""
    collector = make_collector(redis_server.url)
    subscribers = [socket.create_connection((redis_server.host, redis_server.port)) for _ in range(250)]
    try:
        for number, subscriber in enumerate(subscribers):
            subscriber.sendall(b"SUBSCRIBE channel:%d\r\n" % (number % 5))
        with redis_server.client() as admin:
            wait_until(lambda: admin.pubsub_numsub("channel:4")[0][1] == 50, "subscriptions")

            def listed() -> int:
                return admin.info("commandstats").get("cmdstat_client|list", {"calls": 0})["calls"]

            before = listed()
            counts = [collector.collect().get("redis_pubsub_clients") for _ in range(4)]
            assert counts == [250] * 4
            assert listed() - before == 2  # the first cycle and the fourth
    finally:
        for subscriber in subscribers:
            subscriber.close()
    with redis_server.client() as admin:
        wait_until(lambda: admin.info("stats")["pubsub_channels"] == 0, "unsubscription")
    # Nothing subscribed: the count is 0 at once, and the next subscribers are listed afresh.
    assert collector.collect().get("redis_pubsub_clients") == 0
    with redis_server.client() as subscriber_client, redis_server.client() as admin:
        subscriber = subscriber_client.pubsub()
        subscriber.subscribe("channel:0")
        wait_until(lambda: admin.info("stats")["pubsub_channels"] == 1, "subscription")
        assert collector.collect().get("redis_pubsub_clients") == 1
        subscriber.close()


def test_slowlog_evidence_and_main_thread_cpu(
    redis_servers: RedisServers, make_collector: MakeCollector, clock: FakeClock
) -> None:
    server = redis_servers.start()
    collector = make_collector(server.url)
    before = collector.collect()
    assert before.get("redis_slowlog_length") == 0
    with server.client() as client:
        client.eval(BUSY_SCRIPT, 1, "some-key", "v" * 200)
    clock.advance(1.0)
    after = collector.collect()
    assert after.get("redis_slowlog_length") == 1
    (entry,) = after.details["slowlog"]
    assert entry["command"] == "EVAL " + BUSY_SCRIPT[:37] + "... (+3 more arguments)"
    assert entry["duration_seconds"] >= 0.01  # the default slowlog-log-slower-than
    used = after.get("redis_main_thread_cpu_seconds_total") - before.get(
        "redis_main_thread_cpu_seconds_total"
    )
    # The busy script ran on the main thread within this cycle of 1 s on the fake clock. Its wall
    # duration is no bound on its CPU time when the machine is shared, so only its presence is.
    assert used > 0.005

    assert after.get("redis_main_thread_cpu_utilization_ratio") == pytest.approx(min(1.0, used / 1.0))


def test_latency_of_the_busiest_commands_only(
    redis_servers: RedisServers, make_collector: MakeCollector
) -> None:
    server = redis_servers.start()
    commands = [
        ("GET", "k"),
        ("SET", "k", "v"),
        ("TYPE", "k"),
        ("EXISTS", "k"),
        ("STRLEN", "k"),
        ("APPEND", "text", "x"),
        ("LPUSH", "list", "x"),
        ("RPUSH", "list", "x"),
        ("LLEN", "list"),
        ("SADD", "set", "x"),
        ("SCARD", "set"),
        ("HSET", "hash", "field", "x"),
    ]
    with server.client() as client:
        pipe = client.pipeline(transaction=False)
        # Distinct call counts, 21 to 32: the ten most called are the last ten.
        for calls, command in enumerate(commands, start=21):
            for _ in range(calls):
                pipe.execute_command(*command)
        pipe.execute()
    sample = make_collector(server.url).collect()
    with server.client() as admin:
        percentiles = admin.info("latencystats")
    latencies = sample.series("redis_command_latency_seconds")
    assert {command for command, _ in latencies} == {command[0].lower() for command in commands[2:]}
    assert {percentile for _, percentile in latencies} == {"50", "99", "99.9"}
    hset = percentiles["latency_percentiles_usec_hset"]
    assert latencies[("hset", "50")] == hset["p50"] / 1e6
    assert latencies[("hset", "99.9")] == hset["p99.9"] / 1e6


def test_replication_role_link_and_last_io(
    redis_servers: RedisServers, make_collector: MakeCollector
) -> None:
    master = redis_servers.start("repl-diskless-sync-delay 0")
    replica = redis_servers.start(f"replicaof 127.0.0.1 {master.port}")
    wait_until(lambda: replica.info("replication")["master_link_status"] == "up", "replication link", 10)
    on_master = make_collector(master.url).collect()
    assert on_master.get("redis_replication_is_master") == 1
    assert on_master.get("redis_connected_replicas") == 1
    assert on_master.series("redis_replication_master_link_up") == {}
    replica_collector = make_collector(replica.url)
    on_replica = replica_collector.collect()
    assert on_replica.get("redis_replication_is_master") == 0
    assert on_replica.get("redis_replication_master_link_up") == 1
    # The master pings its replicas every 10 s (repl-ping-replica-period).
    assert 0 <= on_replica.get("redis_replication_master_last_io_age_seconds") <= 10
    master.stop()
    wait_until(lambda: replica.info("replication")["master_link_status"] == "down", "link down")
    link_down = replica_collector.collect()
    assert link_down.get("redis_replication_master_link_up") == 0
    assert link_down.series("redis_replication_master_last_io_age_seconds") == {}


def test_last_bgsave_status(redis_servers: RedisServers, make_collector: MakeCollector) -> None:
    server = redis_servers.start()
    collector = make_collector(server.url)

    def saved(status: str) -> Callable[[], bool]:
        def check() -> bool:
            persistence = server.info("persistence")
            return (
                persistence["rdb_bgsave_in_progress"] == 0 and persistence["rdb_last_bgsave_status"] == status
            )

        return check

    with server.client() as admin:
        admin.bgsave()
        wait_until(saved("ok"), "snapshot")
        sample = collector.collect()
        assert sample.get("redis_rdb_last_bgsave_ok") == 1
        assert sample.get("redis_rdb_bgsave_in_progress") == 0
        assert sample.get("redis_aof_rewrite_in_progress") == 0
        # With its working directory gone the snapshot child cannot create its file.
        shutil.rmtree(server.data)
        admin.bgsave()
        wait_until(saved("err"), "failed snapshot")
    assert collector.collect().get("redis_rdb_last_bgsave_ok") == 0


def test_build_uses_one_named_connection(redis_server: RedisServer) -> None:
    collector = build(Config(interval=2), RedisTarget(name="cache", url=Secret(redis_server.url)))
    try:
        assert collector.describe() == f"redis cache at 127.0.0.1:{redis_server.port}"
        connections = redis_server.info("stats")["total_connections_received"]
        samples: list[Sample] = [collector.collect() for _ in range(3)]
        with redis_server.client() as admin:
            names = [client["name"] for client in admin.client_list()]
            # The collector's one connection for three cycles, plus this admin connection.
            assert admin.info("stats")["total_connections_received"] == connections + 2
    finally:
        collector.close()
    assert names.count("tierwatch") == 1
    assert all(sample.get("redis_connected_clients") >= 1 for sample in samples)


class RecordingConnection(StandInConnection):
    """Answers with prepared replies and keeps every command it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str | int, ...]] = []

    def send_packed_command(self, commands: Sequence[tuple[str | int, ...]]) -> None:
        self.sent += [tuple(command) for command in commands]
        super().send_packed_command(commands)


def test_a_setting_info_lacks_is_asked_by_name_and_a_refusal_said_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis 6.0's INFO has no maxclients: tierwatch asks CONFIG GET for that one setting, from the
    second cycle on, and gives up for good, saying so once, when CONFIG is refused."""
    raw = Connection(host="127.0.0.1", port=redis_server.port)
    try:
        raw.send_command("INFO", "all")
        info = raw.read_response()
    finally:
        raw.disconnect()
    assert isinstance(info, bytes)
    connection = RecordingConnection()
    connection.replies = {
        ("INFO", "all"): re.sub(rb"maxclients:\d+\r\n", b"", info),
        ("SLOWLOG", "LEN"): 0,
        ("SLOWLOG", "GET", 5): [],
        ("CONFIG", "GET", "maxclients"): [b"maxclients", b"60"],
    }
    collector = RedisCollector(
        "cache", cast(AbstractConnection, connection), address="stand-in", first_backoff=1.0
    )
    config_get = ("CONFIG", "GET", "maxclients")
    assert collector.collect().get("redis_maxclients") is None  # the first cycle asks INFO only
    assert config_get not in connection.sent
    assert collector.collect().get("redis_maxclients") == 60
    assert connection.sent.count(config_get) == 1
    connection.replies[config_get] = redis_errors.NoPermissionError("NOPERM this user has no permissions")
    with caplog.at_level(logging.INFO, logger="tierwatch.redis"):
        for _ in range(3):
            assert collector.collect().get("redis_maxclients") is None
    assert connection.sent.count(config_get) == 2  # refused once, never asked again
    (said,) = [record.getMessage() for record in caplog.records if record.name == "tierwatch.redis"]
    assert "CONFIG GET is not available" in said

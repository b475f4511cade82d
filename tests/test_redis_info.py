"""The Redis collector's parsers, backoff and URL handling, on text samples: no server needed."""

from __future__ import annotations

import pytest

from agent.config import ConfigError
from agent.config.model import Config, RedisTarget, Secret
from collectors.backoff import Backoff
from collectors.base import CollectorError, Reason
from collectors.redis import build, open_connection
from collectors.redis.info import (
    busiest_commands,
    command_latencies,
    count_subscribers,
    oom_errors,
    parse_info,
    slowlog_entries,
)

INFO_SAMPLE = """\
# Server\r
redis_version:7.0.15\r
executable:/usr/bin/redis-server\r
config_file:\r
\r
# Clients\r
connected_clients:7\r
maxclients:10000\r
\r
# Replication\r
role:slave\r
master_host:::1\r
slave0:ip=127.0.0.1,port=6380,state=online,offset=42,lag=0\r
\r
# Commandstats\r
cmdstat_get:calls=30,usec=90,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r
cmdstat_set:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r
cmdstat_client|list:calls=30,usec=60,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r
cmdstat_info:calls=2,usec=200,usec_per_call=100.00,rejected_calls=0,failed_calls=0\r
\r
# Latencystats\r
latency_percentiles_usec_get:p50=3.007,p99=10.047,p99.9=20.095\r
latency_percentiles_usec_set:p50=5.023,p99=5.023,p99.9=5.023\r
latency_percentiles_usec_info:p50=100.351,p99=100.351,p99.9=100.351\r
"""


def test_info_fields_of_all_sections() -> None:
    info = parse_info(INFO_SAMPLE)
    assert info.number("connected_clients") == 7
    assert info.text("role") == "slave"
    assert info.text("config_file") == ""
    assert info.text("master_host") == "::1"  # only the first colon separates key and value
    assert info.pairs("slave0") == {
        "ip": "127.0.0.1",
        "port": "6380",
        "state": "online",
        "offset": "42",
        "lag": "0",
    }
    assert info.optional("pubsub_clients") is None
    assert info.sections["Latencystats"]["latency_percentiles_usec_set"] == "p50=5.023,p99=5.023,p99.9=5.023"
    assert {key for section in info.sections.values() for key in section} == set(info.fields)


def test_busiest_commands_are_bounded_and_ordered_by_calls() -> None:
    info = parse_info(INFO_SAMPLE)
    # Ties are broken by name so that the selection does not flap between cycles.
    assert busiest_commands(info, 2) == ["client|list", "get"]
    assert busiest_commands(info, 10) == ["client|list", "get", "set", "info"]


def test_latencies_in_seconds_per_percentile_for_the_chosen_commands_only() -> None:
    latencies = command_latencies(parse_info(INFO_SAMPLE), ["get", "client|list"])
    assert latencies == {
        ("get", "50"): 3.007e-6,
        ("get", "99"): 10.047e-6,
        ("get", "99.9"): 20.095e-6,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "INFO reply is empty"),
        ("# Server\r\n\r\n", "INFO reply is empty"),
        ("HTTP/1.1 400 Bad Request\r\n", "INFO line 1 is not key:value"),
        ("connected_clients:7\r\nthis line has no separator\r\n", "INFO line 2 is not key:value"),
    ],
)
def test_malformed_info_is_a_parse_error(text: str, message: str) -> None:
    with pytest.raises(CollectorError) as raised:
        parse_info(text)
    assert raised.value.reason is Reason.PARSE
    assert message in raised.value.detail


def test_non_numeric_and_missing_fields_are_parse_errors() -> None:
    info = parse_info("connected_clients:many\r\nused_memory:1024\r\n")
    with pytest.raises(CollectorError, match="connected_clients is not a number") as raised:
        info.number("connected_clients")
    assert raised.value.reason is Reason.PARSE
    with pytest.raises(CollectorError, match="INFO has no blocked_clients field"):
        info.number("blocked_clients")


def test_malformed_latencystats_and_cmdstat_are_parse_errors() -> None:
    broken_latency = parse_info("# Latencystats\r\nlatency_percentiles_usec_get:p50=fast\r\n")
    with pytest.raises(CollectorError, match="latencystats of get") as raised:
        command_latencies(broken_latency, ["get"])
    assert raised.value.reason is Reason.PARSE
    with pytest.raises(CollectorError, match="not a list of name=value"):
        busiest_commands(parse_info("# Commandstats\r\ncmdstat_get:calls\r\n"), 10)


# The tail of Redis 7.0's INFO all on a full noeviction server, and Redis 6.0's, which has no
# errorstats section.
ERRORSTATS_7_0 = """\
# Stats\r
evicted_keys:0\r
total_error_replies:1971\r
\r
# Errorstats\r
errorstat_ERR:count=3\r
errorstat_OOM:count=1968\r
\r
# Cluster\r
cluster_enabled:0\r
"""
STATS_6_0 = """\
# Stats\r
evicted_keys:0\r
\r
# Cluster\r
cluster_enabled:0\r
"""


def test_oom_refusals_from_errorstats_and_absent_before_redis_6_2() -> None:
    assert oom_errors(parse_info(ERRORSTATS_7_0)) == 1968
    # The section lists only errors that happened: none refused yet is 0, not unknown.
    assert oom_errors(parse_info("# Errorstats\r\nerrorstat_ERR:count=3\r\n")) == 0
    assert oom_errors(parse_info("# Stats\r\nevicted_keys:0\r\n\r\n# Errorstats\r\n")) == 0
    assert oom_errors(parse_info(STATS_6_0)) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [("count=many", "errorstat_OOM: 'many' is not a number"), ("calls=3", "errorstat_OOM has no count")],
)
def test_malformed_oom_errorstat_is_a_parse_error(value: str, message: str) -> None:
    with pytest.raises(CollectorError, match=message) as raised:
        oom_errors(parse_info(f"# Errorstats\r\nerrorstat_OOM:{value}\r\n"))
    assert raised.value.reason is Reason.PARSE


def test_subscribers_counted_from_client_list() -> None:
    client_list = (
        "id=8 addr=127.0.0.1:1 fd=7 name= flags=P db=0 sub=2 psub=0 ssub=0 cmd=subscribe\n"
        "id=9 addr=127.0.0.1:2 fd=8 name= flags=P db=0 sub=0 psub=1 ssub=0 cmd=psubscribe\n"
        "id=10 addr=127.0.0.1:3 fd=9 name=app flags=N db=0 sub=0 psub=0 ssub=0 cmd=get\n"
    )
    assert count_subscribers(client_list) == 2
    assert count_subscribers("") == 0
    with pytest.raises(CollectorError, match="non-numeric subscription count"):
        count_subscribers("id=8 sub=two psub=0\n")


def test_slowlog_entries_keep_the_command_and_key_truncated() -> None:
    long_key = "k" * 100
    reply = [
        [17, 1700000000, 52000, [b"HSET", long_key.encode(), b"field", b"secret-value"], b"127.0.0.1:1", b""]
    ]
    (entry,) = slowlog_entries(reply)
    assert entry == {
        "id": 17,
        "started_at": 1700000000,
        "duration_seconds": 0.052,
        "command": "HSET " + "k" * 37 + "... (+2 more arguments)",
    }
    assert "secret-value" not in str(entry)
    (control,) = slowlog_entries([[1, 2, 3, [b"GET", b"a\x00b\nc"]]])
    assert control["command"] == "GET a?b?c"


def test_slowlog_auth_of_redis_5_loses_its_password() -> None:
    """Redis 5 logs a slow AUTH with its argument (6.0 leaves AUTH out of the slow log), which no
    server here can show: the reply is written as Redis 5 sends it."""
    reply = [
        [4, 1700000001, 15000, [b"auth", b"app-pass-42"], b"10.0.0.9:5", b""],
        [3, 1700000000, 12000, [b"AUTH", b"app-pass-42"], b"10.0.0.9:4", b""],
    ]
    entries = slowlog_entries(reply)
    assert [entry["command"] for entry in entries] == ["auth (+1 more arguments)", "AUTH (+1 more arguments)"]
    assert "app-pass-42" not in str(entries)


@pytest.mark.parametrize("reply", [b"not a list", [[1, 2, 3]], [["1", 2, 3, []]], [[1, 2, 3, b"GET"]]])
def test_malformed_slowlog_is_a_parse_error(reply: object) -> None:
    with pytest.raises(CollectorError) as raised:
        slowlog_entries(reply)
    assert raised.value.reason is Reason.PARSE


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(first=5.0, maximum=30.0)
    assert backoff.remaining(100.0) == 0.0
    assert [backoff.failed(100.0) for _ in range(5)] == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert backoff.remaining(110.0) == 20.0
    # Within half a first delay of the due time counts as due: cycles do not start to the millisecond.
    assert backoff.remaining(127.6) == 0.0
    for _ in range(2000):  # weeks of failures must not overflow the delay
        backoff.failed(100.0)
    assert backoff.remaining(100.0) == 30.0
    backoff.succeeded()
    assert backoff.remaining(100.0) == 0.0
    assert backoff.failed(100.0) == 5.0


def test_address_for_logs_has_no_password() -> None:
    entry = RedisTarget(name="cache", url=Secret("redis://monitor:pa55-word@10.0.0.5:6380/2"))
    collector = build(Config(interval=5), entry)
    assert collector.describe() == "redis cache at monitor@10.0.0.5:6380"
    connection, address = open_connection(
        RedisTarget(name="tls", url=Secret("rediss://cache.example:6390")), timeout=1.0
    )
    assert address == "cache.example:6390 (TLS)"
    assert connection.db == 0
    assert open_connection(RedisTarget(name="sock", url=Secret("unix:///run/redis.sock")), 1.0)[1] == (
        "unix:/run/redis.sock"
    )


def test_password_file_overrides_the_url_password() -> None:
    entry = RedisTarget(name="cache", url=Secret("redis://:from-url@127.0.0.1:6379"), password=Secret("file"))
    connection, _ = open_connection(entry, timeout=1.0)
    assert connection.password == "file"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:secret-pass@127.0.0.1:6379", "redis://, rediss://, unix://"),
        ("redis://:secret-pass@127.0.0.1:6379/0?no_such_option=1", "no_such_option"),
    ],
)
def test_unusable_url_is_a_config_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        build(Config(), RedisTarget(name="cache", url=Secret(url)))
    assert "secret-pass" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret/pass@127.0.0.1:6379/0",
        "redis://tierwatch:secret?pass@127.0.0.1:6379/0",
        "redis://:secret#pass@127.0.0.1:6379/0",
        "rediss://:2604#pass@127.0.0.1:6379/0",  # was read as a connection to port 2604, named in logs
        "unix://:secret/pass@/run/redis.sock",
    ],
)
def test_password_cut_short_by_an_unencoded_character_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ConfigError, match="percent-encode") as raised:
        build(Config(), RedisTarget(name="cache", url=Secret(url)))
    assert "secret" not in str(raised.value)
    assert "2604" not in str(raised.value)


def test_percent_encoded_password_and_a_socket_path_holding_an_at_sign() -> None:
    encoded = RedisTarget(name="cache", url=Secret("redis://:secret%2Fpass%23x@127.0.0.1:6379/0"))
    assert open_connection(encoded, 1.0)[0].password == "secret/pass#x"
    socket_url = Secret("unix://:pw@/run/redis@main/redis.sock")
    connection, address = open_connection(RedisTarget(name="sock", url=socket_url), 1.0)
    assert (address, connection.password) == ("unix:/run/redis@main/redis.sock", "pw")

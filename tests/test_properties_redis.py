"""Bad input for the Redis collector: INFO text, CONFIG GET, SLOWLOG and CLIENT LIST replies.

The parsers get arbitrary text and reply shapes; the collector itself runs whole cycles over a stand-in
connection that answers with generated replies, since no real Redis sends a negative client count, a
"nan" counter or an integer beyond 64 bits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import redis.exceptions as errors
from hypothesis import event, given
from hypothesis import strategies as st
from redis.connection import AbstractConnection

from collectors.base import CollectorError
from collectors.redis import CONFIG_KEYS, RedisCollector
from collectors.redis.info import (
    busiest_commands,
    command_latencies,
    count_subscribers,
    parse_info,
    parse_pairs,
    slowlog_entries,
)
from collectors.redis.metrics import REDIS_METRICS
from tests.test_properties_base import (
    FAST,
    NUMBERS,
    ODD_INTS,
    THOROUGH,
    check_cycle,
    check_ratio_sets,
    mostly,
)

SHARES = {"redis_keyspace_hit_ratio", "redis_main_thread_cpu_utilization_ratio"}
NOT_SHARES = {
    # CONFIG SET maxclients below the clients already connected leaves them connected.
    "redis_clients_used_ratio": "connected clients can exceed a lowered maxclients",
    # Eviction runs after the write that crossed maxmemory; with noeviction writes fail only then.
    "redis_memory_used_ratio": "used memory can exceed maxmemory",
    "redis_memory_fragmentation_ratio": "RSS / used memory: above 1 is normal, below 1 means swapping",
}

Reply = object
Command = tuple[str | int, ...]
# Counters the collector turns into rates and the hit ratio.
COUNTERS = (
    "rejected_connections",
    "evicted_keys",
    "keyspace_hits",
    "keyspace_misses",
    "used_cpu_sys",
    "used_cpu_user",
    "used_cpu_sys_main_thread",
    "used_cpu_user_main_thread",
)
OOM_COUNTER = "errorstat_OOM"  # in the errorstats section (Redis 6.2 and later) as count=N
# Field names the collector reads; the rest of an INFO page is only carried along.
NUMERIC_FIELDS = (
    *COUNTERS,
    "connected_clients",
    "blocked_clients",
    "maxclients",
    "used_memory",
    "maxmemory",
    "mem_fragmentation_ratio",
    "expired_keys",
    "total_commands_processed",
    "connected_slaves",
    "master_last_io_seconds_ago",
    "rdb_bgsave_in_progress",
    "aof_rewrite_in_progress",
    "pubsub_channels",
    "pubsub_patterns",
    "pubsubshard_channels",
    "pubsub_clients",
    "client_recent_max_output_buffer",
)
TEXT_FIELDS = {
    "role": ("master", "slave", ""),
    "run_id": ("a" * 40, "b" * 40),
    "master_link_status": ("up", "down"),
    "rdb_last_bgsave_status": ("ok", "err"),
    "maxmemory_policy": ("noeviction", "allkeys-lru"),
}
COMMANDS = ("get", "set", "client|list", "info")

# A number of any size or sign, or what Python's float() also takes: nan, inf, 1_000, padded digits.
number_text = NUMBERS.map(str) | st.sampled_from(["nan", "-inf", "infinity", "1_000", " 7 ", "1e400", "-0"])
garbage = st.text(max_size=8)
int64 = st.integers(-(2**63), 2**63 - 1)
integers = int64 | ODD_INTS
reply_values = st.recursive(
    st.none() | st.integers() | st.binary(max_size=10) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3),
    max_leaves=6,
)


def pairs_text(names: list[str]) -> st.SearchStrategy[str]:
    """A cmdstat or latencystats value: ``name=value`` pairs holding odd numbers."""
    pair = st.tuples(st.sampled_from(names), number_text).map("=".join)
    return st.lists(pair, min_size=1, max_size=4).map(",".join)


cmdstat_text = pairs_text(["calls", "usec", "usec_per_call"])
latencystats_text = pairs_text(["p50", "p99", "p99.9", "pnan", "p-5", "p1e400"])


def slowlog_entries_of(numbers: st.SearchStrategy[int]) -> st.SearchStrategy[list[object]]:
    """Entries of the documented shape (id, time, duration, arguments) with any arguments."""
    arguments = st.lists(st.binary(max_size=50) | st.text(max_size=50), max_size=4)
    return st.tuples(numbers, numbers, numbers, arguments).map(list)


slowlog_entry = slowlog_entries_of(int64)
# Integers beyond 64 bits in the right places, or the wrong shape altogether.
odd_slowlog_entry = slowlog_entries_of(integers) | st.lists(integers | reply_values, max_size=5)

# At most one thing per cycle is malformed beyond odd numbers: one is enough to end the cycle.
FAULTS = ("none", "missing field", "garbage field", "garbage line", "garbage pairs", "odd reply")


@st.composite
def info_pages(draw: st.DrawFn, fault: str = "none", counters: Mapping[str, str] | None = None) -> str:
    """An INFO page with every field the collector reads, holding odd numbers (``counters`` where
    given), with ``fault``."""
    spoilt = draw(st.sampled_from(NUMERIC_FIELDS))
    lines = [
        "# Server",
        f"role:{draw(st.sampled_from(TEXT_FIELDS['role']))}",
        # a restart now and then, which must not mix the counters of two runs
        f"run_id:{draw(mostly(st.just('a' * 40), st.just('b' * 40)))}",
    ]
    for field in NUMERIC_FIELDS:
        if fault == "missing field" and field == spoilt:
            continue
        if fault == "garbage field" and field == spoilt:
            value = draw(garbage)
        else:
            value = (counters or {}).get(field) or draw(number_text)
        lines.append(f"{field}:{value}")
    for field, values in TEXT_FIELDS.items():
        if field not in ("role", "run_id") and draw(st.booleans()):
            lines.append(f"{field}:{draw(st.sampled_from(values))}")
    if draw(st.booleans()):  # Redis 6.2 and later; an empty section until an error happens
        lines.append("# Errorstats")
        refused = (counters or {}).get(OOM_COUNTER) or draw(number_text)
        if draw(st.booleans()):
            lines.append(f"{OOM_COUNTER}:{draw(mostly(st.just(f'count={refused}'), garbage))}")
    commands = draw(st.lists(st.sampled_from(COMMANDS), max_size=3, unique=True))
    lines.append("# Commandstats")
    lines += [f"cmdstat_{command}:{draw(cmdstat_text)}" for command in commands]
    lines.append("# Latencystats")
    lines += [f"latency_percentiles_usec_{command}:{draw(latencystats_text)}" for command in commands]
    if fault == "garbage pairs":
        lines.append(f"latency_percentiles_usec_{draw(st.sampled_from(COMMANDS))}:{draw(garbage)}")
    if fault == "garbage line":
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=20)))
    return "\r\n".join(lines)


class StandInConnection:
    """Answers each command of a round trip with the reply prepared for it, as redis-py's connection
    returns them: bytes for bulk strings, ints, lists, and ``ResponseError`` for an error reply."""

    def __init__(self) -> None:
        self.replies: dict[Command, Reply] = {}
        self._pending: Iterator[Reply] = iter(())
        self.is_connected = True

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def pack_commands(self, commands: Sequence[Command]) -> Sequence[Command]:
        return commands

    def send_packed_command(self, commands: Sequence[Command]) -> None:
        self._pending = iter([self.replies[tuple(command)] for command in commands])

    def read_response(self) -> Reply:
        reply = next(self._pending)
        if isinstance(reply, errors.ResponseError):
            raise reply
        return reply


@st.composite
def cycle_replies(draw: st.DrawFn, counters: Mapping[str, str] | None = None) -> dict[Command, Reply]:
    """The replies of one round trip: the usual shapes holding odd numbers; with fault "odd reply", one
    command answered with an error reply (a command the ACL does not permit) or a shape no Redis sends."""
    fault = draw(st.sampled_from(FAULTS))
    usual: dict[Command, st.SearchStrategy[Reply]] = {
        ("INFO", "all"): info_pages(fault, counters).map(str.encode),
        ("SLOWLOG", "LEN"): int64,
        ("SLOWLOG", "GET", 5): st.lists(slowlog_entry, max_size=3),
        ("CLIENT", "LIST", "TYPE", "pubsub"): st.just(b"id=1 sub=1 psub=0\nid=2 sub=0 psub=0"),
        **{
            ("CONFIG", "GET", key): (
                st.sampled_from(["noeviction", "allkeys-lru"]) if key == "maxmemory-policy" else number_text
            ).map(lambda value, key=key: [key.encode(), value.encode()])
            for key in CONFIG_KEYS
        },
    }
    denied = errors.ResponseError("NOPERM this user has no permissions to run this command")
    odd = draw(st.sampled_from(sorted(usual))) if fault == "odd reply" else None
    odd_reply = (
        st.just(denied) | reply_values | st.binary(max_size=40) | st.lists(odd_slowlog_entry, max_size=2)
    )
    return {command: draw(odd_reply if command == odd else shape) for command, shape in usual.items()}


def advance(total: float, step: float) -> float:
    """A counter after one more cycle: grown by ``step``, or ``step`` itself (as after a restart) where
    the sum is beyond a float."""
    try:
        return total + step
    except OverflowError:
        return step


@st.composite
def rounds(draw: st.DrawFn) -> list[tuple[dict[Command, Reply], float]]:
    """Consecutive cycles (replies, seconds since the previous one) whose counters mostly grow, so
    that rates and the hit ratio are computed, by steps that are now and then odd numbers."""
    totals: dict[str, float] = dict.fromkeys((*COUNTERS, OOM_COUNTER), 0)
    cycles = []
    for _ in range(draw(st.integers(1, 3))):
        for counter, total in totals.items():
            totals[counter] = advance(total, draw(mostly(st.integers(0, 10**6) | st.floats(0, 1e6), NUMBERS)))
        replies = draw(cycle_replies({counter: str(total) for counter, total in totals.items()}))
        cycles.append((replies, draw(mostly(st.floats(0.5, 10), st.floats(0, 10)))))
    return cycles


def test_every_ratio_series_is_decided() -> None:
    check_ratio_sets(REDIS_METRICS, SHARES, NOT_SHARES)


@THOROUGH
@given(text=st.text() | info_pages())
def test_parse_info_raises_only_collector_error(text: str) -> None:
    try:
        info = parse_info(text)
    except CollectorError:
        return
    for key in info.fields:
        try:
            info.optional(key)
            info.pairs(key)
        except CollectorError:
            pass


@THOROUGH
@given(page=info_pages(), limit=st.integers(0, 12))
def test_command_parsers_raise_only_collector_error(page: str, limit: int) -> None:
    try:
        info = parse_info(page)
        commands = busiest_commands(info, limit)
        latencies = command_latencies(info, commands)
    except CollectorError:
        return
    assert len(commands) <= limit
    assert all(command in commands for command, _ in latencies)


@FAST
@given(value=st.text(), where=st.text(max_size=5))
def test_parse_pairs_raises_only_collector_error(value: str, where: str) -> None:
    with contextlib.suppress(CollectorError):
        parse_pairs(value, where)


@THOROUGH
@given(
    text=st.text()
    | st.lists(
        st.lists(
            st.sampled_from(["sub", "psub", "ssub", "id", "name"]).flatmap(
                lambda key: number_text.map(lambda value: f"{key}={value}")
            ),
            max_size=4,
        ).map(" ".join),
        max_size=4,
    ).map("\n".join)
)
def test_client_list_counts_or_raises_collector_error(text: str) -> None:
    try:
        count = count_subscribers(text)
    except CollectorError:
        return
    assert 0 <= count <= len(text.splitlines())


@THOROUGH
@given(
    reply=st.lists(slowlog_entries_of(ODD_INTS | int64), max_size=4)
    | st.lists(slowlog_entry | odd_slowlog_entry, max_size=4)
    | reply_values
)
def test_slowlog_entries_raise_only_collector_error(reply: object) -> None:
    try:
        entries = slowlog_entries(reply)
    except CollectorError:
        return
    for entry in entries:
        assert isinstance(entry["command"], str)
        assert entry["command"].isprintable()


@THOROUGH
@given(cycles=rounds())
def test_collector_cycles_emit_finite_values_and_shares_within_0_and_1(
    cycles: list[tuple[dict[Command, Reply], float]],
) -> None:
    connection = StandInConnection()
    now = [0.0]
    collector = RedisCollector(
        "cache",
        cast(AbstractConnection, connection),
        address="stand-in",
        first_backoff=0.0,
        clock=lambda: now[0],
        wall_clock=lambda: 1_700_000_000.0 + now[0],
    )
    for replies, gap in cycles:
        connection.replies = replies
        now[0] += gap
        sample = check_cycle(collector.collect, SHARES, error_chars=25)
        if sample is not None:
            event(f"sample with {len(sample.values) // 10 * 10}+ series")

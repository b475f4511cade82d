"""Cache tier: one Redis server's clients, memory, hit ratio, main-thread CPU, latency, replication,
persistence and pub/sub.

Each cycle is one round trip on the target's one connection: ``INFO all`` (on Redis 7 it includes
latencystats, which the default INFO leaves out), ``SLOWLOG LEN``, ``SLOWLOG GET`` and, for those of
maxclients, maxmemory and maxmemory-policy that the last INFO did not report (Redis 6.0 leaves out
maxclients; 6.2 and later report all three), ``CONFIG GET`` of each, by name: a wildcard would return
passwords. The first cycle asks INFO only, so a server that reports the three never gets a CONFIG
command, and its least-privilege user needs no ``config|get``, which would let it read every setting.
A second round trip, ``CLIENT LIST`` of pub/sub clients, happens only on Redis before 7.4 (which
added ``pubsub_clients`` to INFO), only while something is subscribed, and for many subscribers only
now and then: Redis writes one line per subscriber on its only thread (9.5 ms and 2 MB for 8000).

Rates and the hit ratio come from counter deltas keyed by the server's run id, so the first cycle
after a restart leaves them out instead of mixing two servers' counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import redis.exceptions as errors
from redis.connection import AbstractConnection

from agent.config.model import Config, RedisTarget
from collectors.backoff import Backoff
from collectors.base import Collector, CollectorError, Reason, Sample, SampleBuilder
from collectors.deltas import Deltas
from collectors.redis.info import (
    Info,
    busiest_commands,
    command_latencies,
    count_subscribers,
    oom_errors,
    parse_info,
    slowlog_entries,
)
from collectors.redis.metrics import REDIS_METRICS, REDIS_READINGS
from collectors.redis.session import Command, Session, open_connection, reason_of

log = logging.getLogger("tierwatch.redis")
Clock = Callable[[], float]
CONFIG_KEYS = ("maxclients", "maxmemory", "maxmemory-policy")
# Where INFO reports the same settings: CONFIG GET is sent only for those INFO lacks.
INFO_FIELDS = {"maxclients": "maxclients", "maxmemory": "maxmemory", "maxmemory-policy": "maxmemory_policy"}
SLOWLOG_ENTRIES = 5
LATENCY_COMMANDS = 10
# A count from CLIENT LIST is reused for one cycle per this many subscribers it found.
SUBSCRIBERS_PER_CYCLE = 100
MAX_BACKOFF_SECONDS = 30.0


def _text(reply: object, what: str) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    raise CollectorError(Reason.PARSE, f"{what} reply is a {type(reply).__name__}, not text")


def _config_pairs(reply: object) -> dict[str, str]:
    if not isinstance(reply, list) or len(reply) % 2:
        raise CollectorError(Reason.PARSE, "CONFIG GET reply is not a list of name, value pairs")
    items = [_text(item, "CONFIG GET") for item in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


def _number(settings: dict[str, str], key: str) -> float | None:
    raw = settings.get(key)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise CollectorError(Reason.PARSE, f"{key} is not a number: {raw[:40]!r}") from None


class RedisCollector(Collector):
    name = "redis"
    tier = "cache"
    metrics = REDIS_METRICS
    readings = REDIS_READINGS

    def __init__(
        self,
        target: str,
        connection: AbstractConnection,
        *,
        address: str,
        first_backoff: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        super().__init__(target)
        self._address = address
        self._session = Session(connection, clock, Backoff(first_backoff, MAX_BACKOFF_SECONDS))
        self._clock = clock
        self._wall_clock = wall_clock
        self._deltas = Deltas()
        self._config_keys: tuple[str, ...] = ()  # asked with CONFIG GET: what the last INFO lacked
        self._config_available = True
        self._reported_unavailable: set[str] = set()
        self._subscribers = 0  # the last count CLIENT LIST gave
        self._subscribers_reuses = 0  # cycles it may still stand for

    def describe(self) -> str:
        return f"redis {self.target} at {self._address}"

    def close(self) -> None:
        self._session.close()

    def collect(self) -> Sample:
        commands: list[Command] = [("INFO", "all"), ("SLOWLOG", "LEN"), ("SLOWLOG", "GET", SLOWLOG_ENTRIES)]
        commands += [("CONFIG", "GET", key) for key in self._config_keys]
        info_reply, slowlog_length, slowlog, *config = self._session.execute(commands)
        if isinstance(info_reply, errors.ResponseError):
            raise CollectorError(reason_of(info_reply), f"INFO failed: {info_reply}")
        info = parse_info(_text(info_reply, "INFO"))
        settings = self._settings(info, config)
        out = self.builder()
        elapsed = self._deltas.begin(self._clock())
        run = info.text("run_id") or ""
        self._clients(out, info, settings, run, elapsed)
        self._memory(out, info, settings, run, elapsed)
        self._throughput(out, info, run)
        self._cpu(out, info, run, elapsed)
        self._latency(out, info, slowlog_length, slowlog)
        self._replication(out, info)
        self._persistence(out, info)
        self._pubsub(out, info)
        return out.build(self.name, self.target, self._wall_clock())

    def _unavailable(self, reply: object, what: str, consequence: str) -> bool:
        """True for an error reply to an optional command, which is logged once per collector."""
        if not isinstance(reply, errors.ResponseError):
            return False
        if what not in self._reported_unavailable:
            self._reported_unavailable.add(what)
            log.info("redis %s: %s is not available (%s); %s", self.target, what, reply, consequence)
        return True

    def _settings(self, info: Info, config_replies: Sequence[object]) -> dict[str, str]:
        settings = {
            key: value for key, field in INFO_FIELDS.items() if (value := info.text(field)) is not None
        }
        for reply in config_replies:
            if self._unavailable(reply, "CONFIG GET", "maxclients and maxmemory are taken from INFO"):
                self._config_available = False
                break
            settings.update(_config_pairs(reply))
        lacking = tuple(key for key in CONFIG_KEYS if INFO_FIELDS[key] not in info.fields)
        self._config_keys = lacking if self._config_available else ()
        return settings

    def _per_second(
        self, out: SampleBuilder, name: str, key: tuple[str, str], total: float, elapsed: float | None
    ) -> None:
        increase = self._deltas.delta(key, total)
        if increase is not None and elapsed:
            out.set(name, increase / elapsed)

    def _clients(
        self, out: SampleBuilder, info: Info, settings: dict[str, str], run: str, elapsed: float | None
    ) -> None:
        connected = info.number("connected_clients")
        out.set("redis_connected_clients", connected)
        out.set("redis_blocked_clients", info.number("blocked_clients"))
        rejected = info.number("rejected_connections")
        out.set("redis_rejected_connections_total", rejected)
        self._per_second(out, "redis_rejected_connections_per_second", (run, "rejected"), rejected, elapsed)
        maxclients = _number(settings, "maxclients")
        if maxclients is not None:
            out.set("redis_maxclients", maxclients)
            out.ratio("redis_clients_used_ratio", connected, maxclients)

    def _memory(
        self, out: SampleBuilder, info: Info, settings: dict[str, str], run: str, elapsed: float | None
    ) -> None:
        used = info.number("used_memory")
        out.set("redis_memory_used_bytes", used)
        maxmemory = _number(settings, "maxmemory")
        if maxmemory is not None:
            out.set("redis_memory_max_bytes", maxmemory)
            out.ratio("redis_memory_used_ratio", used, maxmemory)  # maxmemory 0 is unlimited: no ratio
        fragmentation = info.optional("mem_fragmentation_ratio")
        if fragmentation is not None:
            out.set("redis_memory_fragmentation_ratio", fragmentation)
        evicted = info.number("evicted_keys")
        out.set("redis_evicted_keys_total", evicted)
        self._per_second(out, "redis_evicted_keys_per_second", (run, "evicted"), evicted, elapsed)
        refused = oom_errors(info)
        if refused is not None:
            # Under noeviction (or a volatile-* policy with nothing left to evict) a full Redis evicts
            # nothing: it refuses writes instead.
            out.set("redis_oom_rejected_commands_total", refused)
            self._per_second(out, "redis_oom_rejected_commands_per_second", (run, "oom"), refused, elapsed)
        out.set("redis_expired_keys_total", info.number("expired_keys"))
        if "maxmemory-policy" in settings:
            out.detail("maxmemory_policy", settings["maxmemory-policy"])

    def _throughput(self, out: SampleBuilder, info: Info, run: str) -> None:
        out.set("redis_commands_processed_total", info.number("total_commands_processed"))
        hits, misses = info.number("keyspace_hits"), info.number("keyspace_misses")
        out.set("redis_keyspace_hits_total", hits)
        out.set("redis_keyspace_misses_total", misses)
        hits_in_cycle = self._deltas.delta((run, "keyspace_hits"), hits)
        misses_in_cycle = self._deltas.delta((run, "keyspace_misses"), misses)
        if hits_in_cycle is not None and misses_in_cycle is not None:
            out.ratio("redis_keyspace_hit_ratio", hits_in_cycle, hits_in_cycle + misses_in_cycle)

    def _cpu(self, out: SampleBuilder, info: Info, run: str, elapsed: float | None) -> None:
        system, user = info.optional("used_cpu_sys_main_thread"), info.optional("used_cpu_user_main_thread")
        if system is None or user is None:
            # Before Redis 6.2 only the whole process is reported; its background threads do little.
            system, user = info.number("used_cpu_sys"), info.number("used_cpu_user")
        seconds = system + user
        out.set("redis_main_thread_cpu_seconds_total", seconds)
        used = self._deltas.delta((run, "cpu"), seconds)
        if used is not None and elapsed:
            # One thread cannot exceed one core; more is jitter between the two clocks.
            out.set("redis_main_thread_cpu_utilization_ratio", min(1.0, used / elapsed))

    def _latency(self, out: SampleBuilder, info: Info, slowlog_length: object, slowlog: object) -> None:
        if not self._unavailable(slowlog_length, "SLOWLOG LEN", "the slow-log length is left out"):
            if not isinstance(slowlog_length, int):
                raise CollectorError(Reason.PARSE, "SLOWLOG LEN reply is not an integer")
            out.set("redis_slowlog_length", slowlog_length)
        if not self._unavailable(slowlog, "SLOWLOG GET", "slow-log entries are left out of the evidence"):
            out.detail("slowlog", slowlog_entries(slowlog))
        commands = busiest_commands(info, LATENCY_COMMANDS)
        for (command, percentile), seconds in command_latencies(info, commands).items():
            out.set("redis_command_latency_seconds", seconds, command, percentile)

    def _replication(self, out: SampleBuilder, info: Info) -> None:
        role = info.text("role")
        if role is None:
            raise CollectorError(Reason.PARSE, "INFO has no role field")
        out.set("redis_replication_is_master", 1 if role == "master" else 0)
        out.set("redis_connected_replicas", info.number("connected_slaves"))
        if role != "slave":
            return
        link = info.text("master_link_status")
        if link is not None:
            out.set("redis_replication_master_link_up", 1 if link == "up" else 0)
        last_io = info.optional("master_last_io_seconds_ago")
        if last_io is not None and last_io >= 0:  # -1 while the link is down
            out.set("redis_replication_master_last_io_age_seconds", last_io)

    def _persistence(self, out: SampleBuilder, info: Info) -> None:
        out.set("redis_rdb_bgsave_in_progress", info.number("rdb_bgsave_in_progress"))
        out.set("redis_aof_rewrite_in_progress", info.number("aof_rewrite_in_progress"))
        status = info.text("rdb_last_bgsave_status")
        if status is not None:
            out.set("redis_rdb_last_bgsave_ok", 1 if status == "ok" else 0)

    def _pubsub(self, out: SampleBuilder, info: Info) -> None:
        channels, patterns = info.number("pubsub_channels"), info.number("pubsub_patterns")
        out.set("redis_pubsub_channels", channels)
        out.set("redis_pubsub_patterns", patterns)
        largest_buffer = info.optional("client_recent_max_output_buffer")
        if largest_buffer is not None:
            out.set("redis_client_max_output_buffer_bytes", largest_buffer)
        clients = info.optional("pubsub_clients")  # Redis 7.4 and later
        if clients is None and not (channels or patterns or info.optional("pubsubshard_channels")):
            clients = self._subscribers_reuses = 0  # no channel or pattern has a subscriber
        if clients is None:
            clients = self._count_subscribers()
        if clients is not None:
            out.set("redis_pubsub_clients", clients)

    def _count_subscribers(self) -> int | None:
        if self._subscribers_reuses:
            self._subscribers_reuses -= 1
            return self._subscribers
        (reply,) = self._session.execute([("CLIENT", "LIST", "TYPE", "pubsub")])
        if self._unavailable(reply, "CLIENT LIST", "pub/sub clients are left out"):
            return None
        self._subscribers = count_subscribers(_text(reply, "CLIENT LIST"))
        self._subscribers_reuses = self._subscribers // SUBSCRIBERS_PER_CYCLE
        return self._subscribers


def build(config: Config, entry: RedisTarget) -> RedisCollector:
    # Connecting can wait up to four times in a row (connect, AUTH, CLIENT SETNAME, the replies); all
    # four must fit in one cycle so that the collector, not the scheduler, names a slow target.
    connection, address = open_connection(entry, config.cycle_timeout / 4)
    return RedisCollector(entry.name, connection, address=address, first_backoff=config.interval)

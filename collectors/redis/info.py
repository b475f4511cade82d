"""Parsers for what Redis answers: INFO text, CLIENT LIST text and SLOWLOG GET entries.

Anything that does not have the documented shape raises ``CollectorError(Reason.PARSE)`` naming the
place; a reply from something that is not Redis must never turn into numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from collectors.base import CollectorError, Reason

CMDSTAT_SECTION, CMDSTAT_PREFIX = "Commandstats", "cmdstat_"
LATENCY_SECTION, LATENCY_PREFIX = "Latencystats", "latency_percentiles_usec_"
ERRORSTAT_SECTION, OOM_ERRORSTAT = "Errorstats", "errorstat_OOM"
# Slow-log arguments can hold user data; evidence needs the command and its key, not the values.
SLOWLOG_TEXT_LIMIT = 40
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _parse_error(detail: str) -> CollectorError:
    return CollectorError(Reason.PARSE, detail)


@dataclass(frozen=True, slots=True)
class Info:
    """The ``key:value`` fields of all INFO sections (keys are unique across sections), and the same
    fields by section ("Commandstats": {"cmdstat_get": ...}), for what only one section holds."""

    fields: Mapping[str, str]
    sections: Mapping[str, Mapping[str, str]]

    def text(self, key: str) -> str | None:
        return self.fields.get(key)

    def number(self, key: str) -> float:
        value = self.optional(key)
        if value is None:
            raise _parse_error(f"INFO has no {key} field")
        return value

    def optional(self, key: str) -> float | None:
        """The field as a number, None when this server version does not report it."""
        raw = self.fields.get(key)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise _parse_error(f"INFO field {key} is not a number: {raw[:40]!r}") from None

    def pairs(self, key: str) -> dict[str, str]:
        return parse_pairs(self.fields[key], key)

    def with_prefix(self, section: str, prefix: str) -> dict[str, str]:
        """``{rest of the key: value}`` of the fields of ``section`` whose key starts with ``prefix``."""
        fields = self.sections.get(section, {})
        return {key[len(prefix) :]: value for key, value in fields.items() if key.startswith(prefix)}


def parse_info(text: str) -> Info:
    # Runs on every cycle over some 200 lines: plain indexing where a method call would do the same.
    fields: dict[str, str] = {}
    sections: dict[str, dict[str, str]] = {}
    section = sections.setdefault("", {})  # fields before the first header, which Redis never sends
    for number, line in enumerate(text.splitlines(), start=1):
        if not line:
            continue
        if line[0] == "#":  # "# Commandstats"
            section = sections.setdefault(line[1:].strip(), {})
            continue
        key, colon, value = line.partition(":")
        if not colon or not key or " " in key:
            raise _parse_error(f"INFO line {number} is not key:value: {line[:40]!r}")
        fields[key] = section[key] = value
    if not fields:
        raise _parse_error("INFO reply is empty")
    return Info(MappingProxyType(fields), MappingProxyType(sections))


def parse_pairs(value: str, where: str) -> dict[str, str]:
    """``a=1,b=2`` as used by cmdstat, latencystats and keyspace lines."""
    pairs: dict[str, str] = {}
    for item in value.split(","):
        key, equals, item_value = item.partition("=")
        if not equals or not key:
            raise _parse_error(f"INFO field {where} is not a list of name=value: {value[:40]!r}")
        pairs[key] = item_value
    return pairs


def _number(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise _parse_error(f"{where}: {value[:40]!r} is not a number") from None


def busiest_commands(info: Info, limit: int) -> list[str]:
    """The ``limit`` commands with the most calls since start, most called first."""
    calls = {
        command: _number(parse_pairs(value, CMDSTAT_PREFIX + command).get("calls", "0"), command)
        for command, value in info.with_prefix(CMDSTAT_SECTION, CMDSTAT_PREFIX).items()
    }
    return sorted(calls, key=lambda command: (-calls[command], command))[:limit]


def command_latencies(info: Info, commands: Sequence[str]) -> dict[tuple[str, str], float]:
    """``{(command, percentile): seconds}`` from INFO latencystats ("p99.9" as "99.9"), for those of
    ``commands`` it lists."""
    percentiles = info.with_prefix(LATENCY_SECTION, LATENCY_PREFIX)
    latencies: dict[tuple[str, str], float] = {}
    for command in commands:
        raw = percentiles.get(command)
        if raw is None:
            continue
        for name, usec in parse_pairs(raw, LATENCY_PREFIX + command).items():
            if not name.startswith("p"):
                raise _parse_error(f"latencystats of {command}: {name!r} is not a percentile")
            percentile = _number(name[1:], f"latencystats of {command}")
            latencies[(command, f"{percentile:g}")] = _number(usec, f"latencystats of {command}") / 1e6
    return latencies


def oom_errors(info: Info) -> float | None:
    """Commands refused with an OOM error (used memory over maxmemory) since start or CONFIG
    RESETSTAT; None before Redis 6.2, whose INFO has no errorstats section."""
    errorstats = info.sections.get(ERRORSTAT_SECTION)
    if errorstats is None:
        return None
    raw = errorstats.get(OOM_ERRORSTAT)
    if raw is None:
        return 0.0  # the section lists only the errors that happened
    count = parse_pairs(raw, OOM_ERRORSTAT).get("count")
    if count is None:
        raise _parse_error(f"INFO field {OOM_ERRORSTAT} has no count: {raw[:40]!r}")
    return _number(count, OOM_ERRORSTAT)


def count_subscribers(client_list: str) -> int:
    """Clients of a CLIENT LIST reply subscribed to at least one channel, pattern or shard channel."""
    count = 0
    for line in client_list.splitlines():
        if not line.strip():
            continue
        fields = dict(field.partition("=")[::2] for field in line.split())
        try:
            subscriptions = sum(int(fields.get(kind) or 0) for kind in ("sub", "psub", "ssub"))
        except ValueError:
            raise _parse_error(
                f"CLIENT LIST line has a non-numeric subscription count: {line[:40]!r}"
            ) from None
        count += subscriptions > 0
    return count


def _printable(raw: object, limit: int) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    text = "".join(char if char.isprintable() else "?" for char in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def slowlog_entries(reply: object) -> list[dict[str, object]]:
    """SLOWLOG GET entries as evidence: id, start time, duration and the command with its first argument."""
    if not isinstance(reply, list):
        raise _parse_error(f"SLOWLOG GET reply is a {type(reply).__name__}, not a list")
    entries = []
    for entry in reply:
        if not (
            isinstance(entry, list)
            and len(entry) >= 4
            # RESP integers are signed 64-bit; a longer one is not from Redis and overflows a float.
            and all(isinstance(field, int) and INT64_MIN <= field <= INT64_MAX for field in entry[:3])
            and isinstance(entry[3], list)
        ):
            raise _parse_error("SLOWLOG GET entry does not have the id, time, duration, arguments shape")
        entry_id, started_at, duration_usec, arguments = entry[:4]
        shown = [_printable(argument, SLOWLOG_TEXT_LIMIT) for argument in arguments[:2]]
        if shown and shown[0].lower() == "auth":
            del shown[1:]  # Redis before 6.0 logs AUTH with the password (6.0 and later never do)
        command = " ".join(shown)
        if len(arguments) > len(shown):
            command += f" (+{len(arguments) - len(shown)} more arguments)"
        entries.append(
            {
                "id": entry_id,
                "started_at": started_at,
                "duration_seconds": duration_usec / 1e6,
                "command": command,
            }
        )
    return entries

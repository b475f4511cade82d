"""Parsers for the /proc, /sys and cgroup files the host collector reads.

Each takes the file's text and returns plain numbers; malformed text raises ``CollectorError`` with
reason ``parse``, naming the file, and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from collectors.base import CollectorError, Reason

# /proc/stat cpu columns: user nice system idle iowait irq softirq steal (guest time is already in user).
IDLE, IOWAIT, COUNTED_COLUMNS = 3, 4, 8
# The kernel prints 64-bit numbers, signed or unsigned (a drifting vmstat gauge shows as nearly 2**64).
SMALLEST, LARGEST = -(2**63), 2**64 - 1


@dataclass(frozen=True, slots=True)
class CpuTicks:
    busy: int
    iowait: int
    total: int


@dataclass(frozen=True, slots=True)
class Stat:
    overall: CpuTicks
    cores: dict[str, CpuTicks]
    procs_running: int | None
    procs_blocked: int | None


@dataclass(frozen=True, slots=True)
class DiskCounters:
    ios: int
    io_wait_ms: int
    busy_ms: int


@dataclass(frozen=True, slots=True)
class NetCounters:
    receive_errors: int
    receive_drops: int
    transmit_errors: int
    transmit_drops: int


@dataclass(frozen=True, slots=True)
class Pressure:
    avg10_percent: float
    total_microseconds: int


@contextmanager
def parsing(source: str) -> Iterator[None]:
    """Turns any malformed-input exception into a parse error that names the file."""
    try:
        yield
    except (ValueError, IndexError, KeyError) as error:
        raise CollectorError(Reason.PARSE, f"{source}: {error}") from None


def integer(text: str) -> int:
    """A number the kernel wrote; longer digit strings are not from a kernel and overflow a float."""
    value = int(text)
    if not SMALLEST <= value <= LARGEST:
        raise ValueError(f"{text[:20]}... is not a 64-bit number")
    return value


def parse_stat(text: str) -> Stat:
    with parsing("stat"):
        overall: CpuTicks | None = None
        cores: dict[str, CpuTicks] = {}
        procs: dict[str, int] = {}
        for line in text.splitlines():
            fields = line.split()
            if not fields:
                continue
            if fields[0].startswith("cpu"):
                ticks = [integer(value) for value in fields[1 : 1 + COUNTED_COLUMNS]]
                if len(ticks) < IOWAIT + 1:
                    raise ValueError(f"{fields[0]} has {len(ticks)} columns")
                total = sum(ticks)
                idle_like = ticks[IDLE] + ticks[IOWAIT]
                times = CpuTicks(busy=total - idle_like, iowait=ticks[IOWAIT], total=total)
                if fields[0] == "cpu":
                    overall = times
                else:
                    cores[fields[0]] = times
            elif fields[0] in ("procs_running", "procs_blocked"):
                procs[fields[0]] = integer(fields[1])
        if overall is None:
            raise ValueError("no aggregate cpu line")
        return Stat(overall, cores, procs.get("procs_running"), procs.get("procs_blocked"))


def parse_loadavg(text: str) -> tuple[float, float, float]:
    with parsing("loadavg"):
        one, five, fifteen = (float(value) for value in text.split()[:3])
        return one, five, fifteen


def parse_meminfo(text: str) -> dict[str, int]:
    """Values in bytes (the file says kB, meaning KiB)."""
    with parsing("meminfo"):
        values = {}
        for line in text.splitlines():
            key, sep, rest = line.partition(":")
            if not sep:
                continue
            fields = rest.split()
            scale = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
            values[key.strip()] = integer(fields[0]) * scale
        return values


def parse_key_values(text: str, source: str) -> dict[str, int]:
    """``key value`` lines, as in /proc/vmstat and cgroup cpu.stat."""
    with parsing(source):
        values = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2:
                values[fields[0]] = integer(fields[1])
        return values


def parse_diskstats(text: str) -> dict[str, DiskCounters]:
    with parsing("diskstats"):
        disks = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 14:
                continue
            reads, read_ms, writes, write_ms = (integer(fields[i]) for i in (3, 6, 7, 10))
            disks[fields[2]] = DiskCounters(
                ios=reads + writes, io_wait_ms=read_ms + write_ms, busy_ms=integer(fields[12])
            )
        return disks


def parse_net_dev(text: str) -> dict[str, NetCounters]:
    with parsing("net/dev"):
        devices = {}
        for line in text.splitlines()[2:]:
            name, sep, rest = line.partition(":")
            if not sep:
                continue
            fields = [integer(value) for value in rest.split()]
            devices[name.strip()] = NetCounters(
                receive_errors=fields[2],
                receive_drops=fields[3],
                transmit_errors=fields[10],
                transmit_drops=fields[11],
            )
        return devices


def parse_pressure(text: str, source: str) -> dict[str, Pressure]:
    """``some``/``full`` lines of a /proc/pressure file."""
    with parsing(source):
        kinds = {}
        for line in text.splitlines():
            kind, *pairs = line.split()
            values = dict(pair.split("=", 1) for pair in pairs)
            kinds[kind] = Pressure(float(values["avg10"]), integer(values["total"]))
        return kinds


def parse_cgroup_v2_path(text: str) -> str | None:
    """The unified-hierarchy path from /proc/<pid>/cgroup (the ``0::`` line), or None on pure v1."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def parse_cgroup_v1_paths(text: str) -> dict[str, tuple[str, str]]:
    """Each cgroup v1 controller of /proc/<pid>/cgroup with its hierarchy and path: the line
    ``4:cpu,cpuacct:/kubepods/pod1`` gives ``cpu`` and ``cpuacct`` the hierarchy ``cpu,cpuacct``,
    which is also the name systemd and container runtimes mount it under."""
    paths = {}
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        hierarchy, sep, path = rest.partition(":")
        if sep and hierarchy:
            for controller in hierarchy.split(","):
                paths[controller] = (hierarchy, path.strip() or "/")
    return paths


def cores(quota: int, period: int) -> float:
    if period <= 0:
        raise ValueError(f"period {period} is not positive")
    return quota / period


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max ``quota period`` as cores; None when unlimited."""
    with parsing("cpu.max"):
        quota, period = text.split()[:2]
        return None if quota == "max" else cores(integer(quota), integer(period))


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 cpu.cfs_quota_us and cpu.cfs_period_us as cores; None when unlimited (quota -1)."""
    with parsing("cpu.cfs_quota_us, cpu.cfs_period_us"):
        quota, period = integer(quota_text.strip()), integer(period_text.strip())
        return None if quota < 0 else cores(quota, period)


def parse_integer(text: str, source: str) -> int:
    """A file holding one number, as cgroup v1 cpuacct.usage."""
    with parsing(source):
        return integer(text.strip())

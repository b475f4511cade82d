"""The CPU accounting of the cgroup a process runs in, from cgroup v2 or v1, in base units.

Both versions give the same reading, so that one piece of arithmetic turns either into series. Which
version a ``cpu.stat`` is, is told by its keys: v1's has ``throttled_time`` in nanoseconds where v2's
has ``usage_usec`` and ``throttled_usec``, and a v1 file read as v2's would otherwise pass for a
cgroup never throttled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from collectors.host import procfs
from collectors.host.files import read_text

PERIOD_KEYS = ("nr_periods", "nr_throttled")


@dataclass(frozen=True, slots=True)
class Throttling:
    periods: int
    throttled_periods: int
    throttled_seconds: float


@dataclass(frozen=True, slots=True)
class CgroupCpu:
    usage_seconds: float | None
    limit_cores: float | None
    # None without CFS bandwidth statistics: the cpu controller is not enabled for the cgroup
    throttling: Throttling | None


def throttling(stat: dict[str, int], throttled_key: str, per_second: float) -> Throttling | None:
    if not {*PERIOD_KEYS, throttled_key} <= stat.keys():
        return None
    return Throttling(stat["nr_periods"], stat["nr_throttled"], stat[throttled_key] / per_second)


def read_v2(membership: str, cgroupfs: Path) -> CgroupCpu | None:
    path = procfs.parse_cgroup_v2_path(membership)
    if path is None:
        return None
    directory = cgroupfs / path.lstrip("/")
    stat_text = read_text(directory / "cpu.stat")
    stat = procfs.parse_key_values(stat_text, "cpu.stat") if stat_text else {}
    if "usage_usec" not in stat:
        return None  # no v2 cgroup here, or cgroupfs points into a v1 hierarchy
    max_text = read_text(directory / "cpu.max")
    return CgroupCpu(
        usage_seconds=stat["usage_usec"] / 1e6,
        limit_cores=procfs.parse_cpu_max(max_text) if max_text else None,
        throttling=throttling(stat, "throttled_usec", 1e6),
    )


def v1_directory(membership: dict[str, tuple[str, str]], controller: str, cgroupfs: Path) -> Path | None:
    """The controller's cgroup directory: its path under the hierarchy, mounted where systemd and
    container runtimes mount it (``cpu,cpuacct``, or a directory of the controller's own name). In a
    container without a cgroup namespace the path is the host's, and the container's own cgroup is
    what is mounted at the hierarchy's root: the root is read then, as cadvisor and JVMs do."""
    if controller not in membership:
        return None
    hierarchy, path = membership[controller]
    for mount in (cgroupfs / hierarchy, cgroupfs / controller):
        if mount.is_dir():
            directory = mount / path.lstrip("/")
            return directory if directory.is_dir() else mount
    return None


def read_v1(membership: str, cgroupfs: Path) -> CgroupCpu | None:
    paths = procfs.parse_cgroup_v1_paths(membership)
    cpu = v1_directory(paths, "cpu", cgroupfs)
    cpuacct = v1_directory(paths, "cpuacct", cgroupfs)
    stat_text = read_text(cpu / "cpu.stat") if cpu else None
    quota = read_text(cpu / "cpu.cfs_quota_us") if cpu else None
    period = read_text(cpu / "cpu.cfs_period_us") if cpu else None
    usage = read_text(cpuacct / "cpuacct.usage") if cpuacct else None
    stat = procfs.parse_key_values(stat_text, "cpu.stat") if stat_text else {}
    reading = CgroupCpu(
        usage_seconds=procfs.parse_integer(usage, "cpuacct.usage") / 1e9 if usage else None,
        limit_cores=procfs.parse_cfs_quota(quota, period) if quota and period else None,
        throttling=throttling(stat, "throttled_time", 1e9),
    )
    return None if reading == CgroupCpu(None, None, None) else reading


def read(procfs_path: Path, cgroupfs: Path) -> CgroupCpu | None:
    """The agent's own cgroup: v2 where its cpu controller is on, else v1 (hybrid hosts and older
    nodes keep the cpu controller there), else whatever v2 has (usage without a cpu controller)."""
    membership = read_text(procfs_path / "self" / "cgroup")
    if not membership:
        return None
    v2 = read_v2(membership, cgroupfs)
    if v2 is not None and v2.throttling is not None:
        return v2
    return read_v1(membership, cgroupfs) or v2

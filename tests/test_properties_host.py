"""Bad input for the host collector: /proc, /sys and cgroup files with odd numbers or no shape at all.

Each parser gets arbitrary text; the collector runs consecutive cycles over generated trees in a
temporary directory, as it reads a node's /proc through a hostPath, with counters that mostly grow.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors.base import CollectorError
from collectors.host import HostCollector, procfs
from collectors.host.metrics import HOST_METRICS
from tests.test_properties_base import (
    FAST,
    NUMBERS,
    ODD_INTS,
    Counters,
    check_cycle,
    check_ratio_sets,
    mostly,
)

SHARES = {
    "host_cpu_utilization_ratio",
    "host_cpu_iowait_ratio",
    "host_cpu_busiest_core_utilization_ratio",
    "host_cpu_busiest_core_iowait_ratio",
    "host_memory_used_ratio",
    "host_swap_used_ratio",
    "host_disk_busy_ratio",
    "host_pressure_stall_avg10_ratio",
    "host_cgroup_cpu_throttled_periods_ratio",
}
NOT_SHARES = {
    # cpu.max.burst lets a cgroup run above its quota for a while; jitter between the cgroup's clock
    # and the collector's does too. Above 1 means "at or over the limit", which is the signal.
    "host_cgroup_cpu_limit_utilization_ratio": "CPU used / quota can exceed 1 with burst",
}

PARSERS: dict[str, Callable[[str], object]] = {
    "stat": procfs.parse_stat,
    "loadavg": procfs.parse_loadavg,
    "meminfo": procfs.parse_meminfo,
    "vmstat": lambda text: procfs.parse_key_values(text, "vmstat"),
    "diskstats": procfs.parse_diskstats,
    "net/dev": procfs.parse_net_dev,
    "pressure": lambda text: procfs.parse_pressure(text, "pressure/cpu"),
    "cgroup": procfs.parse_cgroup_v2_path,
    "cgroup v1": procfs.parse_cgroup_v1_paths,
    "cpu.max": procfs.parse_cpu_max,
    "cpu.cfs_quota_us": lambda text: procfs.parse_cfs_quota(*text.partition(" ")[::2]),
    "cpuacct.usage": lambda text: procfs.parse_integer(text, "cpuacct.usage"),
}
# Lines in the shape of each file, with numbers of any size and sign where the kernel writes digits.
LINE_STARTS = (
    "cpu",
    "cpu0",
    "MemTotal:",
    "sda",
    "eth0:",
    "some",
    "full",
    "0::",
    "4:cpu,cpuacct:",
    "nr_periods",
    "throttled_time",
    "",
)
number_words = st.lists(
    (NUMBERS | st.integers()).map(str) | st.sampled_from(["max", "kB", "-", ""]), max_size=18
)
integer_word = (st.integers() | ODD_INTS).map(str)  # "quota period" of cpu.max
shaped_lines = st.lists(
    st.tuples(
        st.sampled_from(LINE_STARTS),
        number_words,
        st.sampled_from(["", "avg10=", "total="]),
    ).map(lambda parts: " ".join([parts[0], *(parts[2] + word for word in parts[1])])),
    max_size=5,
).map("\n".join)


@pytest.mark.parametrize("parser", sorted(PARSERS))
@FAST
@given(
    text=st.text()
    | shaped_lines
    | number_words.map(" ".join)
    | st.tuples(integer_word, integer_word).map(" ".join)
)
def test_parsers_raise_only_collector_error(parser: str, text: str) -> None:
    with contextlib.suppress(CollectorError):
        PARSERS[parser](text)


# Any number the kernel could print: signed or unsigned 64-bit. Longer ones come as a fault of their own.
INT64 = st.integers(-(2**63), 2**64 - 1) | st.sampled_from([-1, 2**63, 2**64 - 1])
FAULTS = ("removed", "garbage", "beyond 64 bits")


def wrapped(value: int) -> int:
    return value if -(2**63) <= value < 2**64 else value % 2**64  # wrapped, as the kernel's do


class Numbers(Counters):
    """The numbers of one generated host across its cycles: each named counter starts somewhere and
    grows by a step each cycle; the step is now and then negative (a reset) or absurdly large."""

    def __init__(self, draw: st.DrawFn) -> None:
        starts = mostly(st.integers(0, 10**9), INT64)
        super().__init__(draw, starts, mostly(st.integers(0, 10**5), INT64), wrapped)

    def gauge(self) -> str:
        """A gauge in decimal notation, as in loadavg and PSI averages."""
        return str(self._draw(mostly(st.floats(0, 200).map(lambda x: round(x, 2)), NUMBERS)))


# The agent's cgroup: v2, or v1 with its cpu and cpuacct hierarchy mounted together or apart.
CGROUPS = ("v2", "v1 cpu,cpuacct", "v1 cpu and cpuacct")


def cgroup_files(n: Numbers, version: str) -> dict[str, str]:
    if version == "v2":
        return {
            "proc/self/cgroup": "0::/pod",
            "cgroup/pod/cpu.stat": "\n".join(
                f"{key} {n(key)}" for key in ("usage_usec", "nr_periods", "nr_throttled", "throttled_usec")
            ),
            "cgroup/pod/cpu.max": f"{n('quota')} {n('period')}",
        }
    cpu, cpuacct = ("cpu,cpuacct", "cpu,cpuacct") if version == "v1 cpu,cpuacct" else ("cpu", "cpuacct")
    return {
        "proc/self/cgroup": f"3:{cpuacct}:/pod\n2:{cpu}:/pod\n1:name=systemd:/pod\n0::/",
        f"cgroup/{cpu}/pod/cpu.stat": "\n".join(
            f"{key} {n(key)}" for key in ("nr_periods", "nr_throttled", "throttled_time")
        ),
        f"cgroup/{cpu}/pod/cpu.cfs_quota_us": str(n("quota")),
        f"cgroup/{cpu}/pod/cpu.cfs_period_us": str(n("period")),
        f"cgroup/{cpuacct}/pod/cpuacct.usage": str(n("usage")),
    }


def proc_files(n: Numbers, cgroup: str) -> dict[str, str]:
    """The text of every file the collector reads, relative to the tree's root."""
    cpu_columns = 10
    cpu_lines = [
        f"{cpu} " + " ".join(str(n(f"{cpu} column {column}")) for column in range(cpu_columns))
        for cpu in ("cpu", "cpu0", "cpu1")
    ]
    disk = " ".join(str(n(f"sda field {field}")) for field in range(3, 18))
    net = " ".join(str(n(f"eth0 field {field}")) for field in range(16))
    files = {
        "proc/stat": "\n".join(
            [*cpu_lines, f"procs_running {n('running')}", f"procs_blocked {n('blocked')}"]
        ),
        "proc/loadavg": f"{n.gauge()} {n.gauge()} {n.gauge()} 1/200 4242",
        "proc/meminfo": "\n".join(
            f"{key}: {n(key)} kB" for key in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree")
        ),
        "proc/vmstat": "\n".join(f"{key} {n(key)}" for key in ("pswpin", "pswpout", "pgmajfault")),
        "proc/diskstats": f"   8       0 sda {disk}\n   7       0 loop0 {disk}",
        "proc/1/net/dev": f"Inter-|   Receive\n face |bytes\n  eth0: {net}\n    lo: {net}",
        "sys/block/sda/dev": "8:0",
        **cgroup_files(n, cgroup),
    }
    for resource in ("cpu", "memory", "io"):
        files[f"proc/pressure/{resource}"] = "\n".join(
            f"{kind} avg10={n.gauge()} avg60=0.00 avg300=0.00 total={n(f'{resource} {kind} total')}"
            for kind in ("some", "full")
        )
    return files


@st.composite
def host_cycles(draw: st.DrawFn) -> list[tuple[dict[str, str | None], float]]:
    """Consecutive cycles: (file texts, None for a removed file; seconds since the previous cycle).
    Now and then one file of a cycle is removed or holds arbitrary text instead."""
    n = Numbers(draw)
    cgroup = draw(st.sampled_from(CGROUPS))
    cycles: list[tuple[dict[str, str | None], float]] = []
    for cycle in range(draw(st.integers(1, 3))):
        n.cycle = cycle
        files: dict[str, str | None] = dict(proc_files(n, cgroup))
        fault = draw(mostly(st.none(), st.sampled_from(FAULTS)))
        spoilt = draw(st.sampled_from(sorted(files)))
        if fault == "removed":
            files[spoilt] = None
        elif fault == "garbage":
            files[spoilt] = draw(st.text(max_size=40))
        elif fault == "beyond 64 bits":
            files[spoilt] = re.sub(
                r"\d+", str(draw(ODD_INTS.filter(lambda x: x > 2**64))), files[spoilt] or "", count=1
            )
        cycles.append((files, draw(mostly(st.floats(0.5, 10), st.floats(0, 10)))))
    return cycles


def write_tree(root: Path, files: dict[str, str | None]) -> None:
    for relative, text in files.items():
        path = root / relative
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


def test_every_ratio_series_is_decided() -> None:
    check_ratio_sets(HOST_METRICS, SHARES, NOT_SHARES)


@FAST
@given(cycles=host_cycles())
def test_collector_cycles_emit_finite_values_and_shares_within_0_and_1(
    cycles: list[tuple[dict[str, str | None], float]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        now = [0.0]
        collector = HostCollector(
            "node", root / "proc", root / "sys", root / "cgroup", clock=lambda: now[0], wall_clock=lambda: 0.0
        )
        for files, gap in cycles:
            write_tree(root, files)
            now[0] += gap
            check_cycle(collector.collect, SHARES, error_chars=20)

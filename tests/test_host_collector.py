"""The host collector on recorded /proc trees (exact values) and on this machine's real /proc."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from alerts.classifier import classify
from alerts.table import RULES, SIGNALS
from collectors.base import CollectorError, Reason, Sample
from collectors.host import HostCollector, procfs, within
from tests.proc_trees import GAP_SECONDS, Snapshots, cycles
from tests.support import REQUIRE_TOOLS, running, start_python


def test_swapping_host_with_psi(tmp_path: Path) -> None:
    _, sample = cycles("swapping", tmp_path)
    expected = {
        ("host_cpus", ()): 4,
        ("host_procs_running", ()): 3,
        ("host_procs_blocked", ()): 5,
        # busy = user+nice+system+irq+softirq+steal; guest is already inside user and not added again
        ("host_cpu_utilization_ratio", ()): 1600 / 4000,
        ("host_cpu_iowait_ratio", ()): 800 / 4000,
        ("host_cpu_busiest_core_utilization_ratio", ()): 0.7,
        ("host_cpu_busiest_core_iowait_ratio", ()): 0.4,
        ("host_load1_per_cpu", ()): 1.5,
        ("host_load5_per_cpu", ()): 1.0,
        ("host_load15_per_cpu", ()): 0.5,
        ("host_memory_total_bytes", ()): 8_000_000 * 1024,
        ("host_memory_available_bytes", ()): 400_000 * 1024,
        ("host_memory_used_ratio", ()): 0.95,
        ("host_swap_total_bytes", ()): 2_000_000 * 1024,
        ("host_swap_used_ratio", ()): 0.75,
        ("host_swap_in_pages_per_second", ()): 500,
        ("host_swap_out_pages_per_second", ()): 200,
        ("host_major_page_faults_per_second", ()): 300,
        ("host_disk_busy_ratio", ("sda",)): 0.95,
        ("host_disk_average_wait_seconds", ("sda",)): 3.2 / 400,
        ("host_disk_busy_ratio", ("nvme0n1",)): 0.0,
        ("host_disk_average_wait_seconds", ("nvme0n1",)): 0.0,
        ("host_network_receive_errors_total", ("eth0",)): 5,
        ("host_network_receive_drops_total", ("eth0",)): 14,
        ("host_network_transmit_errors_total", ("eth0",)): 1,
        ("host_network_transmit_drops_total", ("eth0",)): 2,
        ("host_pressure_stall_avg10_ratio", ("cpu", "some")): 0.05,
        ("host_pressure_stall_avg10_ratio", ("cpu", "full")): 0.0,
        ("host_pressure_stall_avg10_ratio", ("memory", "some")): 0.425,
        ("host_pressure_stall_avg10_ratio", ("memory", "full")): 0.2,
        ("host_pressure_stall_avg10_ratio", ("io", "some")): 0.3,
        ("host_pressure_stall_avg10_ratio", ("io", "full")): 0.25,
        ("host_pressure_stalled_seconds_total", ("cpu", "some")): 1.5,
        ("host_pressure_stalled_seconds_total", ("cpu", "full")): 0.0,
        ("host_pressure_stalled_seconds_total", ("memory", "some")): 6.25,
        ("host_pressure_stalled_seconds_total", ("memory", "full")): 3.0,
        ("host_pressure_stalled_seconds_total", ("io", "some")): 6.0,
        ("host_pressure_stalled_seconds_total", ("io", "full")): 5.0,
        # the root cgroup has no quota and no cpu controller stats: usage only
        ("host_cgroup_cpu_usage_seconds_total", ()): 500.0,
    }
    assert dict(sample.values) == pytest.approx(expected)
    assert sample.target == "node-a"
    assert sample.timestamp == 1_795_000_000.0 + 1010.0


def test_recorded_values_agree_with_each_other(tmp_path: Path) -> None:
    """The PSI totals advance by exactly what the avg10 figures claim over the 10 s between snapshots."""
    first, second = cycles("swapping", tmp_path)
    for (name, labels), total in second.series("host_pressure_stalled_seconds_total").items():
        stalled_share = (total - first.values[("host_pressure_stalled_seconds_total", (name, labels))]) / 10
        assert stalled_share == pytest.approx(
            second.values[("host_pressure_stall_avg10_ratio", (name, labels))]
        )


def test_first_cycle_reports_levels_but_no_rates(tmp_path: Path) -> None:
    first, _ = cycles("swapping", tmp_path)
    assert first.get("host_memory_used_ratio") == pytest.approx(1 - 2_000_000 / 8_000_000)
    for rate in ("host_cpu_utilization_ratio", "host_swap_in_pages_per_second", "host_disk_busy_ratio"):
        assert not first.series(rate), rate


def test_kernel_without_psi_or_swap_reports_no_such_series(tmp_path: Path) -> None:
    _, sample = cycles("no-psi", tmp_path)
    names = {name for name, _ in sample.values}
    assert not any(name.startswith("host_pressure") for name in names)
    assert not any(name.startswith("host_cgroup") for name in names)  # pure cgroup v1 membership
    assert "host_swap_used_ratio" not in names  # no swap: a zero denominator gives no ratio
    assert sample.get("host_swap_total_bytes") == 0
    assert sample.get("host_swap_in_pages_per_second") == 0
    assert sample.get("host_cpu_utilization_ratio") == pytest.approx(20 / 1000)
    assert sample.get("host_cpu_iowait_ratio") == pytest.approx(5 / 1000)


def test_iowait_stepping_back_is_no_iowait_not_an_unknown_cpu(tmp_path: Path) -> None:
    """proc(5): the iowait count can go down. The cycle still has its CPU ratios, iowait 0."""
    snapshots = Snapshots("swapping", tmp_path)
    snapshots.load("t0")
    collector = snapshots.collector()
    collector.collect()
    snapshots.load("t1")
    stat = snapshots.root / "proc" / "stat"
    # t0's aggregate iowait is 9700 ticks; t1 goes 100 below it while the rest advances
    stat.write_text(
        stat.read_text().replace("cpu  196050 15 72500 1621600 10500", "cpu  196050 15 72500 1621600 9600")
    )
    snapshots.now += GAP_SECONDS
    sample = collector.collect()
    assert sample.get("host_cpu_iowait_ratio") == 0
    busy = 1050 + 500 + 20 + 20 + 10  # user, system, irq, softirq and steal ticks, t1 minus t0
    idle_and_iowait = 1600 - 100
    assert sample.get("host_cpu_utilization_ratio") == pytest.approx(busy / (busy + idle_and_iowait))


def test_psi_switched_off_at_boot_is_no_psi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With PSI built in but off (psi=0), /proc/pressure/* exist and reading them fails with
    EOPNOTSUPP, which no file in a test tree can do: the read is made to fail as the kernel's does."""
    read_text = Path.read_text

    def kernel_read(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.parent.name == "pressure":
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", kernel_read)
    _, sample = cycles("swapping", tmp_path)
    assert not any(name.startswith("host_pressure") for name, _ in sample.values)
    assert sample.get("host_memory_used_ratio") is not None  # the rest of the cycle is there


THROTTLED = {
    "host_cgroup_cpu_limit_cores": 1.0,
    "host_cgroup_cpu_usage_seconds_total": 9.0,
    "host_cgroup_cpu_periods_total": 1100,
    "host_cgroup_cpu_throttled_periods_total": 160,
    "host_cgroup_cpu_throttled_seconds_total": 8.0,
    "host_cgroup_cpu_throttled_periods_ratio": 60 / 100,
    "host_cgroup_cpu_limit_utilization_ratio": 8.0 / 10 / 1.0,
}


def cgroup_series(sample: Sample) -> dict[str, float]:
    return {name: value for (name, _), value in sample.values.items() if name.startswith("host_cgroup")}


@pytest.mark.parametrize("tree", ["throttled", "throttled-v1"])
def test_throttled_container(tree: str, tmp_path: Path) -> None:
    """The same container on cgroup v2 and on v1. The v1 one has no cgroup namespace, as on Amazon
    Linux 2 nodes: /proc/self/cgroup names the node's path of its cgroup, and the container's own
    cgroup is what is mounted at /sys/fs/cgroup/cpu,cpuacct, where that path does not exist."""
    _, sample = cycles(tree, tmp_path)
    assert cgroup_series(sample) == pytest.approx(THROTTLED)
    assert sample.get("host_pressure_stall_avg10_ratio", "cpu", "some") == pytest.approx(0.6)


V1_CONTAINER = Path("cgroup") / "cpu,cpuacct"


def unlimited_quota(root: Path) -> None:
    (root / V1_CONTAINER / "cpu.cfs_quota_us").write_text("-1\n")


def node_with_separate_v1_hierarchies(root: Path) -> None:
    """This machine's layout on a hybrid host: cpu and cpuacct mounted apart, the cgroup v2 mount
    without the cpu controller (its root cpu.stat has usage only), and the agent in a cgroup below
    the v1 roots, whose own files must not be read instead."""
    path = "kubepods/burstable/pod1/ctr"
    (root / "proc" / "self" / "cgroup").write_text(f"2:cpuacct:/{path}\n1:cpu:/{path}\n0::/\n")
    cgroupfs = root / "cgroup"
    cpu, cpuacct = cgroupfs / "cpu" / path, cgroupfs / "cpuacct" / path
    cpu.mkdir(parents=True)
    cpuacct.mkdir(parents=True)
    for name in ("cpu.stat", "cpu.cfs_quota_us", "cpu.cfs_period_us"):
        (root / V1_CONTAINER / name).rename(cpu / name)
    (root / V1_CONTAINER / "cpuacct.usage").rename(cpuacct / "cpuacct.usage")
    (root / V1_CONTAINER).rmdir()
    (cgroupfs / "cpu" / "cpu.stat").write_text("nr_periods 0\nnr_throttled 0\nthrottled_time 0\n")
    (cgroupfs / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (cgroupfs / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (cgroupfs / "cpuacct" / "cpuacct.usage").write_text("123000000000000\n")
    (cgroupfs / "cpu.stat").write_text("usage_usec 500000000\n")


def test_cgroup_v1_without_quota_has_throttling_but_no_limit(tmp_path: Path) -> None:
    _, sample = cycles("throttled-v1", tmp_path, unlimited_quota)
    unlimited = {name: value for name, value in THROTTLED.items() if "_limit_" not in name}
    assert cgroup_series(sample) == pytest.approx(unlimited)


def test_cgroup_v1_node_reads_its_cgroup_in_each_hierarchy(tmp_path: Path) -> None:
    _, sample = cycles("throttled-v1", tmp_path, node_with_separate_v1_hierarchies)
    assert cgroup_series(sample) == pytest.approx(THROTTLED)


def test_cgroup_v2_with_the_cpu_controller_wins_over_v1(tmp_path: Path) -> None:
    def with_idle_v1_too(root: Path) -> None:
        membership = root / "proc" / "self" / "cgroup"
        membership.write_text("4:cpu,cpuacct:/\n" + membership.read_text())
        (root / V1_CONTAINER).mkdir(parents=True)
        (root / V1_CONTAINER / "cpu.stat").write_text("nr_periods 7\nnr_throttled 0\nthrottled_time 0\n")
        (root / V1_CONTAINER / "cpuacct.usage").write_text("5\n")

    _, sample = cycles("throttled", tmp_path, with_idle_v1_too)
    assert cgroup_series(sample) == pytest.approx(THROTTLED)


def test_v1_cpu_stat_is_not_read_as_v2(tmp_path: Path) -> None:
    """cgroupfs pointed at a v1 hierarchy of a hybrid host: its cpu.stat, where the v2 membership
    leads, has no usage_usec and no throttled_usec. Reading it as v2 would report a cgroup that is
    throttled in 60% of periods as throttled for 0 seconds; it is reported as no cgroup at all."""

    def cgroupfs_is_the_cpu_hierarchy(root: Path) -> None:
        (root / "proc" / "self" / "cgroup").write_text("2:cpuacct:/\n1:cpu:/\n0::/\n")
        for path in (root / V1_CONTAINER).iterdir():
            path.rename(root / "cgroup" / path.name)
        (root / V1_CONTAINER).rmdir()

    _, sample = cycles("throttled-v1", tmp_path, cgroupfs_is_the_cpu_hierarchy)
    assert cgroup_series(sample) == {}
    assert sample.get("host_memory_used_ratio") is not None  # the rest of the cycle is there


def test_network_devices_are_the_nodes_without_per_pod_interfaces(tmp_path: Path) -> None:
    """The recorded node has two views of the network: /proc/self/net/dev (and /proc/net, its link),
    the agent pod's own namespace with an eth0 free of errors, and /proc/1/net/dev, the node's, whose
    eth0 has errors and drops beside the node's ends of pod interfaces as bridge CNIs, Calico, Cilium,
    the AWS VPC CNI, GKE and Azure CNI name them."""
    _, sample = cycles("swapping", tmp_path)
    for series in (
        "host_network_receive_errors_total",
        "host_network_receive_drops_total",
        "host_network_transmit_errors_total",
        "host_network_transmit_drops_total",
    ):
        assert set(sample.series(series)) == {("eth0",)}, series
    assert sample.get("host_network_receive_errors_total", "eth0") == 5  # the node's eth0, not the pod's


def test_without_sight_of_pid_1_the_agents_own_network_is_read(tmp_path: Path) -> None:
    # A procfs mounted with hidepid shows an unprivileged agent no PID 1.
    snapshots = Snapshots("swapping", tmp_path)
    snapshots.load("t0")
    shutil.rmtree(snapshots.root / "proc" / "1")
    sample = snapshots.collector().collect()
    assert sample.get("host_network_receive_errors_total", "eth0") == 0  # the pod's own eth0


def test_pid_1_refused_by_hidepid_noaccess_falls_back_to_the_agents_own_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A procfs mounted with hidepid=1 lists PID 1 but refuses an unprivileged agent its files with
    EPERM, which root running this suite is never refused in a test tree: the read is made to fail
    as the kernel's does. The cycle goes on with the agent's own namespace, not a permission error."""
    snapshots = Snapshots("swapping", tmp_path)
    snapshots.load("t0")
    read_text = Path.read_text

    def kernel_read(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.is_relative_to(snapshots.root / "proc" / "1"):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", kernel_read)
    sample = snapshots.collector().collect()
    assert sample.get("host_network_receive_errors_total", "eth0") == 0  # the pod's own eth0
    assert sample.get("host_memory_used_ratio") is not None


def test_malformed_file_is_a_parse_error_naming_it(tmp_path: Path) -> None:
    snapshots = Snapshots("swapping", tmp_path)
    snapshots.load("t0")
    (snapshots.root / "proc" / "meminfo").write_text("MemTotal: lots kB\n")
    with pytest.raises(CollectorError) as caught:
        snapshots.collector().collect()
    assert caught.value.reason is Reason.PARSE
    assert "meminfo" in caught.value.detail


def test_missing_procfs_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CollectorError, match="is procfs mounted there"):
        HostCollector("x", tmp_path / "nothing").collect()


def core_shares(before: procfs.Stat, after: procfs.Stat) -> list[float]:
    """Each core's busy share between two readings of /proc/stat."""
    shares = []
    for name, ticks in after.cores.items():
        total = ticks.total - before.cores[name].total
        if total:  # a core with no tick in between has no share, for the collector too
            shares.append(within(ticks.busy - before.cores[name].busy, total) / total)
    return shares


def test_real_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    parse_stat = procfs.parse_stat
    stats: list[procfs.Stat] = []

    def recording(text: str) -> procfs.Stat:
        stats.append(parse_stat(text))
        return stats[-1]

    monkeypatch.setattr(procfs, "parse_stat", recording)
    collector = HostCollector("this-host")
    collector.collect()
    # Keep one core busy in between, so that the cores differ and the busiest stands out.
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    sample = collector.collect()
    assert sample.get("host_cpus") == os.cpu_count()
    assert sample.get("host_memory_total_bytes") == psutil.virtual_memory().total
    for name in ("host_cpu_utilization_ratio", "host_cpu_iowait_ratio", "host_memory_used_ratio"):
        value = sample.get(name)
        assert value is not None, name
        assert 0.0 <= value <= 1.0
    # The busiest core is the highest of the per-core shares the collector read; the floor of the
    # all-CPU share may lift it only by what that line can lead the per-core lines by (a tick or two
    # per CPU over the two readings), never by more.
    busiest = sample.get("host_cpu_busiest_core_utilization_ratio")
    assert busiest is not None
    first, second = stats
    top = max(core_shares(first, second))
    core_ticks = sum(ticks.total for ticks in second.cores.values()) - sum(
        ticks.total for ticks in first.cores.values()
    )
    lead = 2 * len(second.cores)
    assert top - 1e-9 <= busiest <= (top * core_ticks + lead) / (core_ticks - lead)
    has_psi = Path("/proc/pressure/memory").exists()
    assert bool(sample.series("host_pressure_stall_avg10_ratio")) == has_psi
    assert all(not device.startswith(("loop", "ram")) for (device,) in sample.series("host_disk_busy_ratio"))


V1_HIERARCHIES = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpuacct"))


@contextmanager
def v1_cpu_cgroup(quota_us: int, period_us: int) -> Iterator[list[Path]]:
    """A new cgroup with this CPU quota in this machine's v1 cpu and cpuacct hierarchies (one
    directory when they are mounted together), removed at the end, when its processes must be gone."""
    if not all((hierarchy / "cgroup.procs").exists() for hierarchy in V1_HIERARCHIES):
        # A kernel feature, not a tool the project installs: a cgroup v2-only machine has none.
        pytest.skip("no cgroup v1 cpu and cpuacct hierarchies at /sys/fs/cgroup/cpu{,acct}")
    if not all(os.access(hierarchy / "cgroup.procs", os.W_OK) for hierarchy in V1_HIERARCHIES):
        message = "the cgroup v1 cpu and cpuacct hierarchies are not writable: the test runs as root"
        if REQUIRE_TOOLS:
            pytest.fail(message)
        pytest.skip(message)
    name = f"tierwatch-test-{secrets.token_hex(4)}"
    groups = sorted({hierarchy.resolve() / name for hierarchy in V1_HIERARCHIES})
    try:
        for group in groups:
            group.mkdir()
        cpu = V1_HIERARCHIES[0].resolve() / name
        (cpu / "cpu.cfs_period_us").write_text(str(period_us))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota_us))
        yield groups
    finally:
        for group in groups:
            if group.exists():
                group.rmdir()


def procfs_of(pid: int, root: Path) -> Path:
    """This machine's procfs as the host collector reads it, except that ``self`` is process ``pid``,
    so that the collector reads that process's cgroup as its own."""
    view = root / "proc"
    view.mkdir()
    for entry in ("stat", "loadavg", "meminfo", "vmstat", "diskstats", "pressure", "1"):
        (view / entry).symlink_to(Path("/proc") / entry)
    (view / "self").symlink_to(Path("/proc") / str(pid))
    return view


def test_real_cgroup_v1_quota_throttles_a_busy_process(tmp_path: Path) -> None:
    """A process that would use a whole core, in a v1 cgroup allowed 0.1 core: nearly every CFS
    period ends throttled, it uses its whole quota, and CPUThrottled holds."""
    with (
        v1_cpu_cgroup(quota_us=10_000, period_us=100_000) as groups,
        running(busy := start_python(15)),
    ):
        for group in groups:
            (group / "cgroup.procs").write_text(str(busy.pid))
        collector = HostCollector("sidecar", procfs_of(busy.pid, tmp_path))
        first = collector.collect()
        start = time.monotonic()
        time.sleep(2.5)
        second = collector.collect()
        elapsed = time.monotonic() - start

    def increase(name: str) -> float:
        before, after = first.get(name), second.get(name)
        assert before is not None, name
        assert after is not None, name
        return after - before

    assert second.get("host_cgroup_cpu_limit_cores") == 0.1
    throttled = second.get("host_cgroup_cpu_throttled_periods_ratio")
    assert throttled is not None
    assert throttled > 0.5
    # one period per 0.1 s while the process wants CPU, throttled for at most the rest of each
    assert increase("host_cgroup_cpu_periods_total") == pytest.approx(elapsed / 0.1, abs=3)
    assert elapsed * 0.4 < increase("host_cgroup_cpu_throttled_seconds_total") < elapsed
    used = second.get("host_cgroup_cpu_limit_utilization_ratio")
    assert used == pytest.approx(1.0, abs=0.3)
    verdicts = {v.rule.name: v for v in classify({("host", "sidecar"): (first, second)}, RULES, SIGNALS)}
    assert verdicts["CPUThrottled"].truth is True
    assert verdicts["CPUThrottled"].evidence["host_cpu_throttled_ratio"] == throttled

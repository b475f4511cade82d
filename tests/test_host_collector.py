"""The host collector on recorded /proc trees (exact values) and on this machine's real /proc."""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from collectors.base import CollectorError, Reason
from collectors.host import HostCollector, procfs, within
from tests.proc_trees import GAP_SECONDS, Snapshots, cycles


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


def test_throttled_container(tmp_path: Path) -> None:
    _, sample = cycles("throttled", tmp_path)
    assert sample.get("host_cgroup_cpu_limit_cores") == 1.0
    assert sample.get("host_cgroup_cpu_usage_seconds_total") == 9.0
    assert sample.get("host_cgroup_cpu_periods_total") == 1100
    assert sample.get("host_cgroup_cpu_throttled_periods_total") == 160
    assert sample.get("host_cgroup_cpu_throttled_seconds_total") == 8.0
    assert sample.get("host_cgroup_cpu_throttled_periods_ratio") == pytest.approx(60 / 100)
    assert sample.get("host_cgroup_cpu_limit_utilization_ratio") == pytest.approx(8.0 / 10 / 1.0)
    assert sample.get("host_pressure_stall_avg10_ratio", "cpu", "some") == pytest.approx(0.6)


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

"""Host tier: CPU, memory, swap, disks, network errors, pressure stalls and cgroup CPU throttling.

Reads procfs directly (a DaemonSet points ``procfs`` at the node's /proc mounted on /host/proc) and
computes every rate from counter deltas between its own cycles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from collectors.base import Collector, CollectorError, Reason, Sample, SampleBuilder
from collectors.deltas import Deltas
from collectors.host import cgroup, procfs
from collectors.host.files import read_required, read_text
from collectors.host.metrics import HOST_METRICS, HOST_READINGS

Clock = Callable[[], float]
PSI_RESOURCES = ("cpu", "memory", "io")
# Devices that are not physical storage or would double count it.
SKIPPED_DISK_PREFIXES = ("loop", "ram", "zram", "fd", "sr")
# Per-pod virtual interfaces would make the device label unbounded on a busy node: the node's end of
# each pod's veth pair as the common CNIs name it (veth: bridge, kindnet, Weave; cali: Calico; lxc:
# Cilium; eni: AWS VPC CNI; gke: GKE; azv: Azure CNI), plus loopback and per-node bridges and tunnels.
SKIPPED_NET_PREFIXES = (
    "lo",
    "veth",
    "cali",
    "cilium",
    "lxc",
    "eni",
    "gke",
    "azv",
    "flannel",
    "cni",
    "docker",
    "br-",
    "tunl",
)


def within(part: float, whole: float) -> float:
    """``part`` moved into [0, whole], so that part / whole is a share. Needed because counters of one
    file are not read atomically (busy CPU ticks outgrow total ticks when iowait goes backwards, which
    proc(5) warns of) and virtualized procfs (LXCFS) has shown MemAvailable above MemTotal. The order
    of min and max keeps a NaN a NaN, for the sample builder to drop rather than pass as 0 or 1."""
    return min(max(part, 0), whole)


def cpu_shares(deltas: Deltas, key: str, ticks: procfs.CpuTicks) -> tuple[float, float] | None:
    """The busy and the iowait share of the CPU ticks since the previous cycle (``key`` names the CPU),
    or None before there is a previous cycle."""
    busy = deltas.delta((key, "busy"), ticks.busy)
    iowait = deltas.delta((key, "iowait"), ticks.iowait, steps_back=True)
    total = deltas.delta((key, "total"), ticks.total)
    if busy is None or iowait is None or not total:
        return None
    return within(busy, total) / total, within(iowait, total) / total


class HostCollector(Collector):
    name = "host"
    tier = "host"
    metrics = HOST_METRICS
    readings = HOST_READINGS

    def __init__(
        self,
        target: str,
        procfs_path: Path = Path("/proc"),
        sysfs_path: Path = Path("/sys"),
        cgroupfs_path: Path = Path("/sys/fs/cgroup"),
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        super().__init__(target)
        self._proc = procfs_path
        self._sys = sysfs_path
        self._cgroupfs = cgroupfs_path
        self._clock = clock
        self._wall_clock = wall_clock
        self._deltas = Deltas()

    def describe(self) -> str:
        return f"host {self.target} (procfs {self._proc}, cgroupfs {self._cgroupfs})"

    def collect(self) -> Sample:
        out = self.builder()
        elapsed = self._deltas.begin(self._clock())
        cpus = self._cpu(out)
        self._load(out, cpus)
        self._memory(out, elapsed)
        self._disks(out, elapsed)
        self._network(out)
        self._pressure(out)
        self._cgroup(out, elapsed)
        return out.build(self.name, self.target, self._wall_clock())

    def _cpu(self, out: SampleBuilder) -> int:
        stat = procfs.parse_stat(read_required(self._proc / "stat"))
        cpus = len(stat.cores) or 1
        out.set("host_cpus", cpus)
        if stat.procs_running is not None:
            out.set("host_procs_running", stat.procs_running)
        if stat.procs_blocked is not None:
            out.set("host_procs_blocked", stat.procs_blocked)
        overall = cpu_shares(self._deltas, "cpu", stat.overall)
        if overall is not None:
            out.set("host_cpu_utilization_ratio", overall[0])
            out.set("host_cpu_iowait_ratio", overall[1])
        per_core = [
            r for name, t in stat.cores.items() if (r := cpu_shares(self._deltas, name, t)) is not None
        ]
        if per_core:
            # The busiest core is at least the average; the kernel sums the aggregate line in a separate
            # pass over the cores, so at a tick boundary the per-core lines can lag it by a tick.
            floor = overall or (0.0, 0.0)
            out.set("host_cpu_busiest_core_utilization_ratio", max(floor[0], *(busy for busy, _ in per_core)))
            out.set("host_cpu_busiest_core_iowait_ratio", max(floor[1], *(iowait for _, iowait in per_core)))
        return cpus

    def _load(self, out: SampleBuilder, cpus: int) -> None:
        one, five, fifteen = procfs.parse_loadavg(read_required(self._proc / "loadavg"))
        out.set("host_load1_per_cpu", one / cpus)
        out.set("host_load5_per_cpu", five / cpus)
        out.set("host_load15_per_cpu", fifteen / cpus)

    def _memory(self, out: SampleBuilder, elapsed: float | None) -> None:
        memory = procfs.parse_meminfo(read_required(self._proc / "meminfo"))
        missing = [key for key in ("MemTotal", "MemAvailable") if key not in memory]
        if missing:  # MemAvailable came with Linux 3.14
            raise CollectorError(Reason.PARSE, f"meminfo has no {' or '.join(missing)}")
        total, available = memory["MemTotal"], memory["MemAvailable"]
        out.set("host_memory_total_bytes", total)
        out.set("host_memory_available_bytes", available)
        out.ratio("host_memory_used_ratio", within(total - available, total), total)
        swap_total = memory.get("SwapTotal", 0)
        out.set("host_swap_total_bytes", swap_total)
        swap_used = within(swap_total - memory.get("SwapFree", 0), swap_total)
        out.ratio("host_swap_used_ratio", swap_used, swap_total)
        vmstat = procfs.parse_key_values(read_required(self._proc / "vmstat"), "vmstat")
        for counter, series in (
            ("pswpin", "host_swap_in_pages_per_second"),
            ("pswpout", "host_swap_out_pages_per_second"),
            ("pgmajfault", "host_major_page_faults_per_second"),
        ):
            delta = self._deltas.delta(counter, vmstat.get(counter, 0))
            if delta is not None and elapsed:
                out.set(series, delta / elapsed)

    def _disks(self, out: SampleBuilder, elapsed: float | None) -> None:
        for device, counters in procfs.parse_diskstats(read_required(self._proc / "diskstats")).items():
            if device.startswith(SKIPPED_DISK_PREFIXES) or not (self._sys / "block" / device).exists():
                continue  # partitions have no /sys/block entry of their own
            busy_ms = self._deltas.delta((device, "busy"), counters.busy_ms)
            ios = self._deltas.delta((device, "ios"), counters.ios)
            wait_ms = self._deltas.delta((device, "wait"), counters.io_wait_ms)
            if busy_ms is not None and elapsed:
                out.set("host_disk_busy_ratio", min(1.0, busy_ms / 1000 / elapsed), device)
            if ios is not None and wait_ms is not None:
                # No completed I/O means no waiting, as iostat reports it.
                out.set("host_disk_average_wait_seconds", wait_ms / 1000 / ios if ios else 0.0, device)

    def _network(self, out: SampleBuilder) -> None:
        # /proc/net/dev shows the reader's own network namespace: in a pod without hostNetwork, the
        # pod's eth0. PID 1's is the node's when the procfs is the node's and the pod has hostPID (the
        # DaemonSet); anywhere else it is the agent's own namespace, as before. A procfs mounted with
        # hidepid hides PID 1 from an unprivileged agent (hidepid=2) or refuses its files (hidepid=1):
        # its own namespace is then the best there is.
        node = read_text(self._proc / "1" / "net" / "dev", denied_is_absent=True)
        text = node or read_text(self._proc / "self" / "net" / "dev")
        if text is None:
            return
        for device, counters in procfs.parse_net_dev(text).items():
            if device.startswith(SKIPPED_NET_PREFIXES):
                continue
            out.set("host_network_receive_errors_total", counters.receive_errors, device)
            out.set("host_network_receive_drops_total", counters.receive_drops, device)
            out.set("host_network_transmit_errors_total", counters.transmit_errors, device)
            out.set("host_network_transmit_drops_total", counters.transmit_drops, device)

    def _pressure(self, out: SampleBuilder) -> None:
        for resource in PSI_RESOURCES:
            text = read_text(self._proc / "pressure" / resource)
            if text is None:
                continue  # kernels without PSI: no series, no error
            for kind, pressure in procfs.parse_pressure(text, f"pressure/{resource}").items():
                share = within(pressure.avg10_percent, 100) / 100
                out.set("host_pressure_stall_avg10_ratio", share, resource, kind)
                out.set(
                    "host_pressure_stalled_seconds_total", pressure.total_microseconds / 1e6, resource, kind
                )

    def _cgroup(self, out: SampleBuilder, elapsed: float | None) -> None:
        reading = cgroup.read(self._proc, self._cgroupfs)
        if reading is None:
            return
        usage = reading.usage_seconds
        if usage is not None:
            out.set("host_cgroup_cpu_usage_seconds_total", usage)
        if reading.limit_cores is not None:
            out.set("host_cgroup_cpu_limit_cores", reading.limit_cores)
            used = self._deltas.delta("cgroup_usage", usage) if usage is not None else None
            if used is not None and elapsed:
                out.ratio("host_cgroup_cpu_limit_utilization_ratio", used / elapsed, reading.limit_cores)
        stat = reading.throttling
        if stat is None:
            return
        out.set("host_cgroup_cpu_periods_total", stat.periods)
        out.set("host_cgroup_cpu_throttled_periods_total", stat.throttled_periods)
        out.set("host_cgroup_cpu_throttled_seconds_total", stat.throttled_seconds)
        periods = self._deltas.delta("cgroup_periods", stat.periods)
        throttled = self._deltas.delta("cgroup_throttled", stat.throttled_periods)
        if periods is not None and throttled is not None:
            out.ratio("host_cgroup_cpu_throttled_periods_ratio", within(throttled, periods), periods)

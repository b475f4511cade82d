"""Recorded /proc trees under tests/data/proc: two snapshots each, t0 and t1, taken 10 s apart.

The host collector reads a working copy that is switched from t0 to t1 between its two cycles.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from collectors.base import Sample
from collectors.host import HostCollector

DATA = Path(__file__).parent / "data" / "proc"
GAP_SECONDS = 10.0
Edit = Callable[[Path], None]  # changes a snapshot's working copy, given its root


class Snapshots:
    def __init__(self, tree: str, workdir: Path) -> None:
        self.source = DATA / tree
        self.root = workdir / "live"
        self.now = 1000.0

    def load(self, snapshot: str) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.copytree(self.source / snapshot, self.root)

    def collector(self) -> HostCollector:
        return HostCollector(
            "node-a",
            self.root / "proc",
            self.root / "sys",
            self.root / "cgroup",
            clock=lambda: self.now,
            wall_clock=lambda: 1_795_000_000.0 + self.now,
        )

    def two_cycles(self, edit: Edit | None = None) -> tuple[Sample, Sample]:
        """Both cycles, ``edit`` applied to each snapshot before it is read."""
        self.load("t0")
        if edit:
            edit(self.root)
        collector = self.collector()
        first = collector.collect()
        self.load("t1")
        if edit:
            edit(self.root)
        self.now += GAP_SECONDS
        return first, collector.collect()


def cycles(tree: str, tmp_path: Path, edit: Edit | None = None) -> tuple[Sample, Sample]:
    return Snapshots(tree, tmp_path).two_cycles(edit)

"""The CPUs a decode may split over: the affinity set, capped by the cgroup's CPU limit."""

from __future__ import annotations

import os
from pathlib import Path

from stt_worker.engines.cpus import own_cpu_max, quota_cpus, usable_cpus


def test_a_cgroup_v2_limit_rounds_down_to_whole_cpus_and_at_least_one(tmp_path: Path) -> None:
    v2 = tmp_path / "cpu.max"
    v2.write_text("250000 100000\n")
    assert quota_cpus(v2, tmp_path / "none") == 2
    v2.write_text("50000 100000\n")
    assert quota_cpus(v2, tmp_path / "none") == 1


def test_the_limit_is_read_from_the_process_own_cgroup(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/worker\n")
    assert own_cpu_max(tmp_path, proc) == tmp_path / "kubepods/pod1/worker/cpu.max"
    proc.write_text("0::/\n")  # its own cgroup namespace: the mount's root
    assert own_cpu_max(tmp_path, proc) == tmp_path / "cpu.max"
    assert own_cpu_max(tmp_path, tmp_path / "missing") == tmp_path / "cpu.max"


def test_no_limit_leaves_the_affinity_set(tmp_path: Path) -> None:
    v2 = tmp_path / "cpu.max"
    v2.write_text("max 100000\n")
    assert quota_cpus(v2, tmp_path / "none") is None
    assert usable_cpus(v2, tmp_path / "none") == len(os.sched_getaffinity(0))
    # Nothing readable (no cgroup files at all): the affinity set too.
    assert usable_cpus(tmp_path / "missing", tmp_path / "none") == len(os.sched_getaffinity(0))


def test_a_cgroup_v1_quota_is_read_when_v2_is_absent(tmp_path: Path) -> None:
    v1 = tmp_path / "cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert quota_cpus(tmp_path / "missing", v1) == 1
    assert usable_cpus(tmp_path / "missing", v1) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert quota_cpus(tmp_path / "missing", v1) is None


def test_the_limit_caps_the_affinity_set_and_never_reaches_zero(tmp_path: Path) -> None:
    v2 = tmp_path / "cpu.max"
    v2.write_text("100000 100000\n")
    assert usable_cpus(v2, tmp_path / "none") == 1
    v2.write_text(f"{(len(os.sched_getaffinity(0)) + 3) * 100000} 100000\n")
    assert usable_cpus(v2, tmp_path / "none") == len(os.sched_getaffinity(0))


def test_a_pinned_process_counts_only_its_cpus(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        assert usable_cpus(tmp_path / "missing", tmp_path / "none") == 1
    finally:
        os.sched_setaffinity(0, before)

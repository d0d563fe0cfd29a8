"""How many CPUs this process may use: the fewer of its affinity set and its cgroup's quota.

`os.cpu_count()` counts the node's cores. In a container with a CPU limit, or pinned to
whole cores by the kubelet's static CPU manager (a Guaranteed pod), that overstates what the
process gets, and a decode split over more threads than it has cores runs slower than over
fewer: the threads wait on each other's time slices.

The quota read is the process's own cgroup's (v2: the path in `/proc/self/cgroup`; v1: the
`cpu` controller's mount), not its parents': a limit set only higher up is not seen.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def own_cpu_max(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Path:
    """cgroup v2's `cpu.max` of this process's cgroup: the "0::" line of `proc_cgroup` under
    `root` (a container with its own cgroup namespace sees "/", the mount's root)."""
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                return root / line[3:].strip().lstrip("/") / "cpu.max"
    except OSError:
        pass
    return root / "cpu.max"


def quota_cpus(v2: Path, v1: Path = CGROUP_ROOT / "cpu") -> int | None:
    """The cgroup's CPU limit in whole CPUs, rounded down and at least 1 (threads for a
    fraction of a CPU more would only be throttled); None: no limit, or none readable."""
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (v1 / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        share = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return max(1, int(share)) if share > 0 else None


def usable_cpus(v2: Path | None = None, v1: Path = CGROUP_ROOT / "cpu") -> int:
    """CPUs this process may run on at once: its affinity set, capped by its cgroup quota."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    quota = quota_cpus(own_cpu_max() if v2 is None else v2, v1)
    return min(allowed, quota) if quota else allowed

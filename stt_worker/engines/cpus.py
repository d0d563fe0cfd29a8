"""How many CPUs this process may use: the fewer of its affinity set and its cgroup's quota.

`os.cpu_count()` counts the node's cores. In a container with a CPU limit, or pinned to
whole cores by the kubelet's static CPU manager (a Guaranteed pod), that overstates what the
process gets, and a decode split over more threads than it has cores runs slower than over
fewer: the threads wait on each other's time slices.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


def quota_cpus(v2: Path = CGROUP_V2, v1: Path = CGROUP_V1) -> int | None:
    """The cgroup's CPU limit rounded up to whole CPUs (None: no limit, or none readable)."""
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
    return max(1, math.ceil(share)) if share > 0 else None


def usable_cpus(v2: Path = CGROUP_V2, v1: Path = CGROUP_V1) -> int:
    """CPUs this process may run on at once: its affinity set, capped by its cgroup quota."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    quota = quota_cpus(v2, v1)
    return max(1, min(allowed, quota) if quota else allowed)

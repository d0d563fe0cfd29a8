"""bench.shared_cores spreads its sessions evenly over the partitions (`partition_of` is
checked against nats-server in tests/test_chaos_bench.py)."""

from __future__ import annotations

import collections

from bench.chaos_attribution import partition_of
from bench.shared_cores import busiest_share, even_ids


def test_even_ids_hold_as_many_sessions_in_every_partition() -> None:
    ids = even_ids("calm-000000", 24)
    assert len(set(ids)) == 24
    assert collections.Counter(partition_of(i, 12) for i in ids) == {p: 2 for p in range(12)}


def test_the_busiest_of_three_workers_serves_more_than_a_third_with_random_ids() -> None:
    share = busiest_share(workers=3, sessions=24, trials=300)
    assert 9 < share["mean"] < 12 and share["p90"] >= 11

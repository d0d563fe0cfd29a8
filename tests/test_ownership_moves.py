"""Elastic mode's arithmetic on its own (core/ownership): fair shares, claims and releases."""

from __future__ import annotations

import pytest

from stt_worker.core.ownership import Moves, fair_share, moves


@pytest.mark.parametrize("members", [1, 2, 3, 5, 7, 8])
def test_shares_add_up_to_the_partitions_and_differ_by_at_most_one(members):
    ids = [f"w{i}" for i in range(members)]
    shares = [fair_share(8, ids, me) for me in ids]
    assert sum(shares) == 8
    assert max(shares) - min(shares) <= 1


def test_a_worker_not_yet_seen_counts_itself():
    assert fair_share(4, ["a"], "b") == 2
    assert fair_share(4, [], "b") == 4


def test_a_lone_worker_claims_every_free_partition():
    assert sorted(moves(4, ["a"], "a", {}).claim) == [0, 1, 2, 3]


def test_a_join_makes_the_holder_release_its_surplus_from_the_top():
    owners = dict.fromkeys(range(4), "a")
    assert moves(4, ["a", "b"], "a", owners) == Moves(release=(2, 3))
    # The newcomer finds nothing free until the surplus is released, then takes it.
    assert moves(4, ["a", "b"], "b", owners) == Moves()
    after = {0: "a", 1: "a"}
    assert sorted(moves(4, ["a", "b"], "b", after).claim) == [2, 3]


def test_a_dead_members_partitions_are_free_to_claim():
    owners = {0: "a", 1: "a", 2: "b", 3: "b"}
    assert sorted(moves(4, ["a"], "a", owners).claim) == [2, 3]


def test_a_worker_at_its_share_does_nothing():
    owners = {0: "a", 1: "b", 2: "a", 3: "b"}
    assert moves(4, ["a", "b"], "a", owners) == Moves()
    assert moves(4, ["a", "b"], "b", owners) == Moves()


def test_workers_joining_together_start_their_claims_apart():
    members = ["a", "b", "c", "d"]
    first_claims = {moves(8, members, me, {}).claim[0] for me in members}
    assert len(first_claims) == 4


def test_converges_from_any_start_when_everyone_applies_their_moves():
    members = ["a", "b", "c"]
    owners: dict[int, str] = dict.fromkeys(range(10), "a")
    for _ in range(4):  # rounds: each worker moves in turn, claims win only when free
        for me in members:
            step = moves(10, members, me, owners)
            for p in step.release:
                del owners[p]
            for p in step.claim:
                owners.setdefault(p, me)
    counts = sorted(list(owners.values()).count(m) for m in members)
    assert counts == [3, 3, 4] and len(owners) == 10


def test_more_workers_than_partitions_leaves_some_idle():
    members = ["a", "b", "c"]
    assert [fair_share(2, members, me) for me in members] == [1, 1, 0]
    assert moves(2, members, "c", {}) == Moves()

"""Elastic mode's arithmetic: which partitions a worker should hold, given who is alive and
who holds what.

Sans-I/O: `runtime/ownership.py` reads the members and the leases from JetStream KV and
carries out the `Moves` computed here (claim with create, release with a delete). Every
worker computes the same shares from the same member list, so the shares add up to the
partition count and nobody has to coordinate: a worker over its share gives partitions up,
one under it takes free ones, and the leases' compare-and-set settles any race.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass


def fair_share(partitions: int, members: Collection[str], me: str) -> int:
    """How many of `partitions` worker `me` should hold: the floor of partitions / members,
    plus one for the first (partitions mod members) members in id order, so the shares of all
    members add up to exactly `partitions`. `me` counts as a member even before its own
    heartbeat is seen."""
    ranked = sorted({*members, me})
    base, extra = divmod(partitions, len(ranked))
    return base + (1 if ranked.index(me) < extra else 0)


@dataclass(frozen=True, slots=True)
class Moves:
    """What one worker should do this round: take free partitions, give surplus ones up."""

    claim: tuple[int, ...] = ()
    release: tuple[int, ...] = ()


def moves(partitions: int, members: Collection[str], me: str, owners: Mapping[int, str]) -> Moves:
    """`owners`: the current lease holder of each leased partition. A partition is free when
    it has no lease or its holder is no longer a member (its lease is about to expire; the
    claim's compare-and-set decides). Surplus goes from the top, claims start at an offset
    that depends on the worker, so workers joining together rarely race for one partition."""
    alive = {*members, me}
    target = fair_share(partitions, alive, me)
    mine = sorted(p for p, owner in owners.items() if owner == me and p < partitions)
    if len(mine) > target:
        return Moves(release=tuple(mine[target:]))
    free = [p for p in range(partitions) if owners.get(p) not in alive]
    if not free or len(mine) == target:
        return Moves()
    offset = sorted(alive).index(me) * len(free) // len(alive)
    ordered = free[offset:] + free[:offset]
    return Moves(claim=tuple(ordered[: target - len(mine)]))

"""Elastic mode's leases (runtime/ownership) on a real nats-server with JetStream, without a
model: several owners racing for the partitions never serve one twice and settle on fair
shares; a server restart does not move any partition."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import nats
import pytest

from stt_worker.config import load_settings
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.ownership import Ownership
from tests.helpers import until

PARTITIONS = 8


@pytest.fixture
async def js_server(tmp_path) -> AsyncIterator[NatsServer]:
    async with NatsServer(extra_args=("-js", "-sd", str(tmp_path / "jetstream"))) as server:
        yield server


class Serving:
    """Which owner serves each partition, as the owners' calls say; a second owner taking a
    partition someone serves is the fault these tests look for."""

    def __init__(self) -> None:
        self.by: dict[int, str] = {}
        self.moves: list[tuple[str, str, int]] = []
        self.overlaps: list[int] = []

    def owner(self, me: str, js) -> Ownership:
        async def take(partition: int) -> None:
            if partition in self.by:
                self.overlaps.append(partition)
            self.by[partition] = me
            self.moves.append(("take", me, partition))

        async def give_up(partition: int) -> None:
            if self.by.get(partition) == me:
                del self.by[partition]
            self.moves.append(("give_up", me, partition))

        async def forget(partition: int) -> None:
            pass

        async def intact(partition: int) -> bool:
            return self.by.get(partition) == me

        settings = load_settings(
            durable=True, elastic=True, partitions=PARTITIONS, lease_s=1.5, worker_id=me
        )
        return Ownership(settings, js, take=take, give_up=give_up, forget=forget, intact=intact)

    def shares(self) -> list[int]:
        return sorted(collections.Counter(self.by.values()).values())


async def test_owners_racing_never_serve_a_partition_twice_and_settle_fair(js_server):
    nc = await nats.connect(js_server.url)
    serving = Serving()
    owners = [serving.owner(me, nc.jetstream()) for me in ("a", "b", "c")]
    try:
        await asyncio.gather(*(owner.start() for owner in owners))  # all at once
        await until(lambda: serving.shares() == [2, 3, 3], 10)
        # One leaves: its partitions go to the other two.
        await owners[2].drain()
        await owners[2].hand_over()
        await until(lambda: serving.shares() == [4, 4], 10)
    finally:
        for owner in owners[:2]:
            await owner.drain()
            await owner.hand_over()
        await nc.close()
    assert serving.overlaps == []
    assert serving.by == {}


async def test_a_server_restart_moves_no_partition(js_server):
    nc = await nats.connect(js_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    serving = Serving()
    owner = serving.owner("a", nc.jetstream())
    try:
        await owner.start()
        assert len(serving.by) == PARTITIONS
        await js_server.kill()
        await asyncio.sleep(2)  # longer than the leases' 1.5 s: they expire meanwhile
        await js_server.start()
        await until(lambda: nc.is_connected, 10)
        await asyncio.sleep(2)  # rounds renew (re-create) the leases
        assert sorted(owner.owned) == list(range(PARTITIONS))
    finally:
        await owner.drain()
        await owner.hand_over()
        await nc.close()
    takes = [move for move in serving.moves if move[0] == "take"]
    assert len(takes) == PARTITIONS  # each taken once, at the start: nothing moved

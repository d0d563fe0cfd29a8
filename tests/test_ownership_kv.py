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
        # Partitions whose next take or give-up fails (a consumer call that timed out).
        self.failing_take: set[int] = set()
        self.failing_give_up: set[int] = set()
        # Partitions whose give-up waits for `finals_out` (their sessions' finals decoding).
        self.slow_give_up: set[int] = set()
        self.finals_out = asyncio.Event()

    def owner(self, me: str, js) -> Ownership:
        async def take(partition: int) -> None:
            if partition in self.failing_take:
                self.failing_take.discard(partition)
                raise TimeoutError(f"partition {partition}'s consumer")
            if partition in self.by:
                self.overlaps.append(partition)
            self.by[partition] = me
            self.moves.append(("take", me, partition))

        async def give_up(partition: int) -> None:
            if partition in self.failing_give_up:
                self.failing_give_up.discard(partition)
                raise TimeoutError(f"partition {partition}'s subscription")
            if partition in self.slow_give_up:
                self.moves.append(("giving_up", me, partition))
                await self.finals_out.wait()
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
        assert owner.health() is None
        await js_server.kill()
        await asyncio.sleep(2)  # longer than the leases' 1.5 s: they expire meanwhile
        assert "no lease round has succeeded" in (owner.health() or "")  # /readyz: not ready
        await js_server.start()
        await until(lambda: nc.is_connected, 10)
        await asyncio.sleep(2)  # rounds renew (re-create) the leases
        assert sorted(owner.owned) == list(range(PARTITIONS))
        await until(lambda: owner.health() is None, 10)
    finally:
        await owner.drain()
        await owner.hand_over()
        await nc.close()
    takes = [move for move in serving.moves if move[0] == "take"]
    assert len(takes) == PARTITIONS  # each taken once, at the start: nothing moved


async def test_a_lease_taken_back_that_cannot_be_served_again_is_let_go(js_server):
    """Partition 0's lease expired and its consumer went (a server that lost its store): the
    owner takes the lease back, but serving it again fails. It must let the lease go, not
    renew a lease nobody serves; a later round claims the partition and serves it."""
    nc = await nats.connect(js_server.url)
    serving = Serving()
    owner = serving.owner("a", nc.jetstream())
    try:
        await owner.start()
        assert serving.by.get(0) == "a"
        serving.by.pop(0)  # the consumer is gone
        serving.failing_take.add(0)
        await (await nc.jetstream().key_value(load_settings().ownership_bucket)).delete("lease.0")
        await until(lambda: serving.by.get(0) == "a", 10)
    finally:
        await owner.drain()
        await owner.hand_over()
        await nc.close()
    assert serving.failing_take == set()  # the retake did fail first


async def test_a_failing_give_up_of_one_lost_lease_does_not_keep_the_others_served(js_server):
    nc = await nats.connect(js_server.url)
    serving = Serving()
    owner = serving.owner("a", nc.jetstream())
    try:
        await owner.start()
        serving.failing_give_up.add(0)
        kv = await nc.jetstream().key_value(load_settings().ownership_bucket)
        for partition in (0, 1):  # somebody else holds them now
            await kv.put(f"lease.{partition}", b"b")
        await until(lambda: ("give_up", "a", 1) in serving.moves, 10)
    finally:
        await owner.drain()
        await owner.hand_over()
        await nc.close()


async def test_a_slow_give_up_of_a_lost_lease_lets_the_rounds_renew_the_others(js_server):
    """Partition 0's lease is lost while its sessions' finals take longer than the leases'
    TTL: the owner's other leases must not expire meanwhile."""
    nc = await nats.connect(js_server.url)
    serving = Serving()
    owner = serving.owner("a", nc.jetstream())
    lease_s = owner._settings.lease_s
    try:
        await owner.start()
        serving.slow_give_up.add(0)
        kv = await nc.jetstream().key_value(load_settings().ownership_bucket)
        await kv.put("lease.0", b"b")  # somebody else holds it now
        await until(lambda: ("giving_up", "a", 0) in serving.moves, 10)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(owner.round(), lease_s / 3)  # not held up by the give-up
        assert asyncio.get_running_loop().time() - started < lease_s / 3
        await asyncio.sleep(2 * lease_s)  # the give-up still waits: leases 1-7 are renewed
        for partition in range(1, PARTITIONS):
            assert (await kv.get(f"lease.{partition}")).value == b"a", partition
        assert serving.by.get(0) == "a"  # still finishing its sessions
        serving.finals_out.set()
        await until(lambda: ("give_up", "a", 0) in serving.moves, 5)
    finally:
        serving.finals_out.set()
        await owner.drain()
        await owner.hand_over()
        await nc.close()

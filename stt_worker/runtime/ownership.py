"""Elastic mode: this worker's partition leases in a JetStream KV bucket (STT_ELASTIC).

One bucket (`STT_OWNERSHIP_BUCKET`, its TTL `STT_LEASE_S`) holds a heartbeat per live worker
(`member.<id>`) and a lease per owned partition (`lease.<partition>` = the owner's id). Every
third of the TTL a worker rewrites its heartbeat, renews its leases with compare-and-set on
their last revision, reads the bucket, and makes the moves `core/ownership.moves` computes:
claims free partitions with `create` (two workers never both succeed) and gives surplus ones
up. What a partition's consumer and sessions need is the caller's (`take`, `give_up`).

A lease renewal that fails means ours expired (we stalled, or the server was away): if the
partition is still free we take it back at once, else somebody else holds it now and we stop
serving it. A worker that dies renews nothing: its heartbeat and
leases expire after the TTL and the others claim its partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from stt_worker.config import Settings
from stt_worker.core.ownership import moves

logger = logging.getLogger(__name__)

# What serving a partition takes, by partition: start serving it (take), stop (give_up),
# delete what only its owner may delete, just before its lease goes (forget); and whether
# what `take` started is still in place (intact).
PartitionCall = Callable[[int], Awaitable[None]]
PartitionCheck = Callable[[int], Awaitable[bool]]

_MEMBER, _LEASE = "member.", "lease."
_NOT_KEY_CHARS = re.compile(r"[^-_=a-zA-Z0-9]")


def worker_id(settings: Settings) -> str:
    """`STT_WORKER_ID`, or the host name with a random suffix: a restarted pod is a new member,
    so nothing of its predecessor's leases is mistaken for its own."""
    if settings.worker_id:
        return _NOT_KEY_CHARS.sub("_", settings.worker_id)
    host = _NOT_KEY_CHARS.sub("_", settings.hostname) or "stt"
    return f"{host}-{uuid.uuid4().hex[:6]}"


class Ownership:
    """Keeps this worker's fair share of the partitions leased, until `stop`."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        *,
        take: PartitionCall,
        give_up: PartitionCall,
        forget: PartitionCall,
        intact: PartitionCheck,
    ) -> None:
        self.me = worker_id(settings)
        self._settings = settings
        self._js = js
        self._take = take
        self._give_up = give_up
        self._forget = forget
        self._intact = intact
        self._kv: KeyValue | None = None
        self.owned: dict[int, int] = {}  # partition -> our lease's revision
        self._round_ok_at = time.monotonic()  # the last round that renewed every lease
        # Give-ups (and retakes) under way, beside the rounds: a give-up waits for finals, and
        # the rounds must go on renewing the other leases meanwhile.
        self._releasing: dict[int, asyncio.Task[None]] = {}
        # Renewals and deletions of our leases one at a time: a renewal racing a deletion
        # would bring the lease back, or forget one we still hold.
        self._leases = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None
        self._draining = False

    async def start(self) -> None:
        """Join (create the bucket when missing), make a first round, then keep going."""
        self._kv = await _bucket(self._js, self._settings)
        await self.round()
        self._loop = asyncio.create_task(self._run(), name="ownership")

    async def drain(self) -> None:
        """SIGTERM: leave the members (the others rebalance without us) but keep renewing our
        leases, so nobody takes a partition while its sessions finish here."""
        self._draining = True
        await asyncio.gather(*self._releasing.values(), return_exceptions=True)
        with contextlib.suppress(nats.errors.Error):
            await self._bucket.delete(_MEMBER + self.me)

    async def hand_over(self) -> None:
        """After the drain: stop renewing and give every partition up, for others to claim."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        for partition in sorted(self.owned):
            await self._give_up(partition)
            await self._delete_lease(partition)

    def health(self) -> str | None:
        """None while the rounds succeed; else why not: a worker connected to NATS whose leases
        lapse (KV unreachable, rounds failing) must not look ready."""
        late_s = time.monotonic() - self._round_ok_at
        if late_s <= self._settings.lease_s:
            return None
        lease_s = self._settings.lease_s
        return f"no lease round has succeeded for {late_s:.0f} s (STT_LEASE_S={lease_s:g})"

    @property
    def _bucket(self) -> KeyValue:
        assert self._kv is not None, "not started"
        return self._kv

    async def _run(self) -> None:
        every_s = self._settings.lease_s / 3
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.round()
                self._round_ok_at = time.monotonic()
            except (nats.errors.Error, TimeoutError) as exc:  # e.g. reconnecting: next round
                logger.warning("ownership round failed: %r", exc)
                # The bucket may be gone (a server that lost its store): make it again.
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    self._kv = await _bucket(self._js, self._settings)
            except Exception:  # the loop must go on, or every lease we hold expires
                logger.exception("ownership round failed")

    async def round(self) -> None:
        """Heartbeat, renew, look, move."""
        if not self._draining:
            await self._bucket.put(_MEMBER + self.me, b"")
        await self._renew()
        if self._draining:
            return
        members, owners = await self._snapshot()
        step = moves(self._settings.partitions, members, self.me, owners)
        for partition in step.release:
            self._beside(partition, self._release)
        for partition in step.claim:
            await self._claim(partition)

    async def _renew(self) -> None:
        lost, regained = [], []
        async with self._leases:
            for partition, revision in list(self.owned.items()):
                key = _LEASE + str(partition)
                try:
                    self.owned[partition] = await self._bucket.update(
                        key, self.me.encode(), last=revision
                    )
                except nats.js.errors.KeyWrongLastSequenceError:
                    try:  # expired (we stalled, or the server was away) but still free
                        self.owned[partition] = await self._bucket.create(key, self.me.encode())
                        regained.append(partition)
                    except nats.js.errors.KeyValueError:
                        del self.owned[partition]
                        lost.append(partition)
        for partition in lost:
            self._beside(partition, self._lost)
        for partition in regained:
            if self._draining:
                break  # its subscriptions are stopped already: the hand-over follows
            self._beside(partition, self._retaken)

    def _beside(self, partition: int, work: PartitionCall) -> None:
        """Run `work(partition)` as a task of its own, unless one for it is under way."""
        if partition not in self._releasing:
            self._releasing[partition] = asyncio.create_task(self._tracked(partition, work))

    async def _tracked(self, partition: int, work: PartitionCall) -> None:
        try:
            await work(partition)
        finally:
            del self._releasing[partition]

    async def _lost(self, partition: int) -> None:
        logger.error("lease of partition %d lost; no longer serving it", partition)
        try:
            await self._give_up(partition)
        except Exception:  # the others lost with it are given up all the same
            logger.exception("could not stop serving partition %d", partition)

    async def _retaken(self, partition: int) -> None:
        """A lease we took back after it expired: serve the partition afresh if somebody held
        it meanwhile; if that fails, let the lease go rather than renew one nobody serves."""
        try:
            if not await self._intact(partition):
                logger.warning("partition %d was served elsewhere meanwhile", partition)
                await self._give_up(partition)
                await self._take(partition)
        except Exception:
            logger.exception("could not serve partition %d again; letting it go", partition)
            await self._delete_lease(partition)

    async def _claim(self, partition: int) -> None:
        if self._draining or partition in self._releasing:  # SIGTERM came, or still giving up
            return
        try:
            revision = await self._bucket.create(_LEASE + str(partition), self.me.encode())
        except nats.js.errors.KeyValueError:
            return  # another worker was quicker
        self.owned[partition] = revision
        try:
            await self._take(partition)
        except Exception:
            logger.exception("could not serve partition %d; letting it go", partition)
            await self._delete_lease(partition)
            return
        logger.info("partition %d taken", partition, extra={"partition": partition})

    async def _release(self, partition: int) -> None:
        """Finish the partition's sessions here, then let the lease go (still renewed meanwhile,
        so nobody starts on the partition while its open utterances end)."""
        try:
            await self._give_up(partition)
            await self._delete_lease(partition)
            logger.info("partition %d handed over", partition, extra={"partition": partition})
        except Exception:  # still ours and renewed: a later round tries again
            logger.exception("could not hand partition %d over", partition)

    async def _delete_lease(self, partition: int) -> None:
        async with self._leases:
            revision = self.owned.pop(partition, None)
            if revision is None:
                return  # lost meanwhile: the lease and the consumer are somebody else's
            await self._forget(partition)
            with contextlib.suppress(nats.errors.Error):
                await self._bucket.delete(_LEASE + str(partition), last=revision)

    async def _snapshot(self) -> tuple[set[str], dict[int, str]]:
        """The live members and each leased partition's owner, as the bucket holds them now."""
        members: set[str] = set()
        owners: dict[int, str] = {}
        round_s = self._settings.lease_s / 3
        # Each snapshot is an ephemeral consumer: gone a round after we stop reading it.
        watcher = await self._bucket.watchall(ignore_deletes=True, inactive_threshold=round_s)
        try:
            async with asyncio.timeout(round_s):
                async for entry in watcher:
                    if entry is None:  # the end of what is stored
                        break
                    if entry.key.startswith(_MEMBER):
                        members.add(entry.key.removeprefix(_MEMBER))
                    elif entry.key.startswith(_LEASE) and entry.value:
                        owners[int(entry.key.removeprefix(_LEASE))] = entry.value.decode()
        finally:
            await watcher.stop()
        return members, owners


async def _bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    name = settings.ownership_bucket
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        config = KeyValueConfig(
            bucket=name, history=1, ttl=settings.lease_s, storage=StorageType.FILE
        )
        return await js.create_key_value(config)

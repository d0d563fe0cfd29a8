"""Horizontal scaling for real: the shipped NATS subject mapping, three workers sharing its
partitions, thirty sessions from unchanged publishers, each transcribed exactly once."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import nats
import pytest

from stt_worker.config import load_settings
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import publish_pcm, read_wav
from stt_worker.runtime.worker import Worker
from tests.helpers import REPO, SPEECH_DIR, Inbox, manifest_text
from tests.textnorm import wer

NATS_CONF = REPO / "k8s" / "nats" / "nats.conf"
CLIP = "lj_LJ001-0008.wav"
WORKERS = 3
SESSIONS = 30


def shipped_mapping(tmp_path: Path) -> tuple[Path, int]:
    """A server config holding exactly the shipped `mappings` block, and its partition count
    (ports and monitoring stay the test's own)."""
    text = NATS_CONF.read_text()
    block = re.search(r"^mappings\s*=\s*\{.*?^\}", text, re.MULTILINE | re.DOTALL)
    assert block, f"no mappings block in {NATS_CONF}"
    partitions = re.search(r"partition\((\d+),\s*1\)", block.group(0))
    assert partitions, "the mapping must partition on the session token"
    conf = tmp_path / "nats.conf"
    conf.write_text(block.group(0) + "\n")
    return conf, int(partitions.group(1))


@pytest.mark.timeout(300)
async def test_three_workers_transcribe_each_of_thirty_sessions_exactly_once(engine, tmp_path):
    conf, partitions = shipped_mapping(tmp_path)
    samples, rate = read_wav(SPEECH_DIR / CLIP)
    async with NatsServer(extra_args=("-c", str(conf))) as server:
        workers, stops, tasks = [], [], []
        for index in range(WORKERS):
            settings = load_settings(
                nats_url=server.url,
                partitions=partitions,
                replicas=WORKERS,
                hostname=f"stt-streaming-{index}",  # the StatefulSet ordinal picks the share
            )
            worker = Worker(settings, engine)
            stop = asyncio.Event()
            workers.append(worker)
            stops.append(stop)
            tasks.append(asyncio.create_task(worker.run(stop)))
        nc = await nats.connect(server.url)
        try:
            await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in workers)), 60)
            sessions = [f"p-{uuid.uuid4().hex[:12]}" for _ in range(SESSIONS)]
            inboxes = [await Inbox.open(nc, session) for session in sessions]
            # Publishers are unchanged: the seed's subject, ai.voice.stream.{session_id}.
            await asyncio.gather(
                *(
                    publish_pcm(nc, session, samples, sample_rate_hz=rate, speed=0)
                    for session in sessions
                )
            )
            results = await asyncio.gather(*(inbox.until_closed(120) for inbox in inboxes))
        finally:
            for stop in stops:
                stop.set()
            await asyncio.gather(*tasks)  # each worker drains: all it published is sent
            # Our round trip comes after everything the workers sent, so a duplicate final
            # or close from a second worker would be in the inboxes now.
            await nc.flush()
            await nc.close()

    reference = manifest_text(CLIP)
    for session, inbox, messages in zip(sessions, inboxes, results, strict=True):
        closes = [m for m in inbox.received if m.get("type") == "session_closed"]
        finals = [m for m in inbox.received if m.get("is_final") is True]
        assert len(closes) == 1, f"{session} closed {len(closes)} times"
        assert len(finals) == 1, f"{session}: {len(finals)} finals"
        assert wer(reference, finals[0]["transcript"]) <= 0.2
        assert not [m for m in messages if m.get("type") == "error"]
    opened = [
        w.telemetry.metrics.registry.get_sample_value("stt_sessions_opened_total") for w in workers
    ]
    assert sum(opened) == SESSIONS
    assert all(count > 0 for count in opened), f"a worker got no partition's sessions: {opened}"


def test_each_replica_takes_every_nth_partition_and_bad_setups_fail_early():
    def subjects(**overrides) -> list[str]:
        return load_settings(**overrides).stream_subjects()

    assert subjects() == ["ai.voice.stream.*"]  # the seed's subject when not partitioned
    assert subjects(partitions=12, replicas=3, hostname="stt-streaming-1") == [
        f"ai.voice.partitioned.{p}.*" for p in (1, 4, 7, 10)
    ]
    # One replica per partition by default; an explicit index beats the hostname.
    assert subjects(partitions=4, replica_index=2, hostname="x-0") == ["ai.voice.partitioned.2.*"]
    with pytest.raises(ValueError, match="STT_REPLICAS"):
        subjects(partitions=12, replicas=3, hostname="stt-streaming-3")
    with pytest.raises(ValueError, match="STT_REPLICA_INDEX"):
        subjects(partitions=12, hostname="laptop")

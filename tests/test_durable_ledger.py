"""Durable mode's acknowledgement ledger on its own: which messages may be acknowledged."""

from __future__ import annotations

import base64

from stt_worker.config import load_settings
from stt_worker.core.ledger import AckLedger
from stt_worker.core.protocol import Chunk, End, Playback, Start, StateChange


class Delivered:
    def __init__(self, name: str) -> None:
        self.name = name

    async def ack(self) -> None: ...

    async def in_progress(self) -> None: ...


def chunk(samples: int, channels: int = 1) -> Chunk:
    return Chunk(audio_b64=base64.b64encode(b"\0" * 2 * samples * channels).decode())


def names(held) -> list[str]:
    return [h.message.name for h in held]


def test_chunks_are_released_once_their_audio_is_settled():
    ledger = AckLedger()
    for seq in range(1, 5):  # 20 ms chunks at 48 kHz stereo: 320 samples each at 16 kHz
        ledger.hold(
            chunk(960, 2), Delivered(f"c{seq}"), seq, sample_rate_hz=48_000, channels=2, now=0
        )
    assert names(ledger.settled(319)) == []
    assert names(ledger.settled(640)) == ["c1", "c2"]
    assert ledger.source_seqs(700, 1280) == (3, 4)
    assert ledger.source_seqs(640, 641) == (3, 3)
    assert len(ledger) == 2


def test_playback_is_released_with_the_microphone_audio_received_before_it():
    ledger = AckLedger()
    opts = {"sample_rate_hz": 16_000, "channels": 1, "now": 0}
    ledger.hold(chunk(320), Delivered("c1"), 1, **opts)
    ledger.hold(Playback(audio=b"\0" * 640), Delivered("p2"), 2, **opts)
    ledger.hold(chunk(320), Delivered("c3"), 3, **opts)
    assert names(ledger.settled(320)) == ["c1", "p2"]
    assert names(ledger.settled(640)) == ["c3"]


def test_start_and_turn_stay_until_close_and_a_drain_leaves_them_to_the_next_worker():
    ledger = AckLedger()
    opts = {"sample_rate_hz": 16_000, "channels": 1, "now": 0.0}
    assert ledger.hold(Start(), Delivered("start"), 1, **opts) == []
    ledger.hold(StateChange(state="responding"), Delivered("turn1"), 2, **opts)
    superseded = ledger.hold(StateChange(state="listening"), Delivered("turn2"), 3, **opts)
    assert names(superseded) == ["turn1"]  # only the latest turn matters to a replay
    ledger.hold(chunk(320), Delivered("c"), 4, **opts)
    ledger.hold(End(), Delivered("end"), 5, **opts)
    assert names(ledger.settled(10**9)) == ["c"]  # `end` waits for the close
    assert names(ledger.release_all()) == ["end", "start", "turn2"]


def test_a_drain_leaves_the_open_utterances_audio_and_the_config_to_the_next_owner():
    ledger = AckLedger()
    opts = {"sample_rate_hz": 16_000, "channels": 1, "now": 0.0}
    ledger.hold(Start(), Delivered("start"), 1, **opts)
    ledger.hold(StateChange(state="listening"), Delivered("turn"), 2, **opts)
    for seq, name in enumerate(("silence", "onset", "word"), start=3):
        ledger.hold(chunk(320), Delivered(name), seq, **opts)  # each 320 samples
    # The open utterance began at sample 400, inside "onset": only "silence" is settled.
    assert names(ledger.hand_over(first_unsettled_sample=400)) == ["silence"]
    assert len(ledger) == 0  # the rest is the next owner's, never acknowledged here


def test_long_held_messages_are_reported_once_per_period():
    ledger = AckLedger()
    ledger.hold(Start(), Delivered("start"), 1, sample_rate_hz=16_000, channels=1, now=0.0)
    assert [m.name for m in ledger.stale(now=5.0, older_than_s=10)] == []
    assert [m.name for m in ledger.stale(now=10.0, older_than_s=10)] == ["start"]
    assert [m.name for m in ledger.stale(now=15.0, older_than_s=10)] == []


def test_each_partition_share_has_its_own_consumer_over_its_partitions():
    settings = load_settings(partitions=4, replicas=2, replica_index=1)
    assert settings.consumer_name() == "stt-streaming-1-of-2"
    assert settings.stream_subjects() == [
        "ai.voice.partitioned.1.*",
        "ai.voice.partitioned.3.*",
    ]
    assert settings.jetstream_subjects() == ["ai.voice.partitioned.*.*"]
    plain = load_settings()
    assert plain.consumer_name() == "stt-streaming"
    assert plain.jetstream_subjects() == ["ai.voice.stream.*"]

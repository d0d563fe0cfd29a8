"""The worker as deployments run it (`python stt_streaming_local.py`), stopped as pods are:
SIGTERM in a rollout, SIGKILL when the kernel or the node kills it.

Every test cuts a clip mid-word, so an utterance is open when the signal arrives.
"""

from __future__ import annotations

import signal
import time
import uuid

from stt_worker.runtime.publisher import StreamStats, publish_pcm, read_wav
from tests.helpers import SPEECH_DIR, Inbox, manifest_text
from tests.textnorm import wer
from tests.worker_process import WorkerProcess

CLIP = "ls_1089-134686-0000.wav"  # 10.4 s of unbroken speech
# 4 s in, mid-sentence: tiny.en hears "He hoped there would be stew for dinner, turnips and
# carrots and", and the rest is "bruised potatoes and fat mutton pieces ...".
CUT_S = 4.0
HEAD_WORD = "stew"
DRAIN_TIMEOUT_S = 10


def sid(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def finals(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m.get("type") == "transcript" and m["is_final"]]


async def stream_head(
    nc, session: str, speaker_id: str | None = None, subject_prefix: str = "ai.voice.stream"
) -> StreamStats:
    """The clip's first CUT_S seconds, as fast as possible, without `end`: an open utterance."""
    samples, rate = read_wav(SPEECH_DIR / CLIP)
    head = samples[: int(CUT_S * rate)]
    return await publish_pcm(
        nc, session, head, sample_rate_hz=rate, speed=0, send_end=False, speaker_id=speaker_id,
        subject_prefix=subject_prefix,
    )  # fmt: skip


async def stream_tail(
    nc, session: str, stats: StreamStats, subject_prefix: str = "ai.voice.stream"
) -> None:
    """The rest of the clip on the same session (continuing its `seq`), then `end`."""
    samples, rate = read_wav(SPEECH_DIR / CLIP)
    tail = samples[int(CUT_S * rate) :]
    await publish_pcm(
        nc, session, tail, sample_rate_hz=rate, speed=0, send_start=False, stats=stats,
        subject_prefix=subject_prefix,
    )  # fmt: skip


def worker_env(nats_url: str, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "STT_ENGINE": "faster-whisper",
        "STT_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        **extra,
    }


async def test_sigterm_mid_utterance_publishes_its_final_and_exits_zero_in_time(nats_url, nc):
    session = sid("sigterm")
    inbox = await Inbox.open(nc, session)
    async with WorkerProcess(worker_env(nats_url)) as worker:
        await stream_head(nc, session)
        partial = await inbox.until(lambda m: m.get("is_partial") is True, within_s=60)
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = await worker.wait(DRAIN_TIMEOUT_S + 5)
        elapsed_s = time.monotonic() - signalled
        assert code == 0, worker.tail
    # The process is gone: whatever arrives now was published before it exited.
    messages = await inbox.until_closed(within_s=5)
    assert elapsed_s < DRAIN_TIMEOUT_S, f"drain took {elapsed_s:.1f} s"
    (final,) = finals(messages)
    assert final["utterance_id"] == partial["utterance_id"]
    assert final["end_reason"] == "shutdown"
    assert HEAD_WORD in final["transcript"].lower(), final["transcript"]
    closed = messages[-1]
    assert closed["type"] == "session_closed" and closed["reason"] == "shutdown"
    assert any("draining" in line for line in worker.log)


async def test_sigkill_mid_utterance_with_core_nats_loses_the_audio_it_held(nats_url, nc):
    """What docs/operations.md (Durability) promises: nothing replays a killed worker's audio.

    The next worker sees only what is published after it subscribed: the rest of the clip,
    as a session it never heard start.
    """
    session = sid("sigkill-core")
    inbox = await Inbox.open(nc, session)
    async with WorkerProcess(worker_env(nats_url)) as worker:
        stats = await stream_head(nc, session)
        await inbox.until(lambda m: m.get("is_partial") is True, within_s=60)
        await worker.kill()
    async with WorkerProcess(worker_env(nats_url)):
        await stream_tail(nc, session, stats)
        messages = await inbox.until_closed(within_s=60)
    text = " ".join(m["transcript"] for m in finals(messages)).lower()
    assert HEAD_WORD not in text, "the killed worker's audio came back"
    assert "mutton" in text or "sauce" in text, text  # the tail, heard by the new worker
    assert finals(messages)[0]["utterance_id"] == 1  # a new session to this worker
    assert wer(manifest_text(CLIP), text) > 0.3  # most of the sentence is gone

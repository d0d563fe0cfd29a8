"""The `turn` end-of-turn mode end to end: a real nats-server, tiny.en and Smart Turn, real
speech streamed at real-time pace."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from stt_worker.runtime.publisher import publish_pcm, read_wav
from tests.helpers import SPEECH_DIR, Inbox

RATE = 16_000


def room_tone(samples: np.ndarray, seconds: float) -> np.ndarray:
    """`seconds` of the recording's own background: its quietest 200 ms, repeated."""
    frames = samples[: samples.size // 320 * 320].reshape(-1, 320).astype(np.float64)
    energy = np.convolve((frames**2).mean(axis=1), np.ones(10), "valid")
    quietest = samples[int(np.argmin(energy)) * 320 :][: 10 * 320]
    return np.resize(quietest, int(seconds * RATE))


def clip(name: str) -> np.ndarray:
    samples, rate = read_wav(SPEECH_DIR / name)
    assert rate == RATE
    return samples.reshape(-1)


async def finals_of(make_worker, nc, samples: np.ndarray, **settings) -> list[dict]:
    _, stop, task = await make_worker(return_handles=True, **settings)
    session = f"t-{uuid.uuid4().hex[:10]}"
    inbox = await Inbox.open(nc, session)
    await publish_pcm(nc, session, samples, sample_rate_hz=RATE, speed=1)
    messages = await inbox.until_closed(within_s=60)
    stop.set()
    await task  # one worker at a time on the shared subject
    return [m for m in messages if m.get("type") == "transcript" and m["is_final"]]


async def test_a_finished_sentence_ends_at_the_turn_check_with_its_text(make_worker, nc):
    """ "He could wait no longer." then silence: in turn mode the check at
    80 ms of pause hears a finished turn and its text is the final; the fixed rule waits
    its 500 ms."""
    samples = clip("ls_1089-134691-0000.wav")
    samples = np.concatenate([samples, room_tone(samples, 1.5)])
    (turn,) = await finals_of(make_worker, nc, samples, endpoint_mode="turn")
    (fixed,) = await finals_of(make_worker, nc, samples, endpoint_mode="fixed")
    assert turn["end_reason"] == fixed["end_reason"] == "silence"
    assert "longer" in turn["transcript"].lower()
    waited_less_s = fixed["audio_end_s"] - turn["audio_end_s"]
    assert waited_less_s == pytest.approx(0.5 - 0.08, abs=0.041)


async def test_a_sentence_with_a_pause_at_a_word_gap_is_not_cut_in_two(make_worker, nc):
    """ "After early nightfall, the yellow lamps would light up here and there, | the squalid
    quarter of the brothels." with 700 ms of room tone at the gap after "there," (4.14-4.36
    s, tiny.en's word timestamps): the fixed 500 ms rule cuts it there; turn mode holds."""
    samples = clip("ls_1089-134686-0002.wav")
    gap = int(4.25 * RATE)
    tone = room_tone(samples, 0.7)
    samples = np.concatenate([samples[:gap], tone, samples[gap:], room_tone(samples, 1.5)])
    (turn,) = await finals_of(make_worker, nc, samples, endpoint_mode="turn")
    assert "there" in turn["transcript"].lower() and "brothels" in turn["transcript"].lower()
    fixed = await finals_of(make_worker, nc, samples, endpoint_mode="fixed")
    assert len(fixed) == 2  # the pause is long enough to end a turn by silence alone

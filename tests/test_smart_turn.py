"""Smart Turn v3.2 on real speech: the installed model, our own log-mel features."""

from __future__ import annotations

import asyncio
import wave
from functools import cache

import numpy as np
import pytest

from stt_worker.core.audio import Pcm16
from stt_worker.core.endpoint import TurnRule
from stt_worker.core.jobs import Job, JobKind
from stt_worker.core.phases import Event
from stt_worker.engines.base import Audio, DecodeOptions, Engine, Transcript
from stt_worker.engines.smart_turn import WINDOW_SAMPLES, SmartTurn, load_smart_turn, log_mel
from stt_worker.engines.turn_check import TurnCheckEngine
from stt_worker.runtime.scheduler import InferenceScheduler
from tests.helpers import SPEECH_DIR
from tests.test_scheduler import GatedEngine, job

# "After early nightfall, the yellow lamps would light up here and there, the squalid quarter
# of the brothels." Word ends measured with tiny.en's word timestamps: "there," ends at
# 4.14 s and the next word starts at 4.36 s; "brothels." ends at 6.28 s.
CLIP = "ls_1089-134686-0002.wav"
SENTENCE_END_S = 6.28
MID_PHRASE_END_S = 4.14
PAUSE_HEARD_S = 0.2  # a turn check runs a short pause after the last word


@cache
def _clip() -> Pcm16:
    with wave.open(str(SPEECH_DIR / CLIP)) as file:
        return np.frombuffer(file.readframes(file.getnframes()), dtype=np.int16)


def _until(seconds: float) -> Pcm16:
    return _clip()[: int((seconds + PAUSE_HEARD_S) * 16_000)]


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    return load_smart_turn()


def test_a_finished_sentence_scores_high_and_a_cut_phrase_low(smart_turn: SmartTurn):
    finished = smart_turn.probability(_until(SENTENCE_END_S))
    cut = smart_turn.probability(_until(MID_PHRASE_END_S))
    assert finished > 0.8, finished
    assert cut < 0.3, cut
    assert finished - cut > 0.5


def test_features_match_the_models_own_extractor():
    # pipecat's vendored copy of transformers' WhisperFeatureExtractor is what the model was
    # served with; ours must agree on both a short (zero-padded) and a long (cut) clip.
    from pipecat.audio.turn.smart_turn._whisper_features import compute_whisper_log_mel_features

    long = np.concatenate([_clip(), _clip()])
    for samples in (_until(MID_PHRASE_END_S), long):
        reference = samples[-WINDOW_SAMPLES:].astype(np.float32) / 32768.0
        reference = np.pad(reference, (WINDOW_SAMPLES - reference.size, 0))
        expected = compute_whisper_log_mel_features(reference)
        assert log_mel(samples).shape == expected.shape == (80, 800)
        np.testing.assert_allclose(log_mel(samples), expected, atol=1e-4)


class _Counting(Engine):
    """The real engine, counting its decodes."""

    def __init__(self, inner: Engine) -> None:
        self.inner, self.info, self.decodes = inner, inner.info, 0

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        self.decodes += 1
        return await self.inner.transcribe(audio, options)


async def test_a_check_that_sounds_mid_turn_skips_its_decode(engine: Engine):
    """Turn mode's checks: Smart Turn first; a pause that sounds mid-turn holds without a
    decode (no text), one that sounds like an end is decoded."""
    counting = _Counting(engine)
    checks = TurnCheckEngine(counting, smart_turn=True, hold_below=0.9)
    await checks.load()
    options = DecodeOptions(end_probability=True, turn_probability=True)
    try:
        mid = await checks.transcribe(_until(MID_PHRASE_END_S) / 32768.0, options)
        assert mid.text == "" and mid.turn_prob is not None and mid.turn_prob < 0.9
        assert counting.decodes == 0
        end = await checks.transcribe(_until(SENTENCE_END_S) / 32768.0, options)
        assert "brothels" in end.text.lower() and end.turn_prob >= 0.9
        assert counting.decodes == 1
        assert TurnRule().judge(mid.text, mid.end_prob, mid.turn_prob) is Event.TURN_HOLDS
    finally:
        checks.close()


def _check(samples: Pcm16) -> Job:
    return Job(1, JobKind.TURN_CHECK, (samples,), 0.0, samples.size / 16_000, True)


async def test_the_scheduler_has_smart_turn_hear_checks_before_partials_and_decodes_only_an_end():
    """Checks go before other sessions' partials: Smart Turn hears each in a slot, one that
    sounds mid-turn is answered without a decode, one that sounds like an end is decoded
    next (before the partial) and carries Smart Turn's verdict."""
    gated = GatedEngine(parallelism=1)
    checks = TurnCheckEngine(gated, smart_turn=True, hold_below=0.9)
    await checks.load()
    answers: dict[str, Transcript] = {}
    answered = asyncio.Condition()

    async def on_done(key, job_: Job, outcome, wait_s: float) -> None:
        async with answered:
            answers[key] = outcome
            answered.notify_all()

    scheduler = InferenceScheduler(
        gated, on_done, concurrency=1, partial_engine=checks, screen=checks
    )
    runner = asyncio.create_task(scheduler.run())
    try:
        scheduler.submit("busy", job(1, 5.0, final=True))
        await gated.started_at_least(1)
        scheduler.submit("later", job(1, 2.0, final=False))
        scheduler.submit("mid", _check(_until(MID_PHRASE_END_S)))
        scheduler.submit("end", _check(_until(SENTENCE_END_S)))
        gated.release.release()
        await gated.started_at_least(2)
        assert gated.started == [5.0, pytest.approx(SENTENCE_END_S + PAUSE_HEARD_S)]
        assert answers["mid"].text == "" and answers["mid"].turn_prob < 0.9
        gated.release.release()
        gated.release.release()
        async with asyncio.timeout(10), answered:
            await answered.wait_for(lambda: "later" in answers)
        assert answers["end"].turn_prob >= 0.9 and gated.started[2] == 2.0
    finally:
        runner.cancel()
        checks.close()

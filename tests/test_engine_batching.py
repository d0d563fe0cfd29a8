"""Batched decodes (`Engine.transcribe_batch`) against the same jobs decoded one by one, on
the real models and real speech: the same text, scores and word times for every job."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stt_worker.config import load_settings
from stt_worker.core.errors import EngineError
from stt_worker.engines.base import Audio, DecodeOptions, Engine, Transcript
from stt_worker.engines.faster_whisper import FasterWhisperEngine
from tests.test_engine import load_clip

PARTIAL = DecodeOptions(full_window_retry=False)
FINAL = DecodeOptions()


def mixed_jobs() -> list[tuple[Audio, DecodeOptions]]:
    """Finals and partial-like prefixes of mixed lengths: some share a window size, one has
    a context prompt, one asks for word times, one is silence and one spans two windows."""
    jfk, stuff = load_clip("jfk.wav"), load_clip("ls_1089-134686-0001.wav")
    short, mid = load_clip("lj_LJ001-0008.wav"), load_clip("ls_1089-134691-0001.wav")
    return [
        (jfk, FINAL),
        (jfk[: 16_000 * 4], PARTIAL),
        (stuff, FINAL),
        (short, PARTIAL),
        (mid, dataclasses.replace(FINAL, word_timestamps=True)),
        (mid[: 16_000 * 3], dataclasses.replace(PARTIAL, prompt="He hoped there would be stew.")),
        (short, FINAL),
        (np.zeros(16_000, np.float32), PARTIAL),
        (load_clip("long_lj_LJ001-0001_to_0005.wav"), FINAL),
    ]


def assert_same(batched: list[Transcript | EngineError], alone: list[Transcript]) -> None:
    assert len(batched) == len(alone)
    for got, want in zip(batched, alone, strict=True):
        assert isinstance(got, Transcript), got
        assert got.text == want.text
        assert got.no_speech_prob == pytest.approx(want.no_speech_prob, abs=1e-3)
        for seg, ref in zip(got.segments, want.segments, strict=True):
            assert seg.avg_logprob == pytest.approx(ref.avg_logprob, abs=1e-3)
        assert [w.word for w in got.words] == [w.word for w in want.words]
        for word, ref in zip(got.words, want.words, strict=True):
            assert word.start_s == pytest.approx(ref.start_s, abs=0.05)


def count_generate_calls(engine: FasterWhisperEngine, monkeypatch: pytest.MonkeyPatch) -> list:
    """The batch size of each generate call the engine makes from now on."""
    sizes: list[int] = []
    generate = engine.generate

    def counted(encoded, prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return generate(encoded, prompts, *args, **kwargs)

    monkeypatch.setattr(engine, "generate", counted)
    return sizes


@pytest.fixture(scope="module")
def tiny() -> Iterator[FasterWhisperEngine]:
    engine = FasterWhisperEngine(load_settings(max_concurrent_inferences=1))
    yield engine
    engine.close()


async def test_a_batch_decodes_as_each_job_alone(
    tiny: FasterWhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = mixed_jobs()
    alone = [tiny.transcribe_blocking(audio, options) for audio, options in jobs]
    assert alone[0].text and alone[4].words and not alone[7].text  # the jobs test something
    sizes = count_generate_calls(tiny, monkeypatch)
    batched = await tiny.transcribe_batch(jobs)
    assert_same(batched, alone)
    # Jobs that share a window and prompt length went together; silence was not decoded.
    assert max(sizes) >= 2 and len(sizes) < len(jobs) - 1, sizes
    assert all(t.inference_s > 0 and t.audio_s > 0 for t in batched if isinstance(t, Transcript))


async def test_the_default_batch_decodes_one_by_one(tiny: FasterWhisperEngine) -> None:
    class OneByOne(Engine):
        def __init__(self) -> None:
            self.calls = 0

        async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
            self.calls += 1
            if options.language == "zzq":
                raise EngineError("no such language")
            return await tiny.transcribe(audio, options)

    engine, jfk = OneByOne(), load_clip("jfk.wav")
    outcomes = await engine.transcribe_batch([(jfk, FINAL), (jfk, DecodeOptions(language="zzq"))])
    assert engine.calls == 2 and engine.batch_engine is None
    assert isinstance(outcomes[0], Transcript) and "country" in outcomes[0].text
    assert isinstance(outcomes[1], EngineError)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FasterWhisperEngine]:
    cache = Path(tmp_path_factory.mktemp("model-cache"))
    settings = load_settings(
        whisper_model_size="base", whisper_model_cache_dir=str(cache), max_concurrent_inferences=1
    )
    engine = FasterWhisperEngine(settings)
    yield engine
    engine.close()


async def test_multilingual_batch_detects_each_language_and_isolates_a_bad_job(
    base: FasterWhisperEngine,
) -> None:
    jfk, stuff = load_clip("jfk.wav"), load_clip("ls_1089-134686-0001.wav")
    jobs = [(jfk[: 16_000 * 5], PARTIAL), (stuff, FINAL), (stuff, FINAL)]
    alone = [base.transcribe_blocking(audio, options) for audio, options in jobs]
    assert_same(await base.transcribe_batch(jobs), alone)
    assert all(t.language == "en" for t in alone)
    # A language the model does not know fails its own job only.
    bad = [*jobs[:2], (stuff, DecodeOptions(language="zzq"))]
    outcomes = await base.transcribe_batch(bad)
    assert_same(outcomes[:2], alone[:2])
    assert isinstance(outcomes[2], EngineError)


async def test_jobs_share_a_batch_key_only_when_one_generate_call_takes_them(
    tiny: FasterWhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CTranslate2 takes prompts of one token length per generate call, and live sessions'
    prompts (their recent finals) rarely share one: the key keeps them apart, so the
    scheduler does not batch jobs that would decode one after another."""
    audio = load_clip("jfk.wav")[: 16_000 * 4]
    prompts = ("Hello there.", "Good night.", "Okay, so what do we do about the budget?")
    jobs = [(audio, dataclasses.replace(PARTIAL, prompt=prompt)) for prompt in prompts]
    lengths = [len(tiny.prompt_tokens("en", PARTIAL.task, prompt)) for prompt in prompts]
    assert lengths[0] == lengths[1] != lengths[2]  # the case holds on this tokenizer
    keys = [tiny.batch_key(len(audio), options) for _, options in jobs]
    assert keys[0] == keys[1] != keys[2]
    sizes = count_generate_calls(tiny, monkeypatch)
    await tiny.transcribe_batch(jobs[:2])
    assert sizes == [2]  # what shares a key decodes in one call

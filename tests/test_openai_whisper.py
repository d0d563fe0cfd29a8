"""Tests of the CTranslate2 -> openai-whisper converter and the openai-whisper (PyTorch) engine.

Skipped without the `torch` extra. Runs tiny.en on CPU in float32, or with
STT_TEST_DEVICE=cuda on the GPU in fp16; openai-whisper's own download is patched to fail,
so no test can fetch weights.
"""

from __future__ import annotations

import logging
import shutil
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
whisper = pytest.importorskip("whisper")

from stt_worker.config import load_settings  # noqa: E402
from stt_worker.core.errors import ModelNotFoundError  # noqa: E402
from stt_worker.engines import create_engine, ct2_convert  # noqa: E402
from stt_worker.engines import openai_whisper as engine_module  # noqa: E402
from stt_worker.engines.base import DecodeOptions  # noqa: E402
from stt_worker.engines.faster_whisper import FasterWhisperEngine, WindowPolicy  # noqa: E402
from stt_worker.engines.models import resolve_model_path  # noqa: E402
from stt_worker.engines.openai_whisper import OpenAIWhisperEngine  # noqa: E402
from tests.helpers import SPEECH_DIR, TEST_DEVICE, manifest_text  # noqa: E402
from tests.textnorm import normalise, wer  # noqa: E402

SAMPLE_RATE_HZ = 16_000
CLIPS = ("jfk.wav", "ls_1089-134691-0001.wav", "lj_LJ001-0006.wav")
TINY_EN_DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 1500,
    "n_audio_state": 384,
    "n_audio_head": 6,
    "n_audio_layer": 4,
    "n_vocab": 51864,
    "n_text_ctx": 448,
    "n_text_state": 384,
    "n_text_head": 6,
    "n_text_layer": 4,
}


def load_clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH_DIR / name)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


@pytest.fixture(scope="module", autouse=True)
def no_downloads() -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("openai-whisper tried to download a model")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(whisper, "_download", refuse)
        yield


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("openai-whisper-cache"))


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    return {name: load_clip(name) for name in CLIPS}


@pytest.fixture(scope="module")
def engine(cache_dir: str) -> Iterator[OpenAIWhisperEngine]:
    settings = load_settings(
        whisper_model_size="tiny.en", whisper_device=TEST_DEVICE, whisper_model_cache_dir=cache_dir
    )
    created = create_engine(settings, "openai-whisper")
    assert isinstance(created, OpenAIWhisperEngine)
    yield created
    created.close()


@pytest.fixture(scope="module")
def torch_texts(engine: OpenAIWhisperEngine, clips: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: engine.transcribe_blocking(clips[name], DecodeOptions()).text for name in CLIPS}


def test_parses_the_bundled_tiny_en_completely() -> None:
    # read_model_bin raises unless it consumes exactly the file's bytes.
    model = ct2_convert.read_model_bin(resolve_model_path("tiny.en") / "model.bin")
    assert (model.spec_name, model.spec_revision) == ("WhisperSpec", 3)
    assert len(model.variables) == 148
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert model.variables["decoder/embeddings/weight"].shape == (51864, 384)


def test_rejects_truncated_and_padded_files(tmp_path: Path) -> None:
    data = (resolve_model_path("tiny.en") / "model.bin").read_bytes()
    for name, content in (("short.bin", data[:100_000]), ("long.bin", data + b"\0")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError):
            ct2_convert.read_model_bin(tmp_path / name)


def test_int8_weights_are_dequantised_with_their_scales() -> None:
    # The bundled files are float16; quantise two weights as CTranslate2's int8 mode does
    # (one scale per output row, conv kernels flattened per row) and convert them back.
    model = ct2_convert.read_model_bin(resolve_model_path("tiny.en") / "model.bin")
    variables, dtypes = dict(model.variables), dict(model.dtypes)
    for name in ("encoder/conv1/weight", "decoder/layer_0/attention/linear_1/weight"):
        value = variables[name].astype(np.float32)
        scale = 127.0 / np.abs(value.reshape(len(value), -1)).max(axis=1)
        quantised = np.rint(value * scale.reshape(-1, *[1] * (value.ndim - 1))).astype(np.int8)
        variables[name], dtypes[name] = quantised, 1
        variables[name + "_scale"], dtypes[name + "_scale"] = scale.astype(np.float32), 0
    state, _ = ct2_convert.whisper_state_dict(replace(model, variables=variables, dtypes=dtypes))
    reference, _ = ct2_convert.whisper_state_dict(model)
    for key in ("encoder.conv1.weight", "decoder.blocks.0.cross_attn.key.weight"):
        np.testing.assert_allclose(state[key], reference[key], rtol=0, atol=0.01)
        assert not np.array_equal(state[key], reference[key])


def test_cli_checkpoint_loads_with_whisper_load_model(tmp_path: Path) -> None:
    out = tmp_path / "tiny.en.pt"
    assert ct2_convert.main([str(resolve_model_path("tiny.en")), str(out)]) == 0
    model = whisper.load_model(str(out), device="cpu")
    assert vars(model.dims) == TINY_EN_DIMS
    assert not model.is_multilingual
    heads = torch.load(out, weights_only=True)["alignment_heads"]
    assert heads == [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="exact in float32 on both sides; fp16 on GPU")
def test_conversion_is_exact_against_ctranslate2_float32(
    torch_texts: dict[str, str], clips: dict[str, np.ndarray]
) -> None:
    # Same weights, precision and 30 s window on both sides: the text must be identical.
    ct2 = FasterWhisperEngine(
        load_settings(
            whisper_model_size="tiny.en", whisper_compute_type="float32", whisper_device="cpu"
        ),
        window=WindowPolicy(pad_s=30),
    )
    try:
        for name in CLIPS:
            assert torch_texts[name] == ct2.transcribe_blocking(clips[name], DecodeOptions()).text
    finally:
        ct2.close()


def test_transcripts_match_the_default_ctranslate2_engine(
    torch_texts: dict[str, str], clips: dict[str, np.ndarray]
) -> None:
    ct2 = create_engine(
        load_settings(whisper_model_size="tiny.en", whisper_device=TEST_DEVICE), "faster-whisper"
    )
    try:
        ct2_texts = {n: ct2.transcribe_blocking(clips[n], DecodeOptions()).text for n in CLIPS}
    finally:
        ct2.close()
    # jfk and ls_1089-134691-0001 agree word for word. On lj_LJ001-0006 the default engine's
    # 8 s window hears "mention" and the 30 s window "mentioning" (float32 CTranslate2 at
    # 8 s says "mention" too), so it is the window, not int8: compare pooled WER instead.
    for name in CLIPS[:2]:
        assert normalise(torch_texts[name]) == normalise(ct2_texts[name])
    pooled = wer(" ".join(ct2_texts.values()), " ".join(torch_texts.values()))
    assert pooled <= 0.05, (ct2_texts, torch_texts)


def test_jfk_against_the_reference(engine: OpenAIWhisperEngine, torch_texts: dict[str, str]):
    assert wer(manifest_text("jfk.wav"), torch_texts["jfk.wav"]) <= 0.15
    # STT_TEST_DEVICE=cuda must not quietly fall back to the CPU.
    assert engine.info.device == TEST_DEVICE
    assert engine.info.extra["dtype"] == ("float32" if TEST_DEVICE == "cpu" else "float16")


def test_audio_over_30_s_is_decoded_in_windows(engine: OpenAIWhisperEngine) -> None:
    # A short clip padded to exactly 30 s, then another: one clip per window, cheap to decode.
    # (Not 30 s of bare silence: both engines read a window of it as "you", past the rule.)
    first, second = "ls_1089-134691-0000.wav", "lj_LJ001-0008.wav"
    padded = np.zeros(30 * SAMPLE_RATE_HZ, np.float32)
    clip = load_clip(first)
    padded[: len(clip)] = clip
    audio = np.concatenate([padded, load_clip(second)])
    result = engine.transcribe_blocking(audio, DecodeOptions())
    assert [s.start_s for s in result.segments] == [0.0, 30.0]
    assert [normalise(s.text) for s in result.segments] == [
        normalise(manifest_text(first)),
        normalise(manifest_text(second)),
    ]


def test_silence_gives_empty_text(engine: OpenAIWhisperEngine) -> None:
    result = engine.transcribe_blocking(np.zeros(2 * SAMPLE_RATE_HZ, np.float32), DecodeOptions())
    assert result.text == ""
    assert result.no_speech_prob > 0.6


def test_cuda_without_a_gpu_falls_back_to_cpu_with_one_warning(
    cache_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Patched so the fallback is tested on GPU machines too.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = load_settings(
        whisper_model_size="tiny.en", whisper_device="cuda", whisper_model_cache_dir=cache_dir
    )
    with caplog.at_level(logging.INFO):
        fallback = OpenAIWhisperEngine(settings)
    fallback.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "WHISPER_DEVICE=cuda" in warnings[0].getMessage()
    assert "CPU" in warnings[0].getMessage()
    assert fallback.info.device == "cpu"
    assert fallback.info.extra["dtype"] == "float32"


def test_openai_name_without_local_checkpoint_is_not_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "WHISPER_DOWNLOAD_ROOT", tmp_path / "whisper")
    settings = load_settings(
        whisper_model_size="medium", whisper_device="cpu", whisper_model_cache_dir=str(tmp_path)
    )
    with pytest.raises(ModelNotFoundError) as raised:
        OpenAIWhisperEngine(settings)
    message = str(raised.value)
    assert str(tmp_path / "whisper" / "medium.pt") in message
    assert "whisper.load_model('medium')" in message
    assert "WHISPER_MODEL_SIZE" in message


def test_openai_name_found_in_the_cache_dir(cache_dir: str, tmp_path: Path) -> None:
    shutil.copy(ct2_convert.ensure_converted("tiny.en", cache_dir), tmp_path / "small.pt")
    assert engine_module.resolve_checkpoint("small", str(tmp_path)) == tmp_path / "small.pt"


def test_conversion_is_cached(engine: OpenAIWhisperEngine, cache_dir: str) -> None:
    first = ct2_convert.ensure_converted("tiny.en", cache_dir)
    mtime_ns = first.stat().st_mtime_ns
    assert ct2_convert.ensure_converted("tiny.en", cache_dir) == first
    assert first.stat().st_mtime_ns == mtime_ns
    assert engine.info.extra["checkpoint"] == str(first)
    # One checkpoint, no temp files left behind.
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_the_torch_engine_needs_neither_ctranslate2_nor_faster_whisper() -> None:
    """A ROCm image may carry only torch and openai-whisper: the engine module must import
    with the CTranslate2 stack absent (None in sys.modules blocks an import)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['ctranslate2'] = sys.modules['faster_whisper'] = None\n"
        "import stt_worker.engines.openai_whisper\n"
        "from stt_worker.engines import create_engine\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_a_batch_on_torch_decodes_as_each_job_alone(
    engine: OpenAIWhisperEngine, clips: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = DecodeOptions(full_window_retry=False)
    jobs = [
        (clips["jfk.wav"], DecodeOptions()),
        (clips["jfk.wav"], partial),  # the same length, so the same token cap as the first
        (clips["ls_1089-134691-0001.wav"], replace(partial, word_timestamps=True)),
        (clips["jfk.wav"][: 3 * SAMPLE_RATE_HZ], partial),
        (np.zeros(SAMPLE_RATE_HZ, np.float32), partial),  # silence: not decoded
        (clips["lj_LJ001-0006.wav"], replace(partial, prompt="Printing, in the only sense.")),
    ]
    alone = [engine.transcribe_blocking(audio, options) for audio, options in jobs]
    calls: list[int] = []
    decode = whisper.decode

    def counted(model, mel, options):
        calls.append(mel.shape[0] if mel.ndim == 3 else 1)
        return decode(model, mel, options)

    monkeypatch.setattr(engine_module.whisper, "decode", counted)
    batched = await engine.transcribe_batch(jobs)
    # One prompt and one token cap a call: only the two jobs of one length went together.
    assert sorted(calls) == [1, 1, 1, 2]
    for got, want in zip(batched, alone, strict=True):
        assert not isinstance(got, Exception), got
        assert got.text == want.text
        assert got.no_speech_prob == pytest.approx(want.no_speech_prob, abs=1e-3)
        assert [w.word for w in got.words] == [w.word for w in want.words]
        for segment, reference in zip(got.segments, want.segments, strict=True):
            assert segment.avg_logprob == pytest.approx(reference.avg_logprob, abs=1e-3)
    assert alone[2].words and alone[0].text and not alone[4].text


def test_jobs_under_different_token_caps_never_share_a_batch(engine: OpenAIWhisperEngine) -> None:
    """A batch decodes to one cap; an item cut back to its own would keep the longer
    decode's avg_logprob, which the hallucination check reads, so caps must not mix."""
    three_s, final = 3 * SAMPLE_RATE_HZ, DecodeOptions()
    assert engine.batch_key(three_s, final) == engine.batch_key(three_s + 100, final)
    assert engine.batch_key(three_s, final) != engine.batch_key(2 * three_s, final)
    capped = DecodeOptions(max_new_tokens=20)  # below both lengths' own caps
    assert engine.batch_key(three_s, capped) == engine.batch_key(2 * three_s, capped)

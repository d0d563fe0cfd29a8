"""OpenAIWhisperEngine: openai-whisper on PyTorch, for GPUs CTranslate2 does not drive.

CTranslate2 runs on CPUs and NVIDIA GPUs only; PyTorch also runs on AMD GPUs (ROCm builds
expose them as ``cuda`` through HIP), so this engine is the GPU path there. Decoding follows
openai-whisper's ``transcribe`` in consecutive 3000-frame (30 s) windows, the only length its
encoder accepts, greedy or beam search at temperature 0; features, padding, silence rule,
loop collapse and token caps are the faster-whisper engine's, so both engines answer alike.

Models never download: a local ``.pt``; a bundled CTranslate2 model (``tiny.en``, ``base``) or
CTranslate2 folder, converted once by `stt_worker.engines.ct2_convert`; or an openai-whisper name
whose ``.pt`` is already on disk.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import torch
import whisper
from whisper.audio import N_FRAMES
from whisper.model import ModelDimensions, Whisper

from stt_worker.config import Settings
from stt_worker.core.errors import EngineError, ModelNotFoundError
from stt_worker.core.protocol import Task, Word
from stt_worker.engines.base import (
    Audio,
    DecodeOptions,
    EngineInfo,
    LocalEngine,
    Segment,
    Transcript,
    is_hallucination,
    is_inaudible,
)
from stt_worker.engines.ct2_convert import ensure_converted
from stt_worker.engines.decoding import (
    FRAMES_PER_S,
    HOP_SAMPLES,
    MAX_LENGTH_TOKENS,
    MAX_TOKENS_PER_S,
    MIN_NEW_TOKENS,
    collapse_loops,
)
from stt_worker.engines.models import BUNDLED_MODELS
from stt_worker.engines.word_timing import timed_words

logger = logging.getLogger(__name__)

# openai-whisper's default download root; we only ever read from it.
WHISPER_DOWNLOAD_ROOT = Path("~/.cache/whisper")


class OpenAIWhisperEngine(LocalEngine):
    """Whisper on PyTorch: fp16 on a GPU, fp32 on CPU, one 30 s window at a time, or a batch
    of several sessions' windows in one call."""

    batching = True

    def __init__(self, settings: Settings, *, checkpoint: Path | None = None) -> None:
        super().__init__()
        self._beam_size = settings.whisper_beam_size
        self._language = settings.whisper_language
        self._device = pick_device(settings.whisper_device)
        if settings.whisper_cpu_threads and self._device == "cpu":
            torch.set_num_threads(settings.whisper_cpu_threads)
        path = checkpoint or resolve_checkpoint(
            settings.whisper_model_size, settings.whisper_model_cache_dir
        )
        self._model = load_checkpoint(path, self._device)
        self.multilingual = self._model.is_multilingual
        self._fp16 = uses_fp16(self._device)
        extra = {
            "dtype": "float16" if self._fp16 else "float32",
            "torch": torch.__version__,
            "checkpoint": str(path),
        }
        if self._device != "cpu":
            extra["gpu"] = torch.cuda.get_device_name(self._device)
        self.info = EngineInfo(
            name="openai-whisper",
            model=settings.whisper_model_size,
            device=self._device,
            extra=extra,
        )
        logger.info(
            "openai-whisper model loaded on %s",
            self._device,
            extra={"device": self._device, **extra},
        )

    def close(self) -> None:
        super().close()
        if getattr(self, "_model", None) is None:
            return  # closed already
        self._model = None
        if self._device != "cpu":
            torch.cuda.empty_cache()

    def _decode(self, audio: Audio, options: DecodeOptions) -> Transcript:
        if is_inaudible(audio):  # Whisper would normalise dither up to speech level
            return Transcript(text="", no_speech_prob=1.0)
        mel = self._mel(audio)
        content_frames = mel.shape[-1] - 1
        language = self._wanted_language(options)
        prompt = options.prompt
        windows: list[tuple[Segment, str, tuple[Word, ...]]] = []
        # Longer audio goes in consecutive 30 s windows, each prompted with the previous text.
        for start in range(0, max(content_frames, 1), N_FRAMES):
            window_frames = min(N_FRAMES, content_frames - start)
            window = _window(mel[:, start : start + window_frames])
            result = self._decode_window(window, window_frames, language, prompt, options)
            windows.append(self._segment(window, window_frames, start, result, options))
            language = language or result.language
            prompt = windows[-1][0].text or prompt
        return _transcript(windows)

    def _decode_batch(self, jobs: Sequence[tuple[Audio, DecodeOptions]]) -> list[Transcript]:
        """Jobs of one language, task, prompt and token cap (openai-whisper takes one of each
        per call) decode as one batched mel tensor. So sessions with different prompts (their
        recent finals) do not batch on this engine, nor jobs whose caps differ: the cap follows
        the audio's length, and an item cut back from a longer cap would keep the longer
        decode's avg_logprob, which the hallucination check reads."""
        transcripts: dict[int, Transcript] = {}
        groups: dict[Hashable, list[int]] = collections.defaultdict(list)
        for index, (audio, options) in enumerate(jobs):
            if is_inaudible(audio) or len(audio) > N_FRAMES * HOP_SAMPLES:
                transcripts[index] = self._decode(audio, options)  # no decode, or windows
            else:
                groups[self.batch_key(len(audio), options)].append(index)
        for indices in groups.values():
            mels = [self._mel(jobs[index][0]) for index in indices]
            frames = [mel.shape[-1] - 1 for mel in mels]
            windows = torch.stack([_window(mel[:, :-1]) for mel in mels])
            options = jobs[indices[0]][1]
            language = self._wanted_language(options)
            results = self._decode_window(windows, frames[0], language, options.prompt, options)
            for row, (index, count) in enumerate(zip(indices, frames, strict=True)):
                segment = self._segment(windows[row], count, 0, results[row], jobs[index][1])
                transcripts[index] = _transcript([segment])
        return [transcripts[index] for index in range(len(jobs))]

    def batch_key(self, samples: int, options: DecodeOptions) -> Hashable:
        # What `_decode_batch` groups by: whisper.decode takes one of each per call.
        cap = _max_new_tokens(samples // HOP_SAMPLES, options.max_new_tokens)
        return self._wanted_language(options), options.task, options.prompt, cap

    def _mel(self, audio: Audio) -> torch.Tensor:
        samples = torch.from_numpy(np.array(audio, dtype=np.float32))
        # One mel over the whole utterance (log-mel clamping uses the clip's maximum) with
        # faster-whisper's one-hop padding, so both engines see the same features.
        return whisper.log_mel_spectrogram(
            samples, self._model.dims.n_mels, padding=HOP_SAMPLES, device=self._device
        )

    def _wanted_language(self, options: DecodeOptions) -> str | None:
        return "en" if not self._model.is_multilingual else options.language or self._language

    def _segment(
        self,
        window: torch.Tensor,
        window_frames: int,
        start: int,
        result: whisper.DecodingResult,
        options: DecodeOptions,
    ) -> tuple[Segment, str, tuple[Word, ...]]:
        """A decoded window as a segment (text checked and loops collapsed), its language
        and, when asked, its words timed from the audio's start."""
        text = result.text.strip()
        heard = options.speech_heard
        if is_hallucination(text, result.no_speech_prob, result.avg_logprob, speech_heard=heard):
            text = ""
        words: tuple[Word, ...] = ()
        if options.word_timestamps and text:
            offset_s = start / FRAMES_PER_S
            words = self._words(window, window_frames, result, options.task, offset_s)
        segment = Segment(
            start_s=start / FRAMES_PER_S,
            end_s=(start + window_frames) / FRAMES_PER_S,
            text=collapse_loops(text),
            avg_logprob=result.avg_logprob,
            no_speech_prob=result.no_speech_prob,
        )
        return segment, result.language, words

    def _tokenizer(self, language: str, task: Task) -> whisper.tokenizer.Tokenizer:
        return whisper.tokenizer.get_tokenizer(
            self._model.is_multilingual,
            num_languages=self._model.num_languages,
            language=language,
            task=task,
        )

    def _words(
        self,
        window: torch.Tensor,
        window_frames: int,
        result: whisper.DecodingResult,
        task: Task,
        offset_s: float,
    ) -> tuple[Word, ...]:
        """The window's words timed by openai-whisper's cross-attention alignment, from
        `offset_s` (the window's start in the audio)."""
        tokenizer = self._tokenizer(result.language, task)
        tokens = [token for token in result.tokens if token < tokenizer.eot]
        timings = whisper.timing.find_alignment(
            self._model, tokenizer, tokens, window, window_frames
        )
        return timed_words(
            (t.word, offset_s + t.start, offset_s + t.end, [t.probability]) for t in timings
        )

    def _decode_window(
        self,
        window: torch.Tensor,
        window_frames: int,
        language: str | None,
        prompt: str | None,
        options: DecodeOptions,
    ) -> whisper.DecodingResult | list[whisper.DecodingResult]:
        """One 30 s log-mel window, greedy or beam search, capped to its audio's tokens (a
        batch of windows: a result each)."""
        return whisper.decode(
            self._model,
            window,
            whisper.DecodingOptions(
                task=options.task,
                language=language,
                prompt=prompt,
                without_timestamps=True,
                fp16=self._fp16,
                beam_size=self._beam_size if self._beam_size > 1 else None,
                sample_len=_max_new_tokens(window_frames, options.max_new_tokens),
            ),
        )


def _window(mel: torch.Tensor) -> torch.Tensor:
    # Pad with log-mel 0 as faster-whisper does. whisper.transcribe pads with silent audio
    # instead, and then tiny.en reads pure silence as "you" (avg_logprob -0.38,
    # no_speech_prob 0.95), which the silence rule lets through.
    return whisper.pad_or_trim(mel, N_FRAMES)


def _transcript(windows: Sequence[tuple[Segment, str, tuple[Word, ...]]]) -> Transcript:
    segments = [segment for segment, _, _ in windows]
    return Transcript(
        text=" ".join(s.text for s in segments if s.text),
        segments=tuple(s for s in segments if s.text),
        language=windows[0][1],
        no_speech_prob=min(s.no_speech_prob for s in segments),
        words=tuple(word for _, _, words in windows for word in words),
    )


def _max_new_tokens(window_frames: int, cap: int | None) -> int:
    # The faster-whisper engine's cap: stops a looping decoder early instead of at 224.
    wanted = MIN_NEW_TOKENS + math.ceil(max(window_frames, 0) / FRAMES_PER_S * MAX_TOKENS_PER_S)
    return min(MAX_LENGTH_TOKENS // 2, wanted, cap or wanted)


def pick_device(requested: str) -> str:
    """The torch device for WHISPER_DEVICE (auto, cpu, cuda, cuda:N); CPU if no GPU is seen."""
    requested = requested.lower()
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if torch.cuda.is_available():
            return requested
        logger.warning(
            "WHISPER_DEVICE=%s but PyTorch %s sees no GPU (built for CUDA %s, ROCm %s); "
            "running openai-whisper on CPU in float32, which is much slower",
            requested,
            torch.__version__,
            torch.version.cuda or "-",
            getattr(torch.version, "hip", None) or "-",
        )
        return "cpu"
    raise EngineError(f"WHISPER_DEVICE must be auto, cpu, cuda or cuda:N, not {requested!r}")


def uses_fp16(device: str) -> bool:
    """Half precision halves GPU memory and time (CUDA and ROCm alike, both `cuda` to torch);
    CPUs have no fast fp16 matmul."""
    return device != "cpu"


def resolve_checkpoint(name_or_path: str, cache_dir: str | None = None) -> Path:
    """The local openai-whisper checkpoint for WHISPER_MODEL_SIZE; never downloads.

    Order: a ``.pt`` file; a bundled model or CTranslate2 folder (converted once into the
    cache); ``<name>.pt`` in the cache or openai-whisper's download root.
    """
    local = Path(name_or_path).expanduser()
    if local.is_file():
        return local
    if name_or_path in BUNDLED_MODELS or (local / "model.bin").is_file():
        return ensure_converted(name_or_path, cache_dir)
    roots = [Path(cache_dir).expanduser()] if cache_dir else []
    roots.append(WHISPER_DOWNLOAD_ROOT.expanduser())
    for root in roots:
        candidate = root / f"{name_or_path}.pt"
        if candidate.is_file():
            return candidate
    where = " or ".join(str(r / f"{name_or_path}.pt") for r in roots)
    raise ModelNotFoundError(
        f"openai-whisper model {name_or_path!r} is not on disk ({where} does not exist) and "
        "this worker never downloads models. Provide it: on a machine with internet run "
        f"`python -c \"import whisper; whisper.load_model('{name_or_path}')\"` and copy "
        f"~/.cache/whisper/{name_or_path}.pt to one of those paths, or set "
        "WHISPER_MODEL_SIZE to a .pt file or a CTranslate2 model folder, or use a bundled "
        f"model: {', '.join(BUNDLED_MODELS)}."
    )


def load_checkpoint(path: Path, device: str) -> Whisper:
    """Load an openai-whisper checkpoint as `whisper.load_model` does, plus alignment heads.

    By path only: `whisper.load_model(name)` would download a missing or altered file.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model = Whisper(ModelDimensions(**checkpoint["dims"]))
        model.load_state_dict(checkpoint["model_state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise EngineError(f"Cannot load openai-whisper checkpoint {str(path)!r}: {exc}") from exc
    heads = checkpoint.get("alignment_heads")
    if heads:
        # Converted checkpoints carry the source's heads (used by word timestamps only).
        mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        for layer, head in heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.to(device)

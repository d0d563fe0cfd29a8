"""FasterWhisperEngine: Whisper on CTranslate2 with an encoder window sized to the utterance.

`faster_whisper.WhisperModel.transcribe` always pads to Whisper's 30 s window (3000 mel
frames), mostly padding for voice-assistant utterances. CTranslate2 accepts shorter mel
input, so we run our own decode loop (reusing faster-whisper's feature extractor and
tokenizer) on a window of the utterance plus a little padding, rounded up to a bucket so
only a handful of shapes occur.

Measured by `bench/window_accuracy.py` (int8, 2 CPU cores, 12 clips of 1.8-36 s; corpus
WER with Whisper's English normaliser; mean decode time per clip of <= 15 s; the 36 s
clip is decoded as 30 s + 6 s windows on both sides):

    | window                  | tiny.en WER | tiny.en s | base WER | base s |
    | ----------------------- | ----------- | --------- | -------- | ------ |
    | faster-whisper, 30 s    | 0.018       | 0.456     | 0.033    | 0.772  |
    | no padding (*)          | 0.022       | 0.336     | 0.029    | 0.561  |
    | +1 s                    | 0.033       | 0.257     | 0.029    | 0.292  |
    | +2 s                    | 0.037       | 0.180     | 0.029    | 0.299  |
    | +1 s, 2 s buckets       | 0.029       | 0.198     | 0.029    | 0.300  |
    | +2 s, 2 s buckets [*]   | 0.033       | 0.191     | 0.029    | 0.302  |
    | 5 s buckets             | 0.026       | 0.185     | 0.026    | 0.302  |
    | ours, full 3000 frames  | 0.018       | 0.406     | 0.033    | 0.736  |

(*) Without padding Whisper re-reads the utterance on up to 4 of 11 short clips (tiny.en
WER 0.088, base 0.206); the 30 s loop retry rescues them at near full-window cost. In a
padding sweep tiny.en stopped re-reading from 1.25 s of padding on, hence a 2 s minimum. The
remaining tiny.en gap is one clip ("stuff it" -> "stuffered") that every window shorter
than 30 s gets wrong, padding up to 10 s included; base shows no gap. [*] The default,
`WindowPolicy()`: at least 2 s of padding, 15 shapes, ~0.4x the 30 s window's cost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import ctranslate2
import numpy as np
import tokenizers
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from stt_worker.config import Settings
from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.errors import EngineError
from stt_worker.core.protocol import Task, Word
from stt_worker.engines.base import (
    Audio,
    DecodeOptions,
    EngineInfo,
    LocalEngine,
    Transcript,
    is_hallucination,
    is_inaudible,
)
from stt_worker.engines.cpus import usable_cpus
from stt_worker.engines.ct2_batch import decode_batch
from stt_worker.engines.ct2_replicas import Replicas
from stt_worker.engines.ct2_windows import WindowResult, window_transcript
from stt_worker.engines.decoding import (
    FRAMES_PER_S,
    HOP_SAMPLES,
    MAX_LENGTH_TOKENS,
    MAX_TOKENS_PER_S,
    MIN_NEW_TOKENS,
    WINDOW_FRAMES,
    collapse_loops,
)
from stt_worker.engines.models import resolve_model_path
from stt_worker.engines.word_timing import align_words

logger = logging.getLogger(__name__)

# A final blanked as a hallucination in a short window is decoded again at 30 s unless the
# decoder was this sure nobody spoke: what it writes on noise scores >= 0.95 (tiny.en's
# "you" on room tone), a doubted short phrase 0.3-0.6.
BLANKED_RETRY_MAX_NO_SPEECH = 0.8


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """How many mel frames the encoder sees for an utterance of a given length.

    The window is the utterance plus `pad_s` of silence, rounded up to a multiple of
    `bucket_s`, capped at 30 s. `pad_s=30` reproduces faster-whisper's fixed window.
    """

    pad_s: float = 2.0
    bucket_s: float = 2.0

    def frames(self, content_frames: int) -> int:
        wanted = content_frames + round(self.pad_s * FRAMES_PER_S)
        # The encoder's first conv has stride 2, so keep the frame count even.
        bucket = max(2, round(self.bucket_s * FRAMES_PER_S) // 2 * 2)
        return min(WINDOW_FRAMES, math.ceil(wanted / bucket) * bucket)


class FasterWhisperEngine(LocalEngine):
    """Whisper (CTranslate2) on CPU or CUDA, decoding each utterance in a right-sized window;
    batches of several sessions' jobs in one call per window size (`ct2_batch`)."""

    batching = True

    def __init__(
        self,
        settings: Settings,
        *,
        window: WindowPolicy | None = None,
        model_path: Path | None = None,
    ) -> None:
        # Measured here (bench/concurrency.py): two decodes with one thread each carry 1.6x the
        # audio of one decode on two threads, and a lone decode is no slower on one thread.
        slots = settings.max_concurrent_inferences
        device = _pick_device(settings.whisper_device)
        # On a CPU with 2+ slots, partials get a slot of their own at a lower priority.
        nice = settings.whisper_partial_nice if device == "cpu" and slots >= 2 else 0
        super().__init__(parallelism=slots, background_slots=1 if nice else 0)
        self._window = window or WindowPolicy(pad_s=settings.whisper_window_pad_s)
        self._warmed = False
        self._beam_size = settings.whisper_beam_size
        self._doubt_retry = settings.whisper_doubt_retry
        self._language = settings.whisper_language
        path = model_path or resolve_model_path(
            settings.whisper_model_size, settings.whisper_model_cache_dir
        )
        self._replicas = _load(settings, path, device, slots, nice)
        try:
            self._hf_tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"Cannot load Whisper model from {str(path)!r}: {exc}") from exc
        model = self._replicas.foreground
        self._multilingual = self.multilingual = model.is_multilingual
        self._features = FeatureExtractor(feature_size=model.n_mels)
        self._tokenizers: dict[tuple[str, Task], tuple[Tokenizer, list[int]]] = {}
        # The scheduler keys every job by its prompt's length, and a session sends one prompt
        # (its recent finals) with many jobs: tokenize each once, holding only recent ones.
        self._prompt_length = functools.lru_cache(maxsize=1024)(self._count_prompt_tokens)
        self.info = EngineInfo(
            name="faster-whisper",
            model=settings.whisper_model_size,
            device=device,
            extra={"compute_type": model.compute_type, "window": repr(self._window)}
            | {"partial_nice": str(nice)},
        )

    def close(self) -> None:
        super().close()
        for model in self._replicas.each():
            model.unload_model()

    @property
    def _model(self) -> ctranslate2.models.Whisper:
        """The model copy of the decode running on this thread (`engines/ct2_replicas`)."""
        return self._replicas.current

    async def warmup(self) -> None:
        """Decode once per window size: CTranslate2's first run at a new input shape costs
        about twice a later one, which would otherwise land on a live user's final."""
        if self._warmed:
            return
        loop = asyncio.get_running_loop()
        sizes = sorted({self._window.frames(frames) for frames in range(1, WINDOW_FRAMES + 1)})
        # Each executor thread is warmed (inter_threads replicas keep their own buffers), the
        # background copy's too.
        backgrounds = [False] * self.parallelism + [True] * self.background_slots
        for frames in sizes:
            audio = np.zeros(
                max(HOP_SAMPLES, frames * HOP_SAMPLES - round(self._window.pad_s * SAMPLE_RATE_HZ)),
                dtype=np.float32,
            )
            await asyncio.gather(
                *(loop.run_in_executor(self._executor, self._warm, audio, b) for b in backgrounds)
            )
        self._warmed = True

    def _warm(self, silence: Audio, background: bool) -> None:
        # `_decode_audio`, not `_decode`: the latter skips silence without decoding.
        with self._replicas.hold(background):
            self._decode_audio(silence, DecodeOptions())

    def _decode(self, audio: Audio, options: DecodeOptions) -> Transcript:
        # No decode for audio too quiet to hold speech: Whisper would write words for it.
        if is_inaudible(audio):
            language = options.language or self._language
            return Transcript(
                text="", language=language if self._multilingual else "en", no_speech_prob=1.0
            )
        with self._replicas.hold(options.background):
            return self._decode_audio(audio, options)

    def _decode_batch(self, jobs: Sequence[tuple[Audio, DecodeOptions]]) -> list[Transcript]:
        # A batch with a final in it is a final's: it runs at the finals' priority.
        with self._replicas.hold(all(options.background for _, options in jobs)):
            return decode_batch(self, jobs, self._decode)

    def batch_key(self, samples: int, options: DecodeOptions) -> Hashable:
        # How `ct2_batch` groups, one generate call a group: the window, the prompt's token
        # length and the token cap.
        frames = self._window.frames(samples // HOP_SAMPLES)
        return frames, self._prompt_length(options.task, options.prompt), options.max_new_tokens

    def _count_prompt_tokens(self, task: Task, prompt: str | None) -> int:
        # As `ct2_batch` counts: the length is the same whatever the language.
        return len(self.prompt_tokens("en", task, prompt))

    def window_frames(self, content_frames: int) -> int:
        """The encoder window (mel frames) for a window of `content_frames` of audio."""
        return self._window.frames(content_frames)

    def mel(self, audio: Audio) -> np.ndarray:
        """Log-mel of the whole utterance (one frame more than it holds audio for)."""
        # Mel over the whole utterance once, as faster-whisper does: log-mel clamping uses
        # the clip's maximum, so per-window features would differ from the baseline's.
        return self._features(np.asarray(audio, dtype=np.float32))

    def _decode_audio(self, audio: Audio, options: DecodeOptions) -> Transcript:
        mel = self.mel(audio)
        content_frames = mel.shape[-1] - 1
        language = options.language or self._language
        prompt = options.prompt
        windows: list[tuple[int, int, WindowResult]] = []
        # Utterances are cut at <= 30 s upstream; longer audio is decoded in consecutive
        # 30 s windows, each prompted with the previous window's text for continuity.
        for start in range(0, max(content_frames, 1), WINDOW_FRAMES):
            chunk = mel[:, start : min(start + WINDOW_FRAMES, content_frames)]
            frames = self.window_frames(chunk.shape[-1])
            first = self._decode_frames(chunk, frames, language, prompt, options)
            result = self.finish_window(chunk, frames, language, prompt, options, first)
            language = language or result.language
            prompt = result.text or prompt
            windows.append((start, chunk.shape[-1], result))
        return window_transcript(windows)

    def finish_window(
        self,
        chunk: np.ndarray,
        frames: int,
        language: str | None,
        prompt: str | None,
        options: DecodeOptions,
        result: WindowResult,
    ) -> WindowResult:
        """A window's result with its loops collapsed, decoded again at 30 s if it looped or
        was blanked in doubt."""
        if not options.full_window_retry or frames >= WINDOW_FRAMES:
            return replace(result, text=collapse_loops(result.text))
        # Short windows occasionally make Whisper re-read the utterance, or doubt a short
        # phrase so much that the hallucination rules blank it (JFK's "ask not" in a 4 s
        # window: avg_logprob -1.4 to -2.0; in 30 s: -0.5 to -0.7). The 30 s window it was
        # trained on does neither, so pay for it only then, and not when the decoder itself
        # heard no speech (a hallucination on noise: no_speech_prob >= 0.95).
        looped = collapse_loops(result.text) != result.text
        doubted = (
            options.doubt_retry
            and self._doubt_retry
            and result.blanked
            and result.no_speech_prob < BLANKED_RETRY_MAX_NO_SPEECH
        )
        if looped or doubted:
            logger.debug("%s in a short window; retrying with 30 s", "Loop" if looped else "Doubt")
            result = self._decode_frames(chunk, WINDOW_FRAMES, language, prompt, options)
        return replace(result, text=collapse_loops(result.text))

    def _decode_frames(
        self,
        chunk: np.ndarray,
        frames: int,
        language: str | None,
        prompt: str | None,
        options: DecodeOptions,
    ) -> WindowResult:
        encoded = self.encode([chunk], frames)
        (language,) = self.languages(encoded, [language])
        prompt_tokens = self.prompt_tokens(language, options.task, prompt)
        (result,) = self.generate(encoded, [prompt_tokens], frames, [language], [options])
        audio_frames = min(chunk.shape[-1], frames)
        return self.window_result(result, language, options, audio_frames, lambda: encoded)

    def encode(self, chunks: Sequence[np.ndarray], frames: int) -> ctranslate2.StorageView:
        """The encoder's output for mel windows padded (or cut) to `frames`, as one batch."""
        # Pad in the log-mel domain with 0, exactly as faster-whisper's `pad_or_trim` does.
        padded = np.zeros((len(chunks), self._model.n_mels, frames), dtype=np.float32)
        for row, chunk in zip(padded, chunks, strict=True):
            row[:, : chunk.shape[-1]] = chunk[:, :frames]
        return self._model.encode(ctranslate2.StorageView.from_array(padded), to_cpu=False)

    def languages(
        self, encoded: ctranslate2.StorageView, wanted: Sequence[str | None]
    ) -> list[str]:
        """Each window's language: the one asked for, else detected (multilingual models)."""
        if not self._multilingual:
            return ["en"] * len(wanted)
        wanted = [language or self._language for language in wanted]
        if all(wanted):
            return [language for language in wanted if language]
        detected = self._model.detect_language(encoded)
        pairs = zip(wanted, detected, strict=True)
        return [language or found[0][0][2:-2] for language, found in pairs]

    def generate(
        self,
        encoded: ctranslate2.StorageView,
        prompts: list[list[int]],
        frames: int,
        languages: Sequence[str],
        options: Sequence[DecodeOptions],
    ) -> list[ctranslate2.models.WhisperGenerationResult]:
        """One generate call for a batch of windows of `frames`, whose prompts are of one
        length and whose token caps are one (CTranslate2 takes one of each per call)."""
        max_new = MIN_NEW_TOKENS + math.ceil(frames / FRAMES_PER_S * MAX_TOKENS_PER_S)
        max_new = min(max_new, options[0].max_new_tokens or max_new)
        # The suppressed tokens are the vocabulary's: one list for every language and task.
        _, suppress_tokens = self._tokenizer(languages[0], options[0].task)
        return self._model.generate(
            encoded,
            prompts,
            beam_size=self._beam_size,
            max_length=min(MAX_LENGTH_TOKENS, len(prompts[0]) + max_new),
            return_scores=True,
            return_no_speech_prob=True,
            return_logits_vocab=any(o.end_probability for o in options),
            suppress_blank=True,
            suppress_tokens=suppress_tokens,
        )

    def window_result(
        self,
        result: ctranslate2.models.WhisperGenerationResult,
        language: str,
        options: DecodeOptions,
        audio_frames: int,
        encoded: Callable[[], ctranslate2.StorageView],
    ) -> WindowResult:
        """A window's text and scores from its generation result; `encoded` gives the
        window's encoder output alone, for word times."""
        tokenizer, _ = self._tokenizer(language, options.task)
        tokens = result.sequences_ids[0]
        # CTranslate2 reports cum_logprob / len (length_penalty=1); Whisper averages over
        # len + 1 to count the end-of-text token.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        text = tokenizer.decode(tokens).strip()
        # Checked before `collapse_loops`: a loop's compression ratio is one of the signs.
        blanked = bool(text) and is_hallucination(
            text, result.no_speech_prob, avg_logprob, speech_heard=options.speech_heard
        )
        if blanked:
            text = ""
        end_prob = None
        if options.end_probability and text:
            end_prob = _end_probability(tokenizer, tokens, result.logits[0])
        words: tuple[Word, ...] = ()
        if options.word_timestamps and text:
            words = align_words(self._model, tokenizer, encoded(), tokens, audio_frames)
        return WindowResult(
            text=text,
            avg_logprob=avg_logprob,
            no_speech_prob=result.no_speech_prob,
            language=language,
            end_prob=end_prob,
            words=words,
            blanked=blanked,
        )

    def prompt_tokens(self, language: str, task: Task, previous_text: str | None) -> list[int]:
        """The decoder's prompt: the previous text, if any, then the start sequence."""
        return self._prompt(self._tokenizer(language, task)[0], previous_text)

    def _tokenizer(self, language: str, task: Task) -> tuple[Tokenizer, list[int]]:
        """The tokenizer for `language` and `task` (its start sequence names both), and the
        tokens faster-whisper suppresses by default."""
        cached = self._tokenizers.get((language, task))
        if cached is None:
            try:
                tokenizer = Tokenizer(
                    self._hf_tokenizer, self._multilingual, task=task, language=language
                )
            except ValueError as exc:
                raise EngineError(f"Unsupported language {language!r}") from exc
            # -1: the non-speech symbols (music notes, brackets) plus Whisper's special tokens.
            cached = (tokenizer, list(get_suppressed_tokens(tokenizer, [-1]) or []))
            self._tokenizers[language, task] = cached
        return cached

    def _prompt(self, tokenizer: Tokenizer, previous_text: str | None) -> list[int]:
        prompt: list[int] = []
        if previous_text and previous_text.strip():
            previous = tokenizer.encode(" " + previous_text.strip())
            # Whisper keeps at most half its context for previous text.
            prompt = [tokenizer.sot_prev, *previous[-(MAX_LENGTH_TOKENS // 2 - 1) :]]
        return [*prompt, *tokenizer.sot_sequence, tokenizer.no_timestamps]


def _end_probability(tokenizer: Tokenizer, tokens: list[int], logits: list) -> float | None:
    """P(sentence mark or end of text) where the decoder chose what follows the last word."""
    marks = _sentence_marks(tokenizer)
    last_word = len(tokens)
    while last_word and tokenizer.decode([tokens[last_word - 1]]).strip() in TRAILING_MARKS:
        last_word -= 1
    # The step after the last word; none when it was the end-of-text step (not returned).
    if last_word == 0 or last_word >= len(logits):
        return None
    scores = np.asarray(logits[last_word], dtype=np.float64)
    probs = np.exp(scores - scores.max())
    return float(probs[marks].sum() / probs.sum())


# Marks stripped before finding the last word; of them only . ? ! end a sentence.
TRAILING_MARKS = frozenset({".", "?", "!", ",", "...", "\u2026", ";", ":", "-"})


@functools.cache
def _sentence_marks(tokenizer: Tokenizer) -> list[int]:
    return [tokenizer.eot, *(tokenizer.encode(mark)[0] for mark in (".", "?", "!"))]


def _load(
    settings: Settings, path: Path, device: str, slots: int, nice: int
) -> Replicas[ctranslate2.models.Whisper]:
    """The model's copies (`engines/ct2_replicas`): a second one, `nice` nicer, for partials
    when `nice` is above 0."""
    compute_type = _pick_compute_type(settings.whisper_compute_type, device)
    threads = settings.whisper_cpu_threads or max(1, usable_cpus() // slots)

    def load(replicas: int) -> ctranslate2.models.Whisper:
        return ctranslate2.models.Whisper(
            str(path),
            device=device,
            compute_type=compute_type,
            inter_threads=replicas,
            intra_threads=threads,
        )

    try:
        return Replicas(load, slots, nice)
    except (RuntimeError, ValueError, OSError) as exc:
        raise EngineError(f"Cannot load Whisper model from {str(path)!r}: {exc}") from exc


def _pick_device(device: str) -> str:
    device = device.lower()
    if device not in ("auto", "cpu", "cuda"):
        raise EngineError(f"WHISPER_DEVICE must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return device
    gpus = ctranslate2.get_cuda_device_count()
    if device == "cuda" and gpus == 0:
        # CTranslate2's PyPI wheels are built for CUDA only: a ROCm GPU is not seen either.
        raise EngineError(
            "WHISPER_DEVICE=cuda but CTranslate2 sees no CUDA GPU (driver, CUDA 12 cuBLAS and "
            "cuDNN 9 needed); for AMD GPUs use STT_ENGINE=openai-whisper on a ROCm PyTorch"
        )
    return "cuda" if gpus > 0 else "cpu"


def _pick_compute_type(compute_type: str, device: str) -> str:
    if compute_type.lower() != "auto":
        return compute_type
    # int8 weights are ~4x smaller and faster on CPU; CUDA runs float16 natively.
    return "float16" if device == "cuda" else "int8"

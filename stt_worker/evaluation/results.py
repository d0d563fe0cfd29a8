"""Evaluation results and targets: options, per-clip and summary records."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "manifest.jsonl"
DEFAULT_OUT = ROOT / "bench" / "results" / "eval"
READY_TIMEOUT_S = 180.0
# After the last chunk: room for queued finals plus a 30 s window on a slow CPU.
RESULTS_TIMEOUT_S = 60.0

# Targets of issue 5.
WER_RATIO_TARGET = 1.05  # streaming corpus WER <= 1.05 x offline corpus WER
EOS_INFERENCE_FACTOR = 1.15  # end of speech -> final <= endpoint silence + 1.15 x bare inference
PARTIAL_CHANGE_TARGET = 0.10  # fewer than 10 % of words shown in partials later change
BARE_RUNS = 1  # bare decodes per final (see runner: repeated runs are warm, the worker's are not)
# Float noise only: corpus WERs are ratios of word counts.
_WER_TOLERANCE = 1e-9


@dataclass(slots=True)
class EvalOptions:
    """What to evaluate and how; `settings` overrides `Settings` fields by name."""

    manifest: Path = DEFAULT_MANIFEST
    speed: float = 1.0  # x real time; 0 = as fast as possible (latency then meaningless)
    model: str = "tiny.en"
    engine: str = "faster-whisper"
    limit: int | None = None  # the first N clips (after `files`)
    files: list[str] | None = None  # only these manifest entries, by their `file`
    out: Path | None = None  # writes <out>.md, <out>.json, <out>.png
    plot: bool = True
    settings: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    path: Path
    reference: str
    pcm: Pcm16
    # The worker's VAD decision for each 20 ms frame of the clip, from sample 0.
    speech: tuple[bool, ...]

    @property
    def duration_s(self) -> float:
        return self.pcm.size / SAMPLE_RATE_HZ


@dataclass(frozen=True, slots=True)
class FinalResult:
    utterance_id: int
    audio_start_s: float
    audio_end_s: float
    ended_by: str  # the final's end_reason: "silence" (endpoint), "end" (message), "size" (cut)
    trailing_silence_s: float
    speech_end_s: float
    latency_last_chunk_ms: float
    latency_speech_end_ms: float
    inference_ms: float  # from the message
    bare_inference_ms: float  # transcribe_blocking on the same slice, here
    # The target: endpoint silence (its wall time at this speed) + 1.15 x bare inference.
    eos_bound_ms: float
    # (end-of-speech latency - silence the worker waited) / bare inference; target <= 1.15.
    eos_over_bare: float
    text: str
    bare_text: str


@dataclass(frozen=True, slots=True)
class PartialResult:
    utterance_id: int
    audio_end_s: float
    latency_ms: float  # since the send of the chunk that completed its audio
    inference_ms: float
    received_at: float
    text: str


@dataclass(frozen=True, slots=True)
class Stability:
    """How much of what partials showed was changed later; see `partial_stability`."""

    partials: int = 0  # partials followed by another hypothesis of their utterance
    revised_partials: int = 0  # of those, partials with at least one changed word
    words_shown: int = 0
    words_changed: int = 0
    # Informational: words not kept by a word alignment with the next hypothesis (difflib),
    # so one substituted word costs one word, not every word after it as in `words_changed`.
    words_edited: int = 0
    # Within each partial's `stable_chars` prefix, when messages carry it.
    stable_partials: int = 0
    stable_words: int = 0
    stable_words_changed: int = 0

    def __add__(self, other: Stability) -> Stability:
        names = [f.name for f in fields(self)]
        return Stability(*(getattr(self, n) + getattr(other, n) for n in names))

    @property
    def change_rate(self) -> float | None:
        return self.words_changed / self.words_shown if self.words_shown else None

    @property
    def stable_change_rate(self) -> float | None:
        return self.stable_words_changed / self.stable_words if self.stable_words else None


@dataclass(slots=True)
class ClipResult:
    name: str
    duration_s: float
    reference: str
    stream_text: str
    offline_text: str
    stream_wer: float
    offline_wer: float
    offline_inference_ms: float
    closed: bool
    stability: Stability
    finals: list[FinalResult] = field(default_factory=list)
    partials: list[PartialResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Spread:
    n: int
    p50: float | None = None
    p95: float | None = None
    mean: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(0)
        p50, p95 = np.percentile(values, [50, 95])
        return cls(len(values), float(p50), float(p95), statistics.fmean(values), max(values))


@dataclass(frozen=True, slots=True)
class Summary:
    clips: int
    audio_s: float
    finals: int
    finals_by_ending: dict[str, int]
    partials: int
    stream_wer: float
    offline_wer: float
    wer_ratio: float | None  # None: offline WER is 0 and streaming is not
    latency_last_chunk_ms: Spread
    latency_speech_end_ms: Spread
    partial_latency_ms: Spread
    partial_interval_ms: Spread
    inference_ms: Spread  # the finals' messages
    bare_inference_ms: Spread
    # Last-chunk latency minus the message's own inference time: what the pipeline adds.
    pipeline_overhead_ms: Spread
    offline_inference_ms: Spread
    eos_over_bare: Spread
    finals_within_eos_bound: int
    finals_matching_bare_text: int
    stability: Stability
    partial_change_rate: float | None
    stable_change_rate: float | None
    sessions_not_closed: list[str]
    clips_without_final: list[str]


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    value: str
    target: str
    passed: bool | None  # None: not measured in this run
    detail: str = ""


@dataclass(slots=True)
class EvalReport:
    meta: dict[str, Any]
    setup: dict[str, Any]
    clips: list[ClipResult]
    summary: Summary
    targets: list[TargetCheck]

    @property
    def complete(self) -> bool:
        """Every session closed and produced a final: the measurements cover every clip."""
        return not (self.summary.sessions_not_closed or self.summary.clips_without_final)

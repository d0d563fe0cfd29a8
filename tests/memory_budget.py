"""The worst-case memory of one worker pod, from its settings: the arithmetic of
docs/operations.md ("Memory"), used by tests/test_k8s.py on every overlay's shipped settings
and checked against a measurement in tests/test_flood.py.

Worst case: every session holds a maximal utterance and its pre-roll, every queued final
holds one too, every decode in flight holds a float32 copy, and the NATS client's buffers
are full. The figures per unit were measured (see each constant); the process's own
baseline (interpreter, libraries, model) is measured per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stt_worker.config import Settings
from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.runtime.delivery import _BYTES_PER_PENDING_MSG
from stt_worker.runtime.replies import MAX_REPLY_KEYS

MIB = 1024 * 1024
PCM16_BYTES_PER_S = SAMPLE_RATE_HZ * 2
# A held second is 50 numpy frames of 640 bytes, each with its array header and list slots,
# and what the allocator keeps of the buffers it came through: measured 37-39 KB (issue 20's
# 1,000 x 16 s and 30 s runs) and 41.5 KB (tests/test_flood.py); charged with room.
BYTES_PER_HELD_S = 48_000
# A session's own objects without audio (Session, pipeline, resampler, VAD, spans):
# 25 KB measured at 1,000 idle sessions (bench/results/capacity.md); charged with room.
SESSION_BYTES = 64 * 1024
# A decode in flight: the utterance as float32 and the engine's copy of it (resampled,
# padded, or encoded as a WAV upload).
INFERENCE_BYTES_PER_S = 2 * SAMPLE_RATE_HZ * 4
# One remembered key of the error-reply limiter (core/replies.py), at most MAX_REPLY_KEYS.
REPLY_KEY_BYTES = 400
# Speech onset: `STT_SPEECH_START_MS` voiced among this many more 20 ms frames (PreRoll).
ONSET_EXTRA_FRAMES = 2

# RSS of a ready worker that has transcribed (measured here; see docs/operations.md), with
# room: the HTTP image has no model; the CPU one holds tiny.en (or base) in CTranslate2 with
# its decoders' working memory; the ROCm one PyTorch, the ROCm runtime and a host copy of
# the weights (medium), not measured on a GPU here; the CUDA one CTranslate2 with the CUDA
# runtime, cuBLAS and cuDNN mapped in (about 2 GB of libraries) and base, an estimate too.
BASELINE_BYTES = {
    "stt-streaming:http": 160 * MIB,
    "stt-streaming:cpu": 700 * MIB,
    "stt-streaming:rocm": 5 * 1024 * MIB,
    "stt-streaming:cuda": 3 * 1024 * MIB,
}


@dataclass(frozen=True)
class WorstCase:
    """The worst case's terms, in bytes."""

    baseline: int
    sessions: int
    queued_finals: int
    inference: int
    nats_buffers: int
    reply_limiter: int

    @property
    def total(self) -> int:
        return (
            self.baseline
            + self.sessions
            + self.queued_finals
            + self.inference
            + self.nats_buffers
            + self.reply_limiter
        )


def held_seconds(settings: Settings) -> float:
    """Most audio one session holds: a maximal utterance plus the pre-roll window."""
    utterance_s = settings.max_utterance_samples / SAMPLE_RATE_HZ
    preroll_s = (settings.preroll_ms + settings.speech_start_ms) / 1000
    return utterance_s + preroll_s + ONSET_EXTRA_FRAMES * 0.02


def subscriptions(settings: Settings) -> int:
    """The worker's subscriptions: one, or its share of the partitions; in elastic mode all of
    them, which a lone worker holds (the last one standing, or the first one up)."""
    if not settings.partitions:
        return 1
    if settings.elastic:
        return settings.partitions
    replicas = settings.replicas or settings.partitions
    return math.ceil(settings.partitions / replicas)


def worst_case(settings: Settings, image: str) -> WorstCase:
    utterance_s = settings.max_utterance_samples / SAMPLE_RATE_HZ
    per_session = held_seconds(settings) * BYTES_PER_HELD_S + SESSION_BYTES
    pending = settings.pending_msgs_limit
    if settings.durable:  # runtime/delivery.py: the buffer covers every unacknowledged one
        pending = max(pending, settings.max_ack_pending)
    return WorstCase(
        baseline=BASELINE_BYTES[image],
        sessions=int(settings.max_sessions * per_session),
        queued_finals=int(settings.max_pending_finals * utterance_s * BYTES_PER_HELD_S),
        inference=int(concurrency(settings, image) * utterance_s * INFERENCE_BYTES_PER_S),
        nats_buffers=subscriptions(settings) * pending * _BYTES_PER_PENDING_MSG,
        reply_limiter=MAX_REPLY_KEYS * REPLY_KEY_BYTES,
    )


def concurrency(settings: Settings, image: str) -> int:
    """Decodes in flight at once (each holds a copy of its utterance)."""
    if image.endswith(":http"):
        return settings.whisper_http_max_concurrency
    if image.endswith(":rocm"):
        return 1  # the PyTorch engine decodes one utterance at a time
    return settings.max_concurrent_inferences


_UNITS = {"Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB, "K": 1000, "M": 1000**2, "G": 1000**3}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("512Mi", "3Gi", "1G", "1048576") in bytes."""
    for suffix, factor in sorted(_UNITS.items(), key=lambda item: -len(item[0])):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)

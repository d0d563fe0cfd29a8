"""One batch of the scheduler's jobs decoded: audio converted off the loop, one engine call,
one outcome per job (an engine's failure becomes every job's error, never the loop's)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from stt_worker.core.audio import Pcm16, pcm16_to_float32
from stt_worker.core.errors import EngineError, SttError
from stt_worker.engines.base import Audio, DecodeOptions, Engine, Transcript

logger = logging.getLogger(__name__)


async def decode_batch(
    engine: Engine,
    jobs: Sequence[tuple[tuple[Pcm16, ...], DecodeOptions]],
    trace_context: Context | None,
) -> list[Transcript | SttError]:
    """Each job's outcome; the call runs in `trace_context` (the batch's first job's)."""
    try:
        # Joining and scaling up to 30 s of samples a job is CPU work: keep it off the loop.
        audios = await asyncio.to_thread(_float_audio, [pcm for pcm, _ in jobs])
        batch = [(audio, options) for audio, (_, options) in zip(audios, jobs, strict=True)]
        token = None if trace_context is None else otel_context.attach(trace_context)
        try:
            return await engine.transcribe_batch(batch)
        finally:
            if token is not None:
                otel_context.detach(token)
    except asyncio.CancelledError:
        raise
    except SttError as exc:
        return [exc] * len(jobs)
    except Exception as exc:  # an engine that broke its contract must not kill the loop
        logger.exception("engine raised an unmapped exception on a batch")
        return [EngineError(f"unexpected engine failure: {exc!r}")] * len(jobs)


def _float_audio(pcms: list[tuple[Pcm16, ...]]) -> list[Audio]:
    return [pcm16_to_float32(pcm) for pcm in pcms]

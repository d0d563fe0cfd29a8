"""How each kind of job is decoded: its lane in the scheduler, its engine, its options.

The one place where a `JobKind` becomes behaviour downstream of the session. The scheduler
queues by `lane`, runs the `engine` role's engine, and passes `options` through; the worker's
metrics label inferences with `label`.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from stt_worker.core.jobs import Job, JobKind
from stt_worker.engines.base import DecodeOptions

# A barge-in probe needs its first words only: "stop", "yeah, okay", a sentence's start.
PROBE_MAX_NEW_TOKENS = 16


class Lane(enum.Enum):
    """Scheduler queues, served in this order."""

    # At most one per session, short audio, and a turn decision waits on each.
    URGENT = "urgent"
    # FIFO, bounded by STT_MAX_PENDING_FINALS.
    FINAL = "final"
    # At most one per session: a newer partial replaces the stale one.
    PARTIAL = "partial"


class EngineRole(enum.Enum):
    """Which engine runs it: the finals' model, or the partials' (STT_PARTIAL_MODEL)."""

    FINAL = "final"
    PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class DecodePlan:
    lane: Lane
    engine: EngineRole
    options: DecodeOptions
    label: str  # the `kind` label of inference metrics: final, partial or probe


def plan(job: Job) -> DecodePlan:
    options = DecodeOptions(
        language=job.language, prompt=job.prompt, full_window_retry=False, task=job.task
    )
    match job.kind:
        case JobKind.FINAL | JobKind.CANDIDATE_FINAL:
            # A short window that loops, or doubts the words into a blank, is decoded again
            # at 30 s: worth it for a final.
            final = dataclasses.replace(
                options, full_window_retry=True, word_timestamps=job.word_timestamps
            )
            return DecodePlan(Lane.FINAL, EngineRole.FINAL, final, "final")
        case JobKind.PARTIAL if job.speculative:
            # Its text may be the final: the finals' engine and options, in the partials'
            # line (served when the engine has room; a final of its session drops it unstarted).
            # No 30 s decode when it doubts the words into a blank: the final decodes them.
            # Not background work: the final waits for it at the endpoint.
            final = dataclasses.replace(
                options,
                full_window_retry=True,
                doubt_retry=False,
                word_timestamps=job.word_timestamps,
            )
            return DecodePlan(Lane.PARTIAL, EngineRole.FINAL, final, "partial")
        case JobKind.PARTIAL:
            # Speech the VAD heard: the first partial's short word is not blanked as silence.
            partial = dataclasses.replace(options, speech_heard=job.speech_heard, background=True)
            return DecodePlan(Lane.PARTIAL, EngineRole.PARTIAL, partial, "partial")
        case JobKind.BARGE_IN_PROBE:
            # Speech was heard (Whisper's silence rule would blank a short word), and only
            # the first words matter.
            probe = dataclasses.replace(
                options, speech_heard=True, max_new_tokens=PROBE_MAX_NEW_TOKENS
            )
            return DecodePlan(Lane.URGENT, EngineRole.PARTIAL, probe, "probe")
        case JobKind.TURN_CHECK:
            # Its text may become the final: the whole text, the finals' loop retry, the
            # decoder's probability that the sentence ends at the pause, and Smart Turn's
            # that the turn is complete (where the worker runs it: `turn` mode).
            check = dataclasses.replace(
                options,
                full_window_retry=True,
                doubt_retry=False,
                end_probability=True,
                turn_probability=True,
                word_timestamps=job.word_timestamps,
            )
            return DecodePlan(Lane.URGENT, EngineRole.PARTIAL, check, "probe")
    raise AssertionError(f"unplanned job kind {job.kind}")

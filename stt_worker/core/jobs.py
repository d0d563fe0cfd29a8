"""Transcription jobs and the actions a session returns: what the runtime carries out.

A `Job` is one request to an engine, and its `JobKind` says everything about how it is
treated downstream: which queue it waits in (`runtime/scheduler.py`), which engine and which
decode options it gets (`runtime/decode_plan.py`), and what the session does with the text
(`Session.result`). Nothing else about a job forks behaviour.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from stt_worker.core.audio import Pcm16
from stt_worker.core.protocol import CloseReason, EndReason, ServerMessage, Task, Word


class JobKind(enum.Enum):
    """What a transcription is for."""

    # The utterance so far, for a partial transcript.
    PARTIAL = "partial"
    # A whole utterance: its text is the final transcript.
    FINAL = "final"
    # A whole utterance heard while the assistant talked and never confirmed as a barge-in:
    # its text is a late barge-in if it holds real words, else a backchannel.
    CANDIDATE_FINAL = "candidate_final"
    # Word-mode barge-in: a quick look at speech heard while the assistant talks.
    BARGE_IN_PROBE = "barge_in_probe"
    # Adaptive end of turn: the speech before a short pause; a finished sentence is the final.
    TURN_CHECK = "turn_check"

    @property
    def is_final(self) -> bool:
        """Its text is published as a final (a turn check's may become one)."""
        return self in (JobKind.FINAL, JobKind.CANDIDATE_FINAL)


@dataclass(frozen=True, slots=True)
class Job:
    """One transcription request: the audio of an utterance so far, or whole."""

    utterance_id: int
    kind: JobKind
    pcm: tuple[Pcm16, ...]
    audio_start_s: float
    audio_end_s: float
    has_voice_activity: bool
    language: str | None = None
    # Recent finals of the session, to condition decoding (empty when context is off).
    prompt: str | None = None
    end_reason: EndReason | None = None  # set on finals: why the utterance ended
    # The session's options (`SessionConfig`): transcribe or translate, and whether its
    # finals (and the turn checks that may become finals) carry word times.
    task: Task = "transcribe"
    word_timestamps: bool = False
    # Finals and turn checks: when the utterance was ended (the caller's clock) and the
    # trailing silence already waited by then, so end of speech -> final can be measured.
    ended_at: float | None = None
    trailing_silence_s: float = 0.0
    # A partial of speech a trusted VAD heard (Silero): decoded without Whisper's plain
    # silence rule, which blanks the first short word (`DecodeOptions.speech_heard`).
    speech_heard: bool = False
    # A partial of an utterance none of whose words were published yet: the scheduler
    # serves it before other utterances' next partials (the first words are the ones a
    # voice assistant waits for; later partials only refine what it shows).
    first_words: bool = False
    # A partial asked early in a pause and decoded as a final is (the finals' engine and
    # options): if the pause ends the utterance with no speech since, its text is the final,
    # and no decode is waited for then (`SessionConfig.speculate_ms`).
    speculative: bool = False

    @property
    def is_final(self) -> bool:
        return self.kind.is_final

    @property
    def audio_s(self) -> float:
        return self.audio_end_s - self.audio_start_s


@dataclass(frozen=True, slots=True)
class Decoded:
    """What the engine made of a job."""

    text: str
    language: str | None
    inference_s: float
    words: Sequence[Word] = ()


@dataclass(frozen=True, slots=True)
class Transcribe:
    job: Job


@dataclass(frozen=True, slots=True)
class Publish:
    message: ServerMessage
    # Where the audio of the utterance an interrupt or error is about begins (16 kHz samples):
    # elastic mode tells a replay of one apart by the stream message that holds it.
    start_sample: int | None = None


@dataclass(frozen=True, slots=True)
class Speculated:
    """The final of `job` is its speculation's text (`core/speculation.py`): no decode; the
    runtime counts it as a final asked for and answered now, before the `Publish` after it.
    `late`: the final was asked for already and waited behind its speculation (counted then)."""

    job: Job
    late: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    reason: CloseReason


Action = Transcribe | Publish | Close | Speculated

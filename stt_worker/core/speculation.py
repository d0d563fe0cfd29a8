"""Speculative finals: the fixed endpoint's final decoded early in the pause. No I/O.

The fixed rule ends an utterance after `endpoint_silence_ms` of silence and only then asked
for its final, so the user waited the pause and a decode. With `speculate_ms` set, the
utterance so far is decoded early in each pause, as its final would be, in the partials'
line (`Job.speculative`): if the pause goes on to end the utterance with no speech since,
that text is the final at once (`ReadyFinal`). Speech in the pause makes it moot; the next
pause asks again. A busy engine serves it late or not at all: a final of its session drops
it unstarted, and the final is then decoded as before; one still decoding when the pause
ends the utterance, with no speech since, answers for the final (`late`), which waits
behind it anyway (one job per session runs at a time; `core/finals`). Sessions that ask are
told when its text becomes the final-to-be, and when speech makes it moot
(`core/turn_events.py`).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from stt_worker.core.finals import Finals
from stt_worker.core.jobs import Decoded, Job, JobKind
from stt_worker.core.phases import Phase
from stt_worker.core.utterance import Utterance
from stt_worker.core.vad import FRAME_SAMPLES

_SILENT_FRAME = np.zeros(FRAME_SAMPLES, dtype=np.int16)


@dataclass(frozen=True, slots=True)
class ReadyFinal:
    """The utterance of `job` ended in a pause its speculation heard, with no speech since:
    `decoded` (the speculation's) is its final, with no decode to wait for."""

    job: Job
    decoded: Decoded
    promised: bool


@dataclass(frozen=True, slots=True)
class Speculation:
    """When to speculate: at `frames` of pause (0: never), for an endpoint of
    `endpoint_frames`."""

    frames: int
    endpoint_frames: int

    def due(self, utterance: Utterance) -> bool:
        """At this frame, a speculative final of `utterance` is asked for (and noted)."""
        if not self.frames or utterance.silence_run != self.frames:
            return False
        if utterance.phase is not Phase.SPEAKING:
            return False  # heard over the assistant, or the endpoint checks this pause itself
        utterance.speculated_samples = utterance.samples
        utterance.speculated_voiced = utterance.voiced_frames
        utterance.ready = None
        return True

    def padded(self, job: Job, utterance: Utterance) -> Job:
        """`job` padded with digital silence up to the endpoint's pause: the final it stands
        for would hear that much pause, and Whisper's window (and with it the text) follows
        the audio's length. Zeros, as Whisper pads its own window. Its span stays the audio
        received."""
        missing = self.endpoint_frames - utterance.silence_run
        return dataclasses.replace(job, pcm=(*job.pcm, *itertools.repeat(_SILENT_FRAME, missing)))

    @staticmethod
    def racing(final: Job, utterance: Utterance) -> tuple[Job, float] | None:
        """At the end of `utterance`, whose `final` is to be decoded: a speculation of this
        pause still out, with no speech since (its final's job, the audio end it heard)."""
        if not utterance.speculating or final.kind is not JobKind.FINAL:
            return None  # none out, or a candidate heard over the assistant
        return final, utterance.speculated_end_s

    @staticmethod
    def late(finals: Finals, job: Job, text: str, ended: bool) -> tuple[Job, bool] | None:
        """A speculation that answered after its utterance `ended`: the final's job and
        whether a partial promised it, when that final raced it (no speech since it was
        asked) and still waits, behind it (one job per session runs at a time). No words is
        no answer, as before the end."""
        if not text or not ended:
            return None
        return finals.speculation_won(job.utterance_id, job.audio_end_s)

    @staticmethod
    def answered(utterance: Utterance | None, job: Job, decoded: Decoded) -> None:
        """A speculation's text: kept for `utterance` if it is the one asked last (speech
        since is checked when the utterance ends: `Utterance.ready_final`)."""
        if utterance is None or utterance.utterance_id != job.utterance_id:
            return
        asked_end_s = utterance.speculated_end_s
        # No words is no answer: a short phrase near Whisper's silence rule can decode to
        # nothing early in the pause and to its words with the rest of it (JFK's "ask not":
        # '' at 200 ms of pause, "ask not" at 500), so its final is decoded after the endpoint.
        if job.audio_end_s == asked_end_s and decoded.text:
            utterance.ready = decoded

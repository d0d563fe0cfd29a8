"""Turn events in the style of Deepgram Flux, opt-in per session (`turn_events`). No I/O.

A speculation (`core/speculation.py`) decodes the utterance early in a pause as its final
would be. When it answers with words and no speech came since, that text is the final if
the pause reaches the endpoint: `eager_end_of_turn` says so at once, so an assistant can
start its answer a pause's length early. A voiced frame in the same utterance after it
makes that text moot: `turn_resumed`, once, and the assistant drops its early answer; a
later pause may bring a new eager event. The final stays the end of the turn (Flux's
EndOfTurn); its text is the eager one unless speech came in between.

Opt-in because a consumer written for the seed protocol may take any message that is not a
partial for a final.
"""

from __future__ import annotations

from dataclasses import dataclass

from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.jobs import Action, Decoded, Job, Publish
from stt_worker.core.protocol import EagerEndOfTurn, SpeakerId, TurnResumed
from stt_worker.core.session_config import SessionConfig
from stt_worker.core.speculation import Speculation
from stt_worker.core.utterance import Segmenter
from stt_worker.core.vad import FRAME_SAMPLES


@dataclass(slots=True)
class Numbering:
    """A session's `sequence`: one count over its transcripts and turn events."""

    next: int = 0

    def take(self) -> int:
        taken, self.next = self.next, self.next + 1
        return taken


class TurnEvents:
    """One session's eager ends of turn and their resumptions, over its `segmenter`."""

    def __init__(
        self, session_id: str, config: SessionConfig, segmenter: Segmenter, numbering: Numbering
    ) -> None:
        self._session_id = session_id
        self._enabled = config.turn_events
        self._segmenter = segmenter
        self._numbering = numbering
        # The utterance whose eager event is out with no speech since; None: none.
        self._eager: int | None = None

    def answered(
        self, job: Job, decoded: Decoded, now: float, speaker_id: SpeakerId
    ) -> list[Action]:
        """A speculation's answer, kept for its utterance when it may be the final
        (`Speculation.answered`): an `eager_end_of_turn` when it is, with no speech since."""
        utterance = self._segmenter.utterance
        Speculation.answered(utterance, job, decoded)
        # `ready_final` is this very answer only while its utterance is still in the pause
        # it was asked in: speech since, an older pause's answer or no words set none.
        if not self._enabled or utterance is None or utterance.ready_final is not decoded:
            return []
        self._eager = job.utterance_id
        message = EagerEndOfTurn(
            session_id=self._session_id,
            utterance_id=job.utterance_id,
            sequence=self._numbering.take(),
            text=decoded.text,
            timestamp=now,
            speaker_id=speaker_id,
            audio_start_s=round(job.audio_start_s, 3),
            audio_end_s=round(job.audio_end_s, 3),
            language=decoded.language,
            inference_ms=round(decoded.inference_s * 1000, 1),
        )
        return [Publish(message, utterance.start_sample)]

    def frame(self, is_speech: bool, now: float, speaker_id: SpeakerId) -> list[Action]:
        """Before a frame joins the open utterance: `turn_resumed` when it is a voiced frame
        of the utterance an eager event is out for."""
        if self._eager is None:
            return []
        utterance = self._segmenter.utterance
        if utterance is None or utterance.utterance_id != self._eager:
            self._eager = None  # that utterance ended: its final settled the turn
            return []
        if not is_speech:
            return []
        self._eager = None
        end_sample = self._segmenter.samples_seen + FRAME_SAMPLES
        message = TurnResumed(
            session_id=self._session_id,
            utterance_id=utterance.utterance_id,
            sequence=self._numbering.take(),
            timestamp=now,
            speaker_id=speaker_id,
            audio_start_s=round(utterance.start_sample / SAMPLE_RATE_HZ, 3),
            audio_end_s=round(end_sample / SAMPLE_RATE_HZ, 3),
        )
        return [Publish(message, utterance.start_sample)]

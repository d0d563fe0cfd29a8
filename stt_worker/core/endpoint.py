"""Endpoint policies: when the silence after the user's speech ends their utterance.

Two rules, one interface (`EndpointPolicy`), no I/O and no clock: lengths are in 20 ms VAD
frames, and the caller counts the frames of the current pause (`silence_run`).

- `FixedEndpoint`: a pause of `endpoint_silence_ms` ends the utterance.
- `AdaptiveEndpoint`: a pause of `endpoint_min_ms` asks for a *turn check* (a quick
  transcription of the speech so far). If its words make a finished sentence, by the
  decoder's probability that the text ends there (see `turn_is_over`), the turn ends at
  once with that text; if they end mid-phrase ("... and", "um") the pause may run to
  `endpoint_max_ms`; if the check cannot tell, or speech resumed meanwhile, the fixed rule
  decides.

Each policy names what happened as a `phases.Event`; `phases.TRANSITIONS` says what it does
to the utterance (a check is only asked for from `SPEAKING`, a longer pause only allowed
in `HOLDING`).
"""

from __future__ import annotations

from typing import Protocol

from stt_worker.core.phases import Event, Phase
from stt_worker.core.turns import turn_is_over


class EndpointPolicy(Protocol):
    def on_frame(self, silence_run: int) -> Event | None:
        """What a frame of the user's utterance means here, given the pause it ends
        (`silence_run` = 0: the frame was voiced)."""
        ...

    def ends(self, silence_run: int, phase: Phase) -> bool:
        """Does a pause of `silence_run` frames end an utterance in `phase`?"""
        ...

    def judge(self, text: str, end_prob: float | None) -> Event:
        """A turn check's verdict on its words: `TURN_OVER`, `TURN_HOLDS` or
        `TURN_UNDECIDED`."""
        ...


class FixedEndpoint:
    """`silence_frames` of silence end the utterance, whatever was said."""

    def __init__(self, silence_frames: int) -> None:
        self.silence_frames = silence_frames

    def on_frame(self, silence_run: int) -> Event | None:
        return None  # no turn checks: only the length of the pause counts

    def ends(self, silence_run: int, phase: Phase) -> bool:
        return silence_run >= self.silence_frames

    def judge(self, text: str, end_prob: float | None) -> Event:
        return Event.TURN_UNDECIDED  # the pause alone decides


class AdaptiveEndpoint:
    """A turn check after `min_frames` of pause; its words end the turn, hold it open for
    up to `max_frames`, or leave it to the fixed `silence_frames`."""

    def __init__(
        self,
        *,
        silence_frames: int,
        min_frames: int,
        max_frames: int,
        finished_prob: float,
        unfinished_prob: float,
    ) -> None:
        self.silence_frames = silence_frames
        self.min_frames = min_frames
        self.max_frames = max_frames
        self.finished_prob = finished_prob
        self.unfinished_prob = unfinished_prob

    def on_frame(self, silence_run: int) -> Event | None:
        if silence_run == 0:
            return Event.SPEECH_RESUMED  # the next pause is judged afresh
        if silence_run == self.min_frames:
            return Event.CHECK_DUE
        return None

    def ends(self, silence_run: int, phase: Phase) -> bool:
        limit = self.max_frames if phase is Phase.HOLDING else self.silence_frames
        return silence_run >= limit

    def judge(self, text: str, end_prob: float | None) -> Event:
        over = turn_is_over(
            text,
            end_prob,
            finished_prob=self.finished_prob,
            unfinished_prob=self.unfinished_prob,
        )
        if over is None:
            return Event.TURN_UNDECIDED
        return Event.TURN_OVER if over else Event.TURN_HOLDS

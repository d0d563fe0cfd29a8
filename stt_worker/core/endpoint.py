"""Endpoint policies: when the silence after the user's speech ends their utterance.

Three rules, one interface (`EndpointPolicy`), no I/O and no clock: lengths are in 20 ms VAD
frames, and the caller counts the frames of the current pause (`silence_run`).

- `FixedEndpoint`: a pause of `endpoint_silence_ms` ends the utterance.
- `AdaptiveEndpoint`: a pause of `endpoint_min_ms` asks for a *turn check* (a quick
  transcription of the speech so far). If its words make a finished sentence, by the
  decoder's probability that the text ends there (see `turn_is_over`), the turn ends at
  once with that text; if they end mid-phrase ("... and", "um") the pause may run to
  `endpoint_max_ms`; if the check cannot tell, or speech resumed meanwhile, the fixed rule
  decides.
- `TurnEndpoint` (the default): a turn check after a very short pause (`turn_check_ms`)
  decodes the words and asks Smart Turn, the audio end-of-turn model, whether the turn is
  complete; `TurnRule` fuses the words, the decoder's end probability and Smart Turn's. Over:
  the check's text is the final at once. Holds: the pause may run to `turn_max_ms`, checked
  again at each of `recheck_frames` with a stricter decoder veto. Undecided: the fixed rule
  decides.

Each policy names what happened as a `phases.Event`; `phases.TRANSITIONS` says what it does
to the utterance (a check is only asked for from `SPEAKING`, a longer pause only allowed
in `HOLDING`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stt_worker.core.phases import Event, Phase
from stt_worker.core.turns import ends_mid_phrase, sounds_finished, turn_is_over
from stt_worker.core.vad import FRAME_MS


class EndpointPolicy(Protocol):
    def on_frame(self, silence_run: int, checked_at: int = 0) -> Event | None:
        """What a frame of the user's utterance means here, given the pause it ends
        (`silence_run` = 0: the frame was voiced) and the point of this pause the last turn
        check heard (`checked_at`, frames; 0: none asked in it)."""
        ...

    def check_point(self, silence_run: int) -> int:
        """How much of the pause (frames) a turn check asked at `silence_run` hears."""
        ...

    def ends(self, silence_run: int, phase: Phase) -> bool:
        """Does a pause of `silence_run` frames end an utterance in `phase`?"""
        ...

    def judge(
        self,
        text: str,
        end_prob: float | None,
        turn_prob: float | None = None,
        pause_s: float = 0.0,
    ) -> Event:
        """A turn check's verdict on its words (and Smart Turn's probability, when it ran),
        asked `pause_s` into the pause: `TURN_OVER`, `TURN_HOLDS` or `TURN_UNDECIDED`."""
        ...


class FixedEndpoint:
    """`silence_frames` of silence end the utterance, whatever was said."""

    def __init__(self, silence_frames: int) -> None:
        self.silence_frames = silence_frames

    def on_frame(self, silence_run: int, checked_at: int = 0) -> Event | None:
        return None  # no turn checks: only the length of the pause counts

    def check_point(self, silence_run: int) -> int:
        return silence_run

    def ends(self, silence_run: int, phase: Phase) -> bool:
        return silence_run >= self.silence_frames

    def judge(
        self,
        text: str,
        end_prob: float | None,
        turn_prob: float | None = None,
        pause_s: float = 0.0,
    ) -> Event:
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

    def on_frame(self, silence_run: int, checked_at: int = 0) -> Event | None:
        if silence_run == 0:
            return Event.SPEECH_RESUMED  # the next pause is judged afresh
        if silence_run == self.min_frames:
            return Event.CHECK_DUE
        return None

    def check_point(self, silence_run: int) -> int:
        return silence_run

    def ends(self, silence_run: int, phase: Phase) -> bool:
        limit = self.max_frames if phase is Phase.HOLDING else self.silence_frames
        return silence_run >= limit

    def judge(
        self,
        text: str,
        end_prob: float | None,
        turn_prob: float | None = None,
        pause_s: float = 0.0,
    ) -> Event:
        over = turn_is_over(
            text,
            end_prob,
            finished_prob=self.finished_prob,
            unfinished_prob=self.unfinished_prob,
        )
        if over is None:
            return Event.TURN_UNDECIDED
        return Event.TURN_OVER if over else Event.TURN_HOLDS


@dataclass(frozen=True, slots=True)
class TurnRule:
    """Whether a turn check's pause ends the turn: its words, the decoder's probability that
    they end there (`end_prob`) and Smart Turn's that the turn is complete (`turn_prob`).
    The defaults are the settings' (`STT_TURN_*`)."""

    # Smart Turn at or above this: the turn is over (unless the words say otherwise).
    over_prob: float = 0.9
    # Smart Turn below this: the speaker is mid-phrase; the pause may run long.
    hold_prob: float = 0.9
    # The decoder's end probability below this vetoes an end: the words go on.
    end_veto_prob: float = 0.5
    # The veto at a recheck, later in the pause: by 200 ms Smart Turn hears most pauses as an
    # end, clause ends mid-sentence too, so only words the decoder is surer of may end it.
    recheck_veto_prob: float = 0.85
    # Without Smart Turn (it failed or was not asked): the adaptive mode's decoder thresholds.
    finished_prob: float = 0.75
    unfinished_prob: float = 0.5

    def judge(
        self, text: str, end_prob: float | None, turn_prob: float | None, *, recheck: bool = False
    ) -> Event:
        if turn_prob is not None and turn_prob < self.hold_prob:
            # The voice says mid-turn: the words cannot end it (the engine skips their
            # decode, `TurnCheckEngine`), and a continuation would hold it anyway.
            return Event.TURN_HOLDS
        if sounds_finished(text) is None:
            return Event.TURN_UNDECIDED  # no words: nothing to end the turn with
        if ends_mid_phrase(text):
            return Event.TURN_HOLDS  # "... and", "um", a trailing comma
        if turn_prob is None:
            over = turn_is_over(
                text,
                end_prob,
                finished_prob=self.finished_prob,
                unfinished_prob=self.unfinished_prob,
            )
            if over is None:
                return Event.TURN_UNDECIDED
            return Event.TURN_OVER if over else Event.TURN_HOLDS
        veto = self.recheck_veto_prob if recheck else self.end_veto_prob
        if end_prob is not None and end_prob < veto:
            return Event.TURN_HOLDS  # the language model expects the sentence to go on
        if turn_prob >= self.over_prob:
            return Event.TURN_OVER
        if turn_prob < self.hold_prob:
            return Event.TURN_HOLDS
        return Event.TURN_UNDECIDED


class TurnEndpoint:
    """Turn checks at `check_frames` of pause (and again at each of `recheck_frames` while
    the turn holds); `rule` judges them, a recheck with its stricter veto. While a check
    decodes or the turn holds, the pause may run to `max_frames`: the check, not the clock,
    decides; after an undecided check the fixed `silence_frames` does."""

    def __init__(
        self,
        *,
        silence_frames: int,
        check_frames: int,
        recheck_frames: tuple[int, ...] = (),
        max_frames: int,
        rule: TurnRule,
    ) -> None:
        self.silence_frames = silence_frames
        self.check_frames = check_frames
        self.recheck_frames = recheck_frames
        self.max_frames = max_frames
        self.rule = rule

    def on_frame(self, silence_run: int, checked_at: int = 0) -> Event | None:
        if silence_run == 0:
            return Event.SPEECH_RESUMED
        if silence_run == self.check_frames:
            return Event.CHECK_DUE
        # A recheck is due from its point on until asked (from `HOLDING` too: the longer
        # pause is heard afresh): under load the check before it may still be decoding
        # there, and a recheck that waited for it must not be skipped, leaving the turn to
        # `max_frames`.
        if any(checked_at < point <= silence_run for point in self.recheck_frames):
            return Event.CHECK_DUE
        return None

    def check_point(self, silence_run: int) -> int:
        # A late check hears the pause up to its own point, as an on-time one would: its
        # verdict is the one the rule was tuned on, only later.
        points = (self.check_frames, *self.recheck_frames)
        return max((point for point in points if point <= silence_run), default=silence_run)

    def ends(self, silence_run: int, phase: Phase) -> bool:
        waiting = phase in (Phase.HOLDING, Phase.CHECKING)
        return silence_run >= (self.max_frames if waiting else self.silence_frames)

    def judge(
        self,
        text: str,
        end_prob: float | None,
        turn_prob: float | None = None,
        pause_s: float = 0.0,
    ) -> Event:
        recheck = pause_s * 1000 > self.check_frames * FRAME_MS
        return self.rule.judge(text, end_prob, turn_prob, recheck=recheck)

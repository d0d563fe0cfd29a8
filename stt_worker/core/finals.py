"""`Finals`: the utterances that ended and wait for their final, by utterance id.

Each keeps the phase its utterance ended in (`phases.TRANSITIONS`, after the end):

- `FINAL_OUT`: its final is decoding.
- `RACING_CHECK`: the fixed endpoint ended it while the adaptive endpoint's turn check of
  the same pause still decoded, with no speech since that check. Under load the check
  (asked for at `endpoint_min_ms`) can outlast the endpoint (`endpoint_silence_ms`): both
  decode the same words, so whichever answers first is the final and the other is dropped.
- `ANSWERED_BY_CHECK`: the check won; the final's own decode is dropped when it comes.

A fixed-mode speculation (`core/speculation.py`) still decoding when its pause ended the
utterance, with no speech since, races the final the same way: the final waits behind it
(one job per session runs at a time), and its text is the final's (`speculation_won`).

An entry leaves when its final's decode comes back (result or failure), or when that decode
is withdrawn from the queue unrun (`withdrawn`). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from stt_worker.core.jobs import Job
from stt_worker.core.phases import AWAITING_FINAL, Event, Phase, advance


@dataclass(slots=True)
class _Final:
    start_sample: int
    promised: bool  # a partial went out: the final is published even when empty
    phase: Phase
    # A speculation racing the final: the final's job, and the audio end (s) it was asked at.
    racing: tuple[Job, float] | None = None


class Finals:
    """Finals asked for and not yet answered, and the turn checks racing them."""

    def __init__(self) -> None:
        self._finals: dict[int, _Final] = {}

    def ask(
        self,
        utterance_id: int,
        start_sample: int,
        *,
        promised: bool,
        phase: Phase,
        racing: tuple[Job, float] | None = None,
    ) -> None:
        """`racing`: a speculation still out for the pause that ended it (the final's job,
        the audio end the speculation heard); its phase is then `RACING_CHECK`."""
        phase = Phase.RACING_CHECK if racing and phase is Phase.FINAL_OUT else phase
        self._finals[utterance_id] = _Final(start_sample, promised, phase, racing)

    def returned(self, utterance_id: int) -> bool | None:
        """The final's own decode came back. None: the turn check's text was published
        for it already (drop it); else whether a partial promised a final."""
        final = self._finals.pop(utterance_id, None)
        if final is None:
            return False
        answered_by_check = final.phase is Phase.ANSWERED_BY_CHECK
        final.phase = advance(final.phase, Event.FINAL_RETURNED)
        return None if answered_by_check else final.promised

    def check_won(self, utterance_id: int) -> bool | None:
        """A turn check answered after its utterance ended. None: no final races it (speech
        came after the check, or the final answered first); else that final is answered by
        the check's text, and whether a partial promised it."""
        final = self._finals.get(utterance_id)
        if final is None:
            return None
        before = final.phase
        final.phase = advance(before, Event.CHECK_WON)
        return final.promised if final.phase is not before else None

    def speculation_won(self, utterance_id: int, audio_end_s: float) -> tuple[Job, bool] | None:
        """A speculation heard up to `audio_end_s` answered with words after its utterance
        ended. The final's job and whether a partial promised it when that final raced this
        very speculation and has not answered; else None (an older pause's speculation, or
        the final came first)."""
        final = self._finals.get(utterance_id)
        if final is None or final.racing is None or final.racing[1] != audio_end_s:
            return None
        promised = self.check_won(utterance_id)
        return None if promised is None else (final.racing[0], promised)

    def withdrawn(self, utterance_id: int) -> None:
        """The final's decode was taken out of the queue before it ran (its speculation
        answered for it): none will come back, so its entry, and the job with the
        utterance's audio that it holds, goes now. Only an answered final's: one still
        to be published keeps its entry (its decode decides)."""
        final = self._finals.get(utterance_id)
        if final is not None and final.phase is Phase.ANSWERED_BY_CHECK:
            del self._finals[utterance_id]

    def aside_failed(self, utterance_id: int) -> None:
        """A turn check (or probe) of this utterance failed: its final decides alone."""
        final = self._finals.get(utterance_id)
        if final is not None:
            final.phase = advance(final.phase, Event.ASIDE_FAILED)

    @property
    def pending(self) -> int:
        """Finals still to be published (or to fail)."""
        return sum(final.phase in AWAITING_FINAL for final in self._finals.values())

    def start_samples(self) -> list[int]:
        """The first sample of each utterance whose final is still to come."""
        return [f.start_sample for f in self._finals.values() if f.phase in AWAITING_FINAL]

"""`Finals`: the utterances that ended and wait for their final, by utterance id.

Each keeps the phase its utterance ended in (`phases.TRANSITIONS`, after the end):

- `FINAL_OUT`: its final is decoding.
- `RACING_CHECK`: the fixed endpoint ended it while the adaptive endpoint's turn check of
  the same pause still decoded, with no speech since that check. Under load the check
  (asked for at `endpoint_min_ms`) can outlast the endpoint (`endpoint_silence_ms`): both
  decode the same words, so whichever answers first is the final and the other is dropped.
- `ANSWERED_BY_CHECK`: the check won; the final's own decode is dropped when it comes.

An entry leaves when its final's decode comes back (result or failure). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from stt_worker.core.phases import AWAITING_FINAL, Event, Phase, advance


@dataclass(slots=True)
class _Final:
    start_sample: int
    promised: bool  # a partial went out: the final is published even when empty
    phase: Phase


class Finals:
    """Finals asked for and not yet answered, and the turn checks racing them."""

    def __init__(self) -> None:
        self._finals: dict[int, _Final] = {}

    def ask(self, utterance_id: int, start_sample: int, *, promised: bool, phase: Phase) -> None:
        self._finals[utterance_id] = _Final(start_sample, promised, phase)

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

"""When an utterance's next partial is due. No I/O.

The first partial comes after a short stretch of speech (`first_voiced_frames`), so that a
voice assistant sees words about as soon as they are said. A fifth of a second often holds
no whole word yet (tiny.en writes nothing, "n" or "." for it), so after a partial without
a word the next is asked for after `WORDLESS_STEP_SAMPLES` (100 ms) of new audio; else every
`interval`. A busy engine stretches either step by the time partials currently wait in its
line (`partial_wait_s`, from the runtime): a partial asked for sooner would only replace
one still waiting, so the cadence then follows what the engine can serve, and the decodes
saved are the finals' (which the scheduler serves first anyway).

`interval` is also the longest the client should wait between two partials. A partial
arrives its decode after it is asked for, and each decode of the growing utterance takes a
little longer than the one before, with jitter on a shared CPU: asked every `interval` of
audio, half the partials arrived more than `interval` apart (`bench.turn_latency`'s `gaps`).
So while partials do not wait, the next is asked for `lead` sooner. The lead fades as they
start to wait, and is gone once they wait as long as it: from there on the cadence is the
interval stretched by the wait, as without a lead, so a loaded engine is asked for no more
partials than before.
"""

from __future__ import annotations

from dataclasses import dataclass

from stt_worker.core.audio import SAMPLE_RATE_HZ

WORDLESS_STEP_SAMPLES = SAMPLE_RATE_HZ // 10


@dataclass(frozen=True, slots=True)
class PartialCadence:
    """The partial timing of one session's utterances (frames of 20 ms, 16 kHz samples)."""

    first_voiced_frames: int
    interval_samples: int
    lead_samples: int = 0

    def interval(self, partial_wait_s: float, *, wordless: bool = False) -> int:
        """New audio between two partials, in samples, when partials wait `partial_wait_s`
        and (`wordless`) the last one had no word."""
        wait = round(max(0.0, partial_wait_s) * SAMPLE_RATE_HZ)
        if wordless:
            return WORDLESS_STEP_SAMPLES + wait
        lead = max(0, self.lead_samples - wait)
        return max(WORDLESS_STEP_SAMPLES, self.interval_samples - lead) + wait

    def due(
        self,
        *,
        voiced_frames: int,
        samples: int,
        samples_at_last_partial: int,
        wordless: bool = False,
        partial_wait_s: float = 0.0,
    ) -> bool:
        """Whether an utterance with `voiced_frames` of speech and `samples` of audio, whose
        last partial was asked at `samples_at_last_partial` (0: none yet) and answered
        without a word (`wordless`) or not, is due one."""
        if samples_at_last_partial == 0:
            return voiced_frames >= self.first_voiced_frames
        step = self.interval(partial_wait_s, wordless=wordless)
        return samples - samples_at_last_partial >= step

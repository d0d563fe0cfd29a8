"""Barge-in policies: when speech heard over the assistant interrupts it.

Speech that begins while the assistant talks is a *candidate*; a policy decides whether it
takes the turn. No I/O and no clock: lengths are in 20 ms VAD frames.

- `VoiceBargeIn` (voice mode): `interrupt_min_speech_ms` of voiced frames interrupt; a
  candidate that falls silent first was noise and is dropped untranscribed.
- `WordBargeIn` (word mode): the candidate's speech is *probed* (quickly transcribed) once
  there is `interrupt_min_speech_ms` of it, again after every further `probe_step_ms` of
  it, and when it pauses (its last word is then whole). A probe interrupts when it hears a
  command ("stop", "hold on"), or a word that is not a backchannel ("yeah", "mm-hmm") with
  its last word judged only once whole: after a pause, or heard last by two probes in a
  row (mid-speech "Ri-" reads as "Run"). A probe holding more words than anyone says in
  its audio is Whisper's invention and counts as nothing. A candidate that ends
  unconfirmed is still transcribed: a late barge-in if its text takes the turn, else a
  backchannel.

Policies name what happened as a `phases.Event`; `phases.TRANSITIONS` says what it does to
the candidate (a probe already out absorbs `PROBE_DUE`, for one).
"""

from __future__ import annotations

from dataclasses import dataclass

from stt_worker.core.phases import Event
from stt_worker.core.turns import Backchannels, Commands, more_words_than_said, words_of
from stt_worker.core.vad import FRAME_MS

# A pause this long after a word means the word is whole (80 ms).
PROBE_PAUSE_FRAMES = 4


class VoiceBargeIn:
    """Voice alone: `interrupt_frames` voiced frames interrupt; `quiet_frames` of silence
    before that end the candidate as noise."""

    # A candidate that ends unconfirmed was too short to interrupt: nothing to transcribe.
    unconfirmed_end = Event.DROPPED

    def __init__(self, *, interrupt_frames: int, quiet_frames: int) -> None:
        self.interrupt_frames = interrupt_frames
        self.quiet_frames = quiet_frames

    def on_frame(
        self, *, voiced_frames: int, silence_run: int, voiced_at_last_probe: int
    ) -> Event | None:
        if voiced_frames >= self.interrupt_frames:
            return Event.BARGE_IN
        if silence_run >= self.quiet_frames:
            return Event.DROPPED  # a short noise while the assistant talks
        return None


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """What a probe's text means: `BARGE_IN` or `PROBE_ANSWERED`, the text as judged
    (empty when it held more words than its audio can), its last word (to compare with
    the next probe's) and whether that word was judged whole."""

    event: Event
    text: str
    last_word: str | None
    whole: bool


class WordBargeIn:
    """Words decide: probes of the candidate's speech, judged by `commands` and
    `backchannels` (see the module docstring)."""

    # A candidate that ends unconfirmed is transcribed and judged by its final text.
    unconfirmed_end = Event.ENDED

    def __init__(
        self,
        *,
        interrupt_frames: int,
        probe_step_frames: int,
        backchannels: Backchannels,
        commands: Commands,
    ) -> None:
        self.interrupt_frames = interrupt_frames
        self.probe_step_frames = probe_step_frames
        self.backchannels = backchannels
        self.commands = commands

    def on_frame(
        self, *, voiced_frames: int, silence_run: int, voiced_at_last_probe: int
    ) -> Event | None:
        """`voiced_at_last_probe`: the voiced frames when the last probe was sent, 0 if
        none was."""
        if voiced_frames < self.interrupt_frames:
            return None
        if silence_run == PROBE_PAUSE_FRAMES:
            return Event.PAUSE_BEGAN
        stepped = (
            not voiced_at_last_probe
            or voiced_frames - voiced_at_last_probe >= self.probe_step_frames
        )
        if stepped and silence_run == 0:
            return Event.PROBE_DUE
        return None

    def judge_probe(
        self,
        text: str,
        *,
        audio_s: float,
        trailing_silence_s: float,
        previous_last_word: str | None,
    ) -> ProbeVerdict:
        """A probe of `audio_s` seconds, sent `trailing_silence_s` into a pause, heard `text`;
        the probe before it ended on `previous_last_word`."""
        if more_words_than_said(text, audio_s):
            text = ""
        words = words_of(text)
        last_word = words[-1] if words else None
        whole = trailing_silence_s >= PROBE_PAUSE_FRAMES * FRAME_MS / 1000 or (
            last_word is not None and last_word == previous_last_word
        )
        takes_turn = self.commands.said(text) or self.backchannels.takes_turn(
            text, last_word_whole=whole
        )
        event = Event.BARGE_IN if takes_turn else Event.PROBE_ANSWERED
        return ProbeVerdict(event, text, last_word, whole)

    def final_takes_turn(self, text: str) -> bool:
        """An unconfirmed candidate's final text: real words are a late barge-in; only
        backchannels (or nothing) are not."""
        return self.backchannels.takes_turn(text)


BargeInPolicy = VoiceBargeIn | WordBargeIn

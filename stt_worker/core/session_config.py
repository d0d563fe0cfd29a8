"""`SessionConfig`: the knobs a session needs, and the endpoint and barge-in policies they
choose. Built from `Settings` by the runtime; durations are in ms, read in whole 20 ms VAD
frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.barge_in import BargeInPolicy, VoiceBargeIn, WordBargeIn
from stt_worker.core.cadence import PartialCadence
from stt_worker.core.endpoint import (
    AdaptiveEndpoint,
    EndpointPolicy,
    FixedEndpoint,
    TurnEndpoint,
    TurnRule,
)
from stt_worker.core.protocol import Task
from stt_worker.core.turns import Backchannels, Commands
from stt_worker.core.vad import FRAME_MS

EndpointMode = Literal["fixed", "adaptive", "turn"]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The knobs a session needs, in frames and samples (derived from `Settings`)."""

    enable_vad: bool = True
    # The VAD hears no speech in noise (Silero: none of the non-speech set; webrtcvad: 59%),
    # so a partial of what it heard may skip Whisper's plain silence rule.
    vad_trusted: bool = False
    enable_interrupt_detection: bool = True
    endpoint_silence_ms: int = 500
    partial_first_ms: int = 200
    partial_interval_ms: int = 300
    partial_lead_ms: int = 100  # the next partial is asked this much sooner while none wait
    speech_start_ms: int = 60
    preroll_ms: int = 300
    interrupt_min_speech_ms: int = 250
    max_utterance_samples: int = 30 * SAMPLE_RATE_HZ
    chunk_timeout_s: float = 2.0
    idle_timeout_s: float = 60.0
    max_session_s: float = 4 * 3600.0
    # Characters of recent final text passed to the model as context; 0 = none.
    context_chars: int = 0
    # Barge-in: False = on voice activity alone; True = only once a quick transcription of
    # the speech holds a word that is not a backchannel ("yeah", "mm-hmm").
    barge_in_words: bool = False
    backchannels: Backchannels = field(default_factory=Backchannels)
    # Word mode: phrases that interrupt as soon as a probe hears them ("stop", "wait").
    commands: Commands = field(default_factory=Commands)
    # Word mode: more voiced audio between two probes of the same speech.
    probe_step_ms: int = 150
    # `fixed`: `endpoint_silence_ms` of silence ends the turn. `adaptive`: after
    # `endpoint_min_ms` of silence the speech so far is transcribed at once; a finished
    # sentence ends the turn there (with that text), one ending mid-phrase ("... and", "um")
    # waits `endpoint_max_ms`, else `endpoint_silence_ms`. `turn`: the same with Smart Turn,
    # sooner (the `turn_*` knobs below).
    endpoint_mode: EndpointMode = "fixed"
    endpoint_min_ms: int = 300
    endpoint_max_ms: int = 1000
    # The decoder's probability that the text ends at the pause (`Transcript.end_prob`):
    # at least `endpoint_finished_prob` ends the turn, below `endpoint_unfinished_prob` waits
    # `endpoint_max_ms`, in between the fixed endpoint decides.
    endpoint_finished_prob: float = 0.75
    endpoint_unfinished_prob: float = 0.5
    # Turn mode: the check's pause, a second check's (0: none) while the turn holds, the
    # longest pause a holding turn waits, and the rule that judges the checks.
    turn_check_ms: int = 80
    turn_recheck_ms: int = 200
    turn_max_ms: int = 1200
    turn_rule: TurnRule = field(default_factory=TurnRule)
    # Fixed mode: this far into a pause (0: never) the utterance so far is decoded as its
    # final would be; if the pause ends it with no speech since, that text is the final.
    speculate_ms: int = 0
    # Publish `eager_end_of_turn` when a speculation answers with words, and `turn_resumed`
    # when speech comes back after it (`core/turn_events.py`). Opt-in: a seed consumer may
    # take any message that is not a partial for a final.
    turn_events: bool = False
    # Per-session options (`core/options.py`): partials published at all; the session's own
    # prompt (hotwords, names), decoded before its recent finals; transcribe or translate
    # into English; finals with the time of each word.
    partials: bool = True
    prompt: str | None = None
    task: Task = "transcribe"
    word_timestamps: bool = False

    @property
    def endpoint_frames(self) -> int:
        return _frames(self.endpoint_silence_ms)

    @property
    def speculate_frames(self) -> int:
        """Frames of pause at which a speculative final is asked for; 0: none (the other
        modes' turn checks already decode at their pauses, and without VAD there are none)."""
        if not self.speculate_ms or self.endpoint_mode != "fixed" or not self.enable_vad:
            return 0
        frames = _frames(self.speculate_ms)
        return frames if frames < self.endpoint_frames else 0

    @property
    def start_frames(self) -> int:
        return _frames(self.speech_start_ms)

    @property
    def preroll_frames(self) -> int:
        return self.preroll_ms // FRAME_MS

    @property
    def interrupt_frames(self) -> int:
        return _frames(self.interrupt_min_speech_ms)

    @property
    def endpoint_min_frames(self) -> int:
        return _frames(self.endpoint_min_ms)

    @property
    def endpoint_max_frames(self) -> int:
        return _frames(self.endpoint_max_ms)

    @property
    def probe_step_frames(self) -> int:
        return _frames(self.probe_step_ms)

    @property
    def partial_interval_samples(self) -> int:
        return self.partial_interval_ms * SAMPLE_RATE_HZ // 1000

    def partial_cadence(self) -> PartialCadence:
        return PartialCadence(
            first_voiced_frames=_frames(self.partial_first_ms),
            interval_samples=self.partial_interval_samples,
            lead_samples=self.partial_lead_ms * SAMPLE_RATE_HZ // 1000,
        )

    def endpoint_policy(self) -> EndpointPolicy:
        """The end-of-utterance rule these knobs choose."""
        if self.endpoint_mode == "fixed":
            return FixedEndpoint(self.endpoint_frames)
        if self.endpoint_mode == "turn":
            return TurnEndpoint(
                silence_frames=self.endpoint_frames,
                check_frames=_frames(self.turn_check_ms),
                recheck_frames=(_frames(self.turn_recheck_ms),) if self.turn_recheck_ms else (),
                max_frames=_frames(self.turn_max_ms),
                rule=self.turn_rule,
            )
        return AdaptiveEndpoint(
            silence_frames=self.endpoint_frames,
            min_frames=self.endpoint_min_frames,
            max_frames=self.endpoint_max_frames,
            finished_prob=self.endpoint_finished_prob,
            unfinished_prob=self.endpoint_unfinished_prob,
        )

    def barge_in_policy(self) -> BargeInPolicy | None:
        """The barge-in rule these knobs choose; None: audio heard while the assistant
        talks is not the user's."""
        if not self.enable_interrupt_detection:
            return None
        if not self.barge_in_words:
            return VoiceBargeIn(
                interrupt_frames=self.interrupt_frames, quiet_frames=self.endpoint_frames
            )
        return WordBargeIn(
            interrupt_frames=self.interrupt_frames,
            probe_step_frames=self.probe_step_frames,
            backchannels=self.backchannels,
            commands=self.commands,
        )


def _frames(ms: int) -> int:
    """A duration setting in whole VAD frames, at least one."""
    return max(1, ms // FRAME_MS)

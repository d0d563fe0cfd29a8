"""When the user's speech interrupts the assistant's, by voice or by words."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from stt_worker.config.fields import Group, setting
from stt_worker.core.turns import DEFAULT_BACKCHANNELS, DEFAULT_COMMANDS


class BargeInFields(BaseModel):
    """The fields of `Group.BARGE_IN`, one of the bases of `Settings`."""

    enable_interrupt_detection: bool = setting(
        True,
        "STT_ENABLE_INTERRUPT_DETECTION",
        group=Group.BARGE_IN,
        description="Barge-in while `responding`; off: audio in `responding` is not transcribed.",
    )
    barge_in_mode: Literal["vad", "words"] = setting(
        "vad",
        "STT_BARGE_IN_MODE",
        group=Group.BARGE_IN,
        description="`vad`: interrupt on voice activity (`STT_INTERRUPT_MIN_SPEECH_MS`). "
        "`words`: only once a quick transcription (a probe) of that speech holds a command "
        "or a word that is not a backchannel, probed again every `STT_BARGE_IN_PROBE_MS` of "
        "more speech.",
    )
    interrupt_min_speech_ms: int = setting(
        250,
        "STT_INTERRUPT_MIN_SPEECH_MS",
        group=Group.BARGE_IN,
        description="Voiced audio in `responding` that counts as barge-in (`vad` mode) or "
        "starts the first probe (`words` mode).",
        ge=20,
    )
    barge_in_probe_ms: int = setting(
        150,
        "STT_BARGE_IN_PROBE_MS",
        group=Group.BARGE_IN,
        description="`words` mode: further voiced audio between two probes.",
        ge=20,
    )
    backchannels: str = setting(
        ",".join(DEFAULT_BACKCHANNELS),
        "STT_BACKCHANNELS",
        group=Group.BARGE_IN,
        description="`words` mode: comma-separated phrases that do not take the turn.",
    )
    barge_in_commands: str = setting(
        ",".join(DEFAULT_COMMANDS),
        "STT_BARGE_IN_COMMANDS",
        group=Group.BARGE_IN,
        description="`words` mode: comma-separated phrases that interrupt as soon as a probe "
        "hears them, even mid-word; empty: none.",
    )

    @property
    def backchannel_phrases(self) -> list[str]:
        return _phrases(self.backchannels)

    @property
    def command_phrases(self) -> list[str]:
        return _phrases(self.barge_in_commands)


def _phrases(listing: str) -> list[str]:
    """A comma-separated setting as its non-empty phrases."""
    return [phrase.strip() for phrase in listing.split(",") if phrase.strip()]

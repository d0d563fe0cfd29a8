"""Voice activity detection: which detector, how sure, how much audio leads an utterance."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from stt_worker.config.fields import Group, setting


class AudioFields(BaseModel):
    """The fields of `Group.AUDIO`, one of the bases of `Settings`."""

    enable_vad: bool = setting(
        True,
        "STT_ENABLE_VAD",
        group=Group.AUDIO,
        description="Voice activity detection. Off: the seed's plain behaviour, all audio is "
        "buffered and transcribed when the buffer fills, the chunks stop, or at `end`.",
    )
    vad_engine: Literal["silero", "webrtc"] = setting(
        "silero",
        "STT_VAD_ENGINE",
        group=Group.AUDIO,
        description="The speech detector that labels each 20 ms frame. `silero`: Silero VAD "
        "(ONNX, shipped in the pipecat-ai package), fewer noise and breath frames taken for "
        "speech and word ends found sooner, about 4 ms of CPU per second of audio per session. "
        "`webrtc`: webrtcvad, about 0.3 ms.",
    )
    vad_threshold: float = setting(
        0.4,
        "STT_VAD_THRESHOLD",
        group=Group.AUDIO,
        description="Silero's speech probability at which speech starts; it ends only below "
        "this minus 0.15, as in Silero's own streaming iterator.",
        gt=0.15,
        le=1.0,
    )
    vad_aggressiveness: int = setting(
        2,
        "STT_VAD_AGGRESSIVENESS",
        group=Group.AUDIO,
        description="webrtcvad's aggressiveness, 0 (least) to 3 (most); with "
        "`STT_VAD_ENGINE=webrtc`.",
        ge=0,
        le=3,
    )
    speech_start_ms: int = setting(
        60,
        "STT_SPEECH_START_MS",
        group=Group.AUDIO,
        description="Voiced audio within the last 100 ms that starts speech.",
        ge=20,
    )
    preroll_ms: int = setting(
        300,
        "STT_PREROLL_MS",
        group=Group.AUDIO,
        description="Audio kept from before speech onset, so the first phoneme is not cut.",
        ge=0,
        le=2000,
    )

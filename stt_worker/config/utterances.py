"""How long an utterance may grow and when its partials are published."""

from __future__ import annotations

from pydantic import BaseModel

from stt_worker.config.fields import Group, setting
from stt_worker.core.audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ


class UtteranceFields(BaseModel):
    """The fields of `Group.UTTERANCES`, one of the bases of `Settings`."""

    buffer_size_bytes: int = setting(
        512_000,
        "STT_BUFFER_SIZE_BYTES",
        group=Group.UTTERANCES,
        description="Longest utterance, in 16 kHz mono PCM16 bytes (the default is 16 s), "
        "cut where the speaker is quietest; `STT_MAX_UTTERANCE_S` caps it. With VAD off, "
        "audio is transcribed whenever this much is buffered.",
        gt=0,
    )
    max_utterance_s: float = setting(
        30.0,
        "STT_MAX_UTTERANCE_S",
        group=Group.UTTERANCES,
        description="Hard cap on an utterance, in seconds (Whisper's window is 30 s).",
        gt=1,
        le=30,
    )
    chunk_timeout_s: float = setting(
        2.0,
        "STT_CHUNK_TIMEOUT",
        group=Group.UTTERANCES,
        description="Seconds without a chunk after which open speech is finalised.",
        gt=0,
    )
    partial_first_ms: int = setting(
        200,
        "STT_PARTIAL_FIRST_MS",
        group=Group.UTTERANCES,
        description="Speech (voiced audio) heard before an utterance's first partial.",
        ge=20,
    )
    partial_interval_ms: int = setting(
        300,
        "STT_PARTIAL_INTERVAL_MS",
        group=Group.UTTERANCES,
        description="New audio between two partials of an utterance while the engine keeps "
        "up, and the longest wait between their results aimed at (see "
        "`STT_PARTIAL_LEAD_MS`); a busy engine stretches it by the time partials wait in its "
        "queue.",
        ge=100,
    )
    partial_cpu_wait: float = setting(
        0.5,
        "STT_PARTIAL_CPU_WAIT",
        group=Group.UTTERANCES,
        description="Partials pace themselves while this process's threads wait for a CPU "
        "more than this share of the time they are runnable (cores shared with other "
        "workers or pods, a CPU limit): their duty cycle shrinks each second the wait is "
        "over it and grows back each second it is under, so finals get the cores. On cores "
        "of its own a worker waits less (0.4 at 24 sessions here) and paces nothing. 0 or 1: "
        "never paced.",
        ge=0.0,
        le=1.0,
    )
    partial_lead_ms: int = setting(
        100,
        "STT_PARTIAL_LEAD_MS",
        group=Group.UTTERANCES,
        description="How much sooner than `STT_PARTIAL_INTERVAL_MS` the next partial is asked "
        "for while partials do not wait for the engine, so that a decode a little slower than "
        "the last still lands within the interval; it fades as partials wait and is gone "
        "once they wait this long. 0: every interval of new audio.",
        ge=0,
    )

    @property
    def max_utterance_samples(self) -> int:
        """Longest utterance kept before it is cut and finalised.

        `STT_BUFFER_SIZE_BYTES` counts 16 kHz mono PCM16 bytes (32,000 per second), so the
        seed's 512,000 is 16 s; Whisper's 30 s window is the hard ceiling.
        """
        by_buffer = self.buffer_size_bytes // BYTES_PER_SAMPLE
        by_window = int(self.max_utterance_s * SAMPLE_RATE_HZ)
        return max(SAMPLE_RATE_HZ, min(by_buffer, by_window))

"""Where the worker's audio comes from and its results go: the NATS server and subjects."""

from __future__ import annotations

from pydantic import BaseModel

from stt_worker.config.fields import Group, setting


class TransportFields(BaseModel):
    """The fields of `Group.TRANSPORT`, one of the bases of `Settings`."""

    nats_url: str = setting(
        "nats://nats.ai-ml.svc.cluster.local:4222",
        "NATS_URL",
        group=Group.TRANSPORT,
        description="NATS server (`tls://` for TLS with the system's CAs); credentials "
        "written into the URL are redacted in logs.",
    )
    stream_subject: str = setting(
        "ai.voice.stream.*",
        "STT_STREAM_SUBJECT",
        group=Group.TRANSPORT,
        description="Input subject: audio and control messages, one session per last token.",
    )
    transcription_subject_prefix: str = setting(
        "ai.voice.transcription",
        "STT_TRANSCRIPTION_SUBJECT_PREFIX",
        group=Group.TRANSPORT,
        description="Output subject prefix; results go to `{prefix}.{session_id}`.",
    )

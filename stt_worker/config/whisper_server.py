"""`whisper-server`, the engine as an OpenAI-compatible HTTP service: address and limits."""

from __future__ import annotations

from pydantic import BaseModel

from stt_worker.config.fields import Group, setting


class WhisperServerFields(BaseModel):
    """The fields of `Group.WHISPER_SERVER`, one of the bases of `Settings`."""

    whisper_server_host: str = setting(
        "127.0.0.1",
        "WHISPER_SERVER_HOST",
        group=Group.WHISPER_SERVER,
        description="Listen address of `stt-streaming whisper-server`: loopback unless "
        "opened on purpose (the container images and k8s manifests set `0.0.0.0`).",
    )
    whisper_server_port: int = setting(
        8000,
        "WHISPER_SERVER_PORT",
        group=Group.WHISPER_SERVER,
        description="Listen port of `stt-streaming whisper-server`.",
        ge=0,
        le=65535,
    )
    whisper_server_max_concurrency: int = setting(
        1,
        "WHISPER_SERVER_MAX_CONCURRENCY",
        group=Group.WHISPER_SERVER,
        description="Inferences at once.",
        ge=1,
    )
    whisper_server_max_queue: int = setting(
        32,
        "WHISPER_SERVER_MAX_QUEUE",
        group=Group.WHISPER_SERVER,
        description="Requests waiting for an inference; more are answered 503 with "
        "`Retry-After: 1`.",
        ge=0,
    )
    whisper_server_max_upload_bytes: int = setting(
        25 * 1024 * 1024,
        "WHISPER_SERVER_MAX_UPLOAD_BYTES",
        group=Group.WHISPER_SERVER,
        description="Largest request body; larger ones get 413.",
        ge=1024,
    )
    whisper_server_max_audio_s: float = setting(
        120.0,
        "WHISPER_SERVER_MAX_AUDIO_S",
        group=Group.WHISPER_SERVER,
        description="Longest decoded audio, in seconds; longer gets 413 (compressed bytes do "
        "not bound it: a few MB of Opus can hold hours). It bounds how long one request "
        "holds an inference slot and the memory it takes; the worker sends at most "
        "`STT_MAX_UTTERANCE_S`.",
        gt=0,
    )
    whisper_server_max_uploads: int = setting(
        64,
        "WHISPER_SERVER_MAX_UPLOADS",
        group=Group.WHISPER_SERVER,
        description="Request bodies being received at once; more get 503 with "
        "`Retry-After: 1`. Uploads hold no place in the queue.",
        ge=1,
    )
    whisper_server_body_timeout_s: float = setting(
        30.0,
        "WHISPER_SERVER_BODY_TIMEOUT_S",
        group=Group.WHISPER_SERVER,
        description="Time allowed to receive a whole request body, in seconds; slower "
        "uploads get 408 and the connection is closed.",
        gt=0,
    )

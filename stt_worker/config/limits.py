"""What one session and the whole worker may take: sessions, sizes, rates, queues."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from stt_worker.config.fields import Group, setting


class LimitFields(BaseModel):
    """The fields of `Group.LIMITS`, one of the bases of `Settings`."""

    max_sessions: int = setting(
        1000,
        "STT_MAX_SESSIONS",
        group=Group.LIMITS,
        description="Concurrent sessions; more are refused (`too_many_sessions`).",
        ge=1,
    )
    max_session_s: float = setting(
        4 * 3600.0,
        "STT_MAX_SESSION_S",
        group=Group.LIMITS,
        description="Wall-clock life of a session, in seconds; past it the session is ended "
        "as by `end` (`session_closed` reason `max_duration`).",
        gt=0,
    )
    session_idle_timeout_s: float = setting(
        60.0,
        "STT_SESSION_IDLE_TIMEOUT_S",
        group=Group.LIMITS,
        description="A session with no message for this many seconds is evicted (its open "
        "speech finalised first).",
        gt=0,
    )
    # Session ids go into output subjects, and NATS closes a connection whose protocol line
    # passes 4 KiB.
    max_session_id_chars: int = setting(
        128,
        "STT_MAX_SESSION_ID_CHARS",
        group=Group.LIMITS,
        description="Longest session id accepted; longer ones get `invalid_session_id`.",
        ge=1,
        le=1024,
    )
    max_chunk_bytes: int = setting(
        256_000,
        "STT_MAX_CHUNK_BYTES",
        group=Group.LIMITS,
        description="Largest accepted audio chunk.",
        ge=320,
    )
    max_pending_finals: int = setting(
        256,
        "STT_MAX_PENDING_FINALS",
        group=Group.LIMITS,
        description="Finals queued for inference before new ones get `overloaded`.",
        ge=1,
    )
    error_replies_per_s: float = setting(
        1.0,
        "STT_ERROR_REPLIES_PER_S",
        group=Group.LIMITS,
        description="Error replies to rejected messages per session (or per subject, for "
        "messages that open none) and second, after a burst of `STT_ERROR_REPLY_BURST`; the "
        'rest are counted and summed in the next reply ("and N more").',
        gt=0,
    )
    error_reply_burst: int = setting(
        5,
        "STT_ERROR_REPLY_BURST",
        group=Group.LIMITS,
        description="Error replies a session (or subject) may get at once before "
        "`STT_ERROR_REPLIES_PER_S` applies.",
        ge=1,
    )
    error_replies_overall_per_s: float = setting(
        200.0,
        "STT_ERROR_REPLIES_OVERALL_PER_S",
        group=Group.LIMITS,
        description="Error replies to rejected messages per second for the whole worker "
        "(bursts of twice as many), so that a flood spread over many subjects is bounded too.",
        gt=0,
    )
    max_pending_finals_per_session: int = setting(
        8,
        "STT_MAX_PENDING_FINALS_PER_SESSION",
        group=Group.LIMITS,
        description="Finals one session may have queued for inference; past it that session's "
        "new ones get `overloaded` while other sessions' keep their place.",
        ge=1,
    )
    max_audio_speed: float = setting(
        2.0,
        "STT_MAX_AUDIO_SPEED",
        group=Group.LIMITS,
        description="Fastest a session may send audio (and, apart, `playback`), in times real "
        "time, once its burst is spent; faster audio gets `rate_limited`. 0 turns the limit off.",
        ge=0,
    )
    audio_burst_s: float = setting(
        10.0,
        "STT_AUDIO_BURST_S",
        group=Group.LIMITS,
        description="Seconds of audio a session may send at once beyond its pace (after a "
        "network stall, or a short file sent whole) before `STT_MAX_AUDIO_SPEED` applies.",
        gt=0,
    )
    flood_factor: float = setting(
        2.0,
        "STT_FLOOD_FACTOR",
        group=Group.LIMITS,
        description="A session whose audio keeps arriving faster than this many times "
        "`STT_MAX_AUDIO_SPEED` (3 whole seconds in a row, refused and shed audio counted) gets "
        "none of it taken until a second brings less: what its budget would let through is "
        "random slices of a flood. 0 turns it off (the budget alone applies).",
        ge=0,
    )
    max_control_per_s: float = setting(
        20.0,
        "STT_MAX_CONTROL_PER_S",
        group=Group.LIMITS,
        description="`start` and `state_change` messages a session may send per second (as "
        "many at once); more get `rate_limited`. 0 turns the limit off.",
        ge=0,
    )
    session_inbox_messages: int = setting(
        1024,
        "STT_SESSION_INBOX_MESSAGES",
        group=Group.LIMITS,
        description="Messages of one session admitted but not yet processed; past it (or "
        "`STT_SESSION_INBOX_BYTES`) that session's messages get `rate_limited`.",
        ge=16,
    )
    session_inbox_bytes: int = setting(
        8_000_000,
        "STT_SESSION_INBOX_BYTES",
        group=Group.LIMITS,
        description="Bytes of one session's messages admitted but not yet processed (keep it "
        "above `STT_MAX_CHUNK_BYTES`).",
        ge=256_000,
    )
    pending_msgs_limit: int = setting(
        65_536,
        "STT_PENDING_MSGS_LIMIT",
        group=Group.LIMITS,
        description="The NATS client's per-subscription buffer, in messages.",
        ge=64,
    )
    session_connections: Literal["auto"] | bool = setting(
        "auto",
        "STT_SESSION_CONNECTIONS",
        group=Group.LIMITS,
        description="Core NATS: take each session that keeps to its budgets from a second "
        "connection subscribed to its own subject, so that a publisher flooding another "
        "subject (whose messages fill nats-server's queue for the wildcard's connection) "
        "does not delay it; a session refused for its pace goes back to the wildcard. The "
        "worker publishes markers on the audio subjects and needs permission to; denied, it "
        'logs so once and keeps every session on the wildcard (docs/operations.md, "Untrusted '
        'publishers"). `auto`: on in core NATS, off in durable mode (`STT_DURABLE`), where '
        "`true` is an error.",
    )
    drain_timeout_s: float = setting(
        25.0,
        "STT_DRAIN_TIMEOUT_S",
        group=Group.LIMITS,
        description="On SIGTERM, seconds allowed to publish the last finals and "
        "`session_closed` before the worker exits.",
        gt=0,
    )

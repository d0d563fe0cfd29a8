"""``stream``: publish a WAV file as a live client would, to a worker running elsewhere."""

from __future__ import annotations

import uuid
from pathlib import Path

from stt_worker.config import load_settings
from stt_worker.core.protocol import State
from stt_worker.runtime.bus import stream_prefix
from stt_worker.runtime.publisher import stream_file
from stt_worker.tools.connection import connect_tool
from stt_worker.tools.options import given


async def stream(
    path: Path,
    *,
    session_id: str | None,
    nats_url: str | None,
    speed: float,
    chunk_ms: int,
    state: State,
    speaker_id: str | None,
    raw_audio: bool,
) -> int:
    """Send `path` as one session (a random id unless given) and say what was sent."""
    settings = load_settings(**given(nats_url=nats_url))
    session_id = session_id or f"cli-{uuid.uuid4().hex[:8]}"
    nc = await connect_tool(settings, "stt-streaming stream")
    try:
        stats = await stream_file(
            nc,
            session_id,
            path,
            chunk_ms=chunk_ms,
            speed=speed,
            state=state,
            speaker_id=speaker_id,
            raw_audio=raw_audio,
            subject_prefix=stream_prefix(settings),
        )
    finally:
        await nc.close()
    print(
        f"session {session_id}: {stats.chunks} chunks, {stats.audio_s:.2f} s of "
        f"{stats.sample_rate_hz} Hz x{stats.channels} audio sent in {stats.wall_s:.2f} s"
    )
    allowed_s = settings.audio_burst_s + settings.max_audio_speed * stats.wall_s
    if settings.max_audio_speed > 0 and stats.audio_s > allowed_s:
        print(
            f"note: faster than a worker admits with STT_MAX_AUDIO_SPEED="
            f"{settings.max_audio_speed:g} and STT_AUDIO_BURST_S={settings.audio_burst_s:g}: "
            f"about {stats.audio_s - allowed_s:.1f} s of it is refused (`rate_limited`); "
            "use --speed 1 (real time) or at most that speed"
        )
    return 0

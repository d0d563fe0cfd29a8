"""The OpenAI Realtime transcription dialect: ``/v1/realtime?intent=transcription``.

A `Bridge` (so the same access checks, session namespace, bounded outbox, error budget, idle
timeout and worker-session handling as the other dialects) whose client speaks Realtime JSON
events instead of binary audio and control words:

- ``session.update`` / ``transcription_session.update``: format, language (a ``start``, or a
  ``start`` update of the open worker session), the transcription prompt and turn detection
  (the ``start`` options of the worker sessions opened after it); answered
  ``session.updated``;
- ``input_audio_buffer.append``: base64 PCM16, published as ``chunk`` messages of at most
  ``STT_MAX_CHUNK_BYTES``;
- ``input_audio_buffer.commit``: a flush: the worker finalises the pending speech now and the
  next audio opens a new worker session; nothing pending is an error
  ``input_audio_buffer_commit_empty``, as OpenAI answers an empty buffer;
- ``input_audio_buffer.clear``: a reset, answered ``input_audio_buffer.cleared``; the worker
  never drops accepted audio, so speech pending at the clear is still transcribed and sent.

Results become Realtime server events (realtime_events.py); audio times are milliseconds of
the connection's audio, across the worker sessions commits and clears open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from stt_worker.core import protocol
from stt_worker.core.errors import ErrorCode, ProtocolError
from stt_worker.core.protocol import Error, Transcription
from stt_worker.gateway.bridge import Bridge
from stt_worker.gateway.dialect import EmptyFinal, GatewayError, Outgoing
from stt_worker.gateway.realtime_events import (
    Append,
    Clear,
    Commit,
    Items,
    SessionConfig,
    Update,
    error_event,
    event,
    parse_client_event,
    session_event,
    start_options,
)


@dataclass(eq=False)
class RealtimeBridge(Bridge):
    """One Realtime transcription connection."""

    config_realtime: SessionConfig = field(default_factory=SessionConfig)

    def __post_init__(self) -> None:
        Bridge.__post_init__(self)
        self._workers.start = self._start_of(self.config_realtime)
        self._items = Items()
        # Where each worker session's audio starts in the connection's, by the client's name
        # for it, and how much audio the connection has sent (ms).
        self._offsets_ms: dict[str, float] = {}
        self._sent_ms = 0.0

    async def run(self) -> None:
        self._send_event(session_event("created", self.client_id, self.config_realtime))
        await Bridge.run(self)

    # ------------------------------------------------------------ client -> worker

    async def _on_text(self, text: str) -> None:
        match parse_client_event(text, self.config_realtime):
            case Append(audio=audio):
                await self._append(audio)
            case Commit():
                await self._end_current(flush=True)
            case Clear():
                await self._end_current(flush=False)
                self._send_event(event("input_audio_buffer.cleared"))
            case Update(config=config):
                await self._configure(config)

    async def _on_binary(self, data: bytes) -> None:
        raise ProtocolError(
            "binary frames are not Realtime events; send input_audio_buffer.append",
            code=ErrorCode.UNKNOWN_TYPE,
        )

    async def _append(self, audio: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
        step = self.config.max_chunk_bytes - self.config.max_chunk_bytes % 2
        for offset in range(0, len(audio), step):
            piece = audio[offset : offset + step]
            segment = await self._workers.active()
            self._offsets_ms.setdefault(segment.client_id, self._sent_ms)
            await self._workers.publish(segment, protocol.Chunk(audio=piece, seq=segment.next_seq))
            segment.next_seq += 1
            self._sent_ms += len(piece) / 2 / self._workers.start.sample_rate * 1000

    async def _configure(self, config: SessionConfig) -> None:
        self.config_realtime = config
        self._workers.start = self._start_of(config)
        # A repeated `start` updates the open worker session's rate and language; its prompt
        # and end-of-turn options hold until the next worker session (a commit or clear).
        current = self._segments.current
        if current is not None:
            await self._workers.publish(current, self._workers.start_for(current.session_id))
        self._send_event(session_event("updated", self.client_id, config))

    def _start_of(self, config: SessionConfig) -> protocol.Start:
        """The `start` of the worker sessions the connection opens from now on."""
        return msgspec.structs.replace(
            self._workers.start,
            sample_rate=config.sample_rate,
            language=config.language,
            **start_options(config),
        )

    # ------------------------------------------------------------ worker -> client

    def _send_event(self, frame: str) -> None:
        self._queue(frame)  # type: ignore[arg-type]  # _frames takes rendered events as they are

    def _frames(self, message: Outgoing | str) -> list[tuple[str, bool]]:
        # Deltas are not droppable: the client builds its text from them, so losing one would
        # garble it; a client too slow to take them is closed as for finals (1013).
        match message:
            case str():
                return [(message, False)]
            case Transcription():
                offset = self._offsets_ms.get(message.session_id, 0.0)
                return [(each, False) for each in self._items.events(message, offset)]
            case EmptyFinal():
                text = "input_audio_buffer.commit: no speech left to transcribe"
                return [(error_event(ErrorCode.COMMIT_EMPTY, text, server=False), False)]
            case GatewayError():
                return [(error_event(message.code, message.message[:240], server=False), False)]
            case Error():
                return [(error_event(message.code, message.message[:240], server=True), False)]
        # interrupt and session_closed have no Realtime event; speech_started stands for both.
        return []

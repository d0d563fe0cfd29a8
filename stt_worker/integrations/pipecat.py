"""A pipecat STT service that transcribes with the stt-streaming worker over NATS.

`NatsSTTService` is a streaming STT service in pipecat's sense: it subclasses `STTService`
(not the segmented one), forwards every `InputAudioRawFrame` as it comes and pushes results
when the worker publishes them, from its own reader task, as pipecat's websocket services do.
One pipeline run is one worker session: `start` at the pipeline's input sample rate, a
`chunk` per audio frame, `state_change` when the bot starts or stops speaking (so the
worker's barge-in knows whose turn it is), `end` when the pipeline ends. What comes back
becomes `InterimTranscriptionFrame` (partials), `TranscriptionFrame` (finals), an
interruption (`interrupt`) and `ErrorFrame`s (`error`). Usage: docs/integrations.md.

The worker never imports this module; pipecat is the `pipecat` extra's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.time import time_now_iso8601

from stt_worker.config import Settings, load_settings
from stt_worker.core.errors import ErrorCode, ProtocolError
from stt_worker.core.protocol import (
    Error,
    Interrupt,
    ServerMessage,
    SessionClosed,
    Start,
    State,
    StateChange,
    Transcription,
)
from stt_worker.integrations.worker_session import WorkerSession, new_session_id
from stt_worker.runtime import bus
from stt_worker.runtime.connection import TOOL, Reconnect

logger = logging.getLogger(__name__)

# End of speech to final, rounded up from the p95 of 639 ms with the bundled tiny.en
# (bench/results/eval.md): how long pipecat's turn strategies may wait for a final.
TTFS_P99_S = 0.7

# Worker errors are about one utterance or one message; the session goes on, so none of them
# is permanent for pipecat (a permanent category would mark the service unusable).
_CATEGORIES = {
    ErrorCode.RATE_LIMITED: ErrorCategory.RATE_LIMIT,
    ErrorCode.TOO_MANY_SESSIONS: ErrorCategory.RATE_LIMIT,
    ErrorCode.OVERLOADED: ErrorCategory.SERVER,
    ErrorCode.AUDIO_DROPPED: ErrorCategory.SERVER,
    ErrorCode.SHUTTING_DOWN: ErrorCategory.SERVER,
}


class NatsSTTService(STTService):
    """Streams the pipeline's audio to the stt-streaming worker and pushes what it hears.

    Args:
        nats: the NATS URL, credentials, TLS and subjects, as the worker's `Settings`;
            read from the environment (``NATS_URL``, ...) when None.
        session_id: the worker session's id (the subjects' last token); a fresh
            ``pipecat-<uuid>`` when None.
        language: a Whisper code or a language tag (``en``, ``en-US``), or a pipecat
            `Language`; None lets the worker's model decide.
        end_timeout_s: how long the pipeline's end waits for the last final.
        reconnect: how hard the NATS client holds on (runtime/connection.py).
        **kwargs: pipecat's `STTService` arguments (``audio_passthrough``, ...).
    """

    def __init__(
        self,
        *,
        nats: Settings | None = None,
        session_id: str | None = None,
        language: Language | str | None = None,
        end_timeout_s: float = 10.0,
        reconnect: Reconnect = TOOL,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("ttfs_p99_latency", TTFS_P99_S)
        super().__init__(settings=STTSettings(model=None, language=language), **kwargs)
        self._worker = WorkerSession(
            nats if nats is not None else load_settings(),
            session_id or new_session_id("pipecat"),
            reconnect=reconnect,
        )
        self._end_timeout_s = end_timeout_s
        self._reader: asyncio.Task[None] | None = None
        self._turn: State = "listening"

    @property
    def session_id(self) -> str:
        return self._worker.session_id

    def can_generate_metrics(self) -> bool:
        return True

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        try:
            await self._connect()
        except bus.BusError as exc:
            # The client has given up reconnecting: nothing this service sends can arrive.
            await self.push_error(
                f"cannot reach the stt-streaming worker: {exc}",
                exception=exc,
                category=ErrorCategory.CONNECTIVITY,
                force_treat_as_permanent=True,
            )
            await self._close()
            return
        await self._open_session()
        await self._call_event_handler("on_connected")

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        # The worker finalises the open utterance on `end`; its final comes before
        # `session_closed`, and so before the EndFrame goes on down the pipeline.
        if not await self._end(self._end_timeout_s):
            logger.warning("no session_closed for %s in %ss", self.session_id, self._end_timeout_s)
        await self._close()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._end(None)  # frees the worker's session now, not after its idle timeout
        await self._close()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        if self._worker.connected:
            if not self._worker.is_open:  # the worker closed it (idle, age, drain): reopen
                await self._open_session()
            await self._send(self._worker.chunk(audio))
        yield None  # results come from the reader task

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        # The output transport sends these upstream (and downstream) as the bot's audio
        # starts and stops playing: the worker's turn, so speech over it is a barge-in.
        if isinstance(frame, BotStartedSpeakingFrame):
            await self._change_turn("responding")
        elif isinstance(frame, BotStoppedSpeakingFrame):
            await self._change_turn("listening")

    # ------------------------------------------------------------ the bus

    async def _connect(self) -> None:
        messages = await self._worker.connect(f"pipecat-stt {self.session_id}")
        self._reader = self.create_task(self._read(messages), name="stt_worker_results")

    async def _close(self) -> None:
        if self._reader is not None:
            await self.cancel_task(self._reader)
            self._reader = None
        connected = self._worker.connected
        await self._worker.close()
        if connected:
            await self._call_event_handler("on_disconnected")

    async def _open_session(self) -> None:
        language = self._settings.language
        start = Start(
            sample_rate=self.sample_rate,
            state=self._turn,
            language=str(language) if isinstance(language, str) and language else None,
        )
        await self._send(self._worker.open(start))

    async def _change_turn(self, state: State) -> None:
        if state == self._turn:
            return
        self._turn = state
        if self._worker.is_open:
            await self._send(self._worker.send(StateChange(state=state)))

    async def _end(self, wait_s: float | None) -> bool:
        try:
            return await self._worker.end(wait_s)
        except bus.BusError as exc:
            await self._lost(exc)
            return True

    async def _send(self, sending: Awaitable[None]) -> None:
        try:
            await sending
        except bus.BusError as exc:
            await self._lost(exc)

    async def _lost(self, exc: bus.BusError) -> None:
        """NATS is gone for good: one ErrorFrame; the worker session, disconnected now,
        sends nothing more."""
        await self.push_error(
            f"lost the stt-streaming worker: {exc}",
            exception=exc,
            category=ErrorCategory.CONNECTIVITY,
            force_treat_as_permanent=True,
        )

    # ------------------------------------------------------------ results

    async def _read(self, messages: AsyncIterator[ServerMessage | ProtocolError]) -> None:
        try:
            async for message in messages:
                await self._on_message(message)
        except bus.BusError as exc:
            await self.push_error(
                f"lost the stt-streaming worker's results: {exc}",
                exception=exc,
                category=ErrorCategory.CONNECTIVITY,
            )

    async def _on_message(self, message: ServerMessage | ProtocolError) -> None:
        if isinstance(message, Transcription):
            await self._on_transcription(message)
        elif isinstance(message, Interrupt):
            await self.broadcast_interruption()
        elif isinstance(message, Error):
            await self.push_error(
                f"stt-streaming worker: {message.code}: {message.message}",
                category=_CATEGORIES.get(message.code, ErrorCategory.UNKNOWN),
            )
        elif isinstance(message, SessionClosed):
            pass  # the worker session tracks it: the next audio opens a new one
        else:  # a newer worker's message type, or garbage on our subject
            logger.warning("ignored a message on %s: %s", self.session_id, message)

    async def _on_transcription(self, message: Transcription) -> None:
        text = message.transcript.strip()
        if not text:
            return
        language = _language(message.language)
        if message.is_partial:
            await self.push_frame(
                InterimTranscriptionFrame(
                    text, self._user_id, time_now_iso8601(), language, result=message
                )
            )
        elif message.backchannel:
            # "yeah" over the bot's voice: heard, but not the user's turn. As a transcription
            # it would open a user turn and interrupt the bot after all.
            logger.debug("backchannel on %s: %r", self.session_id, text)
        else:
            await self.emit_stt_usage_metrics()
            await self.push_frame(
                TranscriptionFrame(
                    text,
                    self._user_id,
                    time_now_iso8601(),
                    language,
                    result=message,
                    finalized=True,
                )
            )


def _language(code: str | None) -> Language | None:
    try:
        return Language(code) if code else None
    except ValueError:
        return None

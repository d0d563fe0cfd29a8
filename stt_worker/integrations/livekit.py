"""A LiveKit Agents STT plugin that transcribes with the stt-streaming worker over NATS.

`NatsSTT` is a streaming STT in LiveKit's sense (`livekit.agents.stt.STT` with
``streaming=True``): its `stream()` is a `NatsSpeechStream` (a `stt.SpeechStream`) that
forwards each `rtc.AudioFrame` pushed into it as a `chunk` and turns what the worker publishes
into `stt.SpeechEvent`s. One stream is one worker session: `start` at the first frame's sample
rate and channel count, a `chunk` per frame, `end` when the input ends. `recognize()` sends a
whole buffer as a session of its own and returns the finals joined. The event mapping is in
docs/integrations.md; the worker speaks through `integrations/worker_session.py`, as the
pipecat adapter does.

The worker never imports this module; livekit-agents is the `livekit` extra's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

try:
    from livekit import rtc
    from livekit.agents import (
        DEFAULT_API_CONNECT_OPTIONS,
        NOT_GIVEN,
        APIConnectionError,
        APIConnectOptions,
        APIError,
        APITimeoutError,
        NotGivenOr,
        stt,
    )
    from livekit.agents.language import LanguageCode
    from livekit.agents.types import TimedString
    from livekit.agents.utils import AudioBuffer, is_given
except ModuleNotFoundError as exc:  # say which extra brings it, as the CLI does
    raise ModuleNotFoundError(
        f"stt_worker.integrations.livekit needs the `livekit` extra ({exc}); install it with "
        "pip install 'stt-streaming[livekit]'",
        name=exc.name,
    ) from exc

from stt_worker.config import Settings, load_settings
from stt_worker.core.errors import ProtocolError
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

# What `recognize()` sends per message: a second of 48 kHz stereo PCM16 is 192 kB, within the
# worker's default STT_MAX_CHUNK_BYTES (256 kB).
_ONE_SHOT_CHUNK_S = 1.0


@dataclass(frozen=True, slots=True)
class _Options:
    nats: Settings
    language: str | None
    start_options: Mapping[str, Any]
    end_timeout_s: float
    reconnect: Reconnect


class NatsSTT(stt.STT):
    """Streams an agent's audio to the stt-streaming worker and emits what it hears.

    Args:
        nats: the NATS URL, credentials, TLS and subjects, as the worker's `Settings`;
            read from the environment (``NATS_URL``, ...) when None.
        language: a Whisper code or a language tag (``en``, ``en-US``); None lets the
            worker's model decide.
        options: further per-session `start` options (``prompt``, ``word_timestamps``,
            ``endpoint_mode``, ...: docs/protocol.md), sent with every session's `start`.
        end_timeout_s: how long the end of a stream (or a `recognize()`) waits for the
            last final.
        reconnect: how hard the NATS client holds on (runtime/connection.py).
    """

    def __init__(
        self,
        *,
        nats: Settings | None = None,
        language: str | None = None,
        options: Mapping[str, Any] | None = None,
        end_timeout_s: float = 10.0,
        reconnect: Reconnect = TOOL,
    ) -> None:
        start_options = dict(options or {})
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True,
                interim_results=bool(start_options.get("partials", True)),
                aligned_transcript="word" if start_options.get("word_timestamps") else False,
                offline_recognize=True,
            )
        )
        self._opts = _Options(
            nats if nats is not None else load_settings(),
            _language(language),
            start_options,
            end_timeout_s,
            reconnect,
        )
        self._streams: weakref.WeakSet[NatsSpeechStream] = weakref.WeakSet()
        self._turn: State = "listening"

    @property
    def model(self) -> str:
        return "stt-streaming"

    @property
    def provider(self) -> str:
        return "stt-streaming"

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> NatsSpeechStream:
        stream = NatsSpeechStream(
            stt=self,
            opts=self._opts,
            language=_language(language) if is_given(language) else self._opts.language,
            turn=self._turn,
            conn_options=conn_options,
        )
        self._streams.add(stream)
        return stream

    def set_agent_speaking(self, speaking: bool) -> None:
        """Tell the worker whose turn it is, so that speech over the agent's voice is a
        barge-in: wire it to the session's ``agent_state_changed`` (docs/integrations.md)."""
        self._turn = "responding" if speaking else "listening"
        for stream in self._streams:
            stream.change_turn(self._turn)

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        opts = self._opts
        worker = WorkerSession(opts.nats, new_session_id("livekit"), reconnect=opts.reconnect)
        start = Start(
            sample_rate=frame.sample_rate,
            channels=frame.num_channels,
            language=_language(language) if is_given(language) else opts.language,
            **opts.start_options,
        )
        try:
            messages = await _connect(worker, conn_options)
            finals = asyncio.create_task(self._finals(messages))
            try:
                await worker.open(start)
                await _send_paced(worker, frame, opts.nats)
                await worker.end()
                results = await asyncio.wait_for(finals, opts.end_timeout_s)
            except TimeoutError as exc:
                raise APITimeoutError(
                    f"no session_closed from the stt-streaming worker in {opts.end_timeout_s}s"
                ) from exc
            finally:
                finals.cancel()
        except bus.BusError as exc:
            raise APIConnectionError(f"lost the stt-streaming worker: {exc}") from exc
        finally:
            await _release(worker)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=worker.session_id,
            alternatives=[_joined(results, start.language)],
        )

    async def _finals(
        self, messages: AsyncIterator[ServerMessage | ProtocolError]
    ) -> list[Transcription]:
        """A one-shot session's finals, up to its `session_closed`."""
        finals = []
        async for message in messages:
            if isinstance(message, Transcription) and message.is_final:
                finals.append(message)
            elif isinstance(message, Error):
                self._emit_error(_worker_error(message), recoverable=True)
            elif isinstance(message, SessionClosed):
                break
        return finals


class NatsSpeechStream(stt.SpeechStream):
    """One worker session, fed by the frames pushed into the stream."""

    def __init__(
        self,
        *,
        stt: NatsSTT,
        opts: _Options,
        language: str | None,
        turn: State,
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._opts = opts
        self._language = language
        self._turn: State = turn
        self._session_id = new_session_id("livekit")
        self._worker: WorkerSession | None = None
        self._turn_sends: set[asyncio.Task[None]] = set()
        # Seconds of audio sent in this attempt (the framework's `start_time_offset` counts
        # the attempts before it), where the worker's session began in it, and not yet billed.
        self._sent_s = 0.0
        self._session_at_s = 0.0
        self._unbilled_s = 0.0
        # The worker session's utterance that START_OF_SPEECH was emitted for, and the one the
        # worker interrupted the agent for (its words are the user's turn).
        self._speaking: int | None = None
        self._interrupted: int | None = None

    @property
    def session_id(self) -> str:
        return self._session_id

    def change_turn(self, state: State) -> None:
        """The agent started or stopped speaking: a `state_change` for an open session."""
        self._turn = state
        if self._worker is not None and self._worker.is_open:
            task = asyncio.create_task(self._send_turn(self._worker, state))
            self._turn_sends.add(task)
            task.add_done_callback(self._turn_sends.discard)

    async def _send_turn(self, worker: WorkerSession, state: State) -> None:
        try:
            await worker.send(StateChange(state=state))
        except bus.BusError as exc:  # the stream's own sends see it too and end the attempt
            logger.warning("state_change for %s not sent: %s", self._session_id, exc)

    async def aclose(self) -> None:
        for task in list(self._turn_sends):
            task.cancel()
        await super().aclose()

    # ------------------------------------------------------------ one attempt

    async def _run(self) -> None:
        worker = WorkerSession(self._opts.nats, self._session_id, reconnect=self._opts.reconnect)
        self._sent_s = 0.0
        try:
            messages = await _connect(worker, self._conn_options)
            self._worker = worker
            reader = asyncio.create_task(self._read(messages))
            sender = asyncio.create_task(self._forward(worker))
            try:
                done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
                if reader in done:
                    raise APIConnectionError("the stt-streaming worker's results stopped")
            finally:
                for task in (reader, sender):
                    task.cancel()
                await asyncio.gather(reader, sender, return_exceptions=True)
        except bus.BusError as exc:
            raise APIConnectionError(f"lost the stt-streaming worker: {exc}") from exc
        finally:
            self._worker = None
            await _release(worker)

    async def _forward(self, worker: WorkerSession) -> None:
        async for item in self._input_ch:
            # Flushes are ignored: the worker's own endpoint decides where utterances end
            # (`manual_flush` is off, so the framework sends none but `end_input`'s).
            if not isinstance(item, rtc.AudioFrame):
                continue
            if not worker.is_open:  # first audio, or the worker closed the session (idle, age)
                await self._open(worker, item)
            await worker.chunk(item.data.tobytes())
            self._sent_s += item.duration
            self._unbilled_s += item.duration
        if not await worker.end(self._opts.end_timeout_s):
            logger.warning(
                "no session_closed for %s in %ss", self._session_id, self._opts.end_timeout_s
            )
        self._bill()  # the audio after the last final (trailing silence) was sent too

    async def _open(self, worker: WorkerSession, frame: rtc.AudioFrame) -> None:
        if self._sent_s == 0:
            self.start_time = time.time()  # the worker's audio times count from here
        self._session_at_s = self._sent_s
        self._speaking = self._interrupted = None
        await worker.open(
            Start(
                sample_rate=frame.sample_rate,
                channels=frame.num_channels,
                state=self._turn,
                language=self._language,
                **self._opts.start_options,
            )
        )

    async def _read(self, messages: AsyncIterator[ServerMessage | ProtocolError]) -> None:
        async for message in messages:
            if isinstance(message, Transcription):
                self._on_transcription(message)
            elif isinstance(message, Interrupt):
                # The worker heard the user take the turn over the agent's voice: LiveKit's
                # user speech onset, which stops the agent's speech.
                self._interrupted = message.utterance_id
                self._start_of_speech(message.utterance_id, None)
            elif isinstance(message, Error):
                self._emit_error(_worker_error(message), recoverable=True)
            elif not isinstance(message, SessionClosed):
                logger.warning("ignored a message on %s: %s", self._session_id, message)

    # ------------------------------------------------------------ events

    def _on_transcription(self, message: Transcription) -> None:
        text = message.transcript.strip()
        if message.is_partial:
            # Over the agent's voice the worker decides barge-in: until it interrupts, words
            # are not the user's turn, and LiveKit would take an interim as one.
            if text and (self._turn == "listening" or self._interrupted == message.utterance_id):
                self._start_of_speech(message.utterance_id, message.audio_start_s)
                self._emit(stt.SpeechEventType.INTERIM_TRANSCRIPT, self._data(message, text))
            return
        if message.backchannel or not text:
            # "yeah" over the agent's voice, or nothing worth a word: no user turn, but a
            # speech onset already sent is closed.
            self._end_of_speech(message)
            return
        self._start_of_speech(message.utterance_id, message.audio_start_s)
        self._bill()
        self._emit(stt.SpeechEventType.FINAL_TRANSCRIPT, self._data(message, text))
        self._end_of_speech(message)

    def _bill(self) -> None:
        """RECOGNITION_USAGE for the audio sent since the last one."""
        if self._unbilled_s <= 0:
            return
        usage = stt.RecognitionUsage(audio_duration=self._unbilled_s)
        self._unbilled_s = 0.0
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=stt.SpeechEventType.RECOGNITION_USAGE,
                request_id=self._session_id,
                recognition_usage=usage,
            )
        )

    def _start_of_speech(self, utterance_id: int, audio_start_s: float | None) -> None:
        if self._speaking == utterance_id:
            return
        self._speaking = utterance_id
        onset = None if audio_start_s is None else self._wall_clock(audio_start_s)
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=stt.SpeechEventType.START_OF_SPEECH,
                request_id=self._session_id,
                speech_start_time=onset,
            )
        )

    def _end_of_speech(self, message: Transcription) -> None:
        if self._speaking != message.utterance_id:
            return
        self._speaking = None
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=stt.SpeechEventType.END_OF_SPEECH,
                request_id=self._session_id,
                speech_end_time=self._wall_clock(message.audio_end_s),
            )
        )

    def _emit(self, kind: stt.SpeechEventType, data: stt.SpeechData) -> None:
        self._event_ch.send_nowait(
            stt.SpeechEvent(type=kind, request_id=self._session_id, alternatives=[data])
        )

    def _data(self, message: Transcription, text: str) -> stt.SpeechData:
        """`message` in LiveKit's terms; times in seconds of the stream's audio."""
        base = self.start_time_offset + self._session_at_s
        return _speech_data(message, text, self._language, base)

    def _wall_clock(self, audio_s: float) -> float:
        # Never ahead of now: LiveKit times the end of a turn from it.
        return min(self.start_time + self._session_at_s + audio_s, time.time())


# ---------------------------------------------------------------- helpers


def _language(value: str | None) -> str | None:
    """LiveKit's names and tags as the worker takes them: "english" and "en_us" as "en" and
    "en-US", a plain `str` (msgspec encodes no `LanguageCode`)."""
    return str(LanguageCode(value)) if value else None


async def _connect(
    worker: WorkerSession, conn_options: APIConnectOptions
) -> AsyncIterator[ServerMessage | ProtocolError]:
    try:
        return await asyncio.wait_for(
            worker.connect(f"livekit-stt {worker.session_id}"), conn_options.timeout
        )
    except TimeoutError as exc:
        raise APITimeoutError("connecting to the stt-streaming worker's NATS timed out") from exc


async def _release(worker: WorkerSession) -> None:
    """Close the client; a session still open (the stream was closed before its input
    ended) gets its `end` first, so the worker frees it now, not after its idle timeout."""
    with contextlib.suppress(bus.BusError):
        await worker.end()
    await worker.close()


async def _send_paced(worker: WorkerSession, frame: rtc.AudioFrame, nats: Settings) -> None:
    """A one-shot buffer in chunks of a second: at once up to the worker's audio burst, then
    no faster than its STT_MAX_AUDIO_SPEED, so that a long buffer is not `rate_limited`."""
    audio = frame.data.tobytes()
    step = int(frame.sample_rate * _ONE_SHOT_CHUNK_S) * frame.num_channels * 2
    began = time.monotonic()
    for index, offset in enumerate(range(0, len(audio), step)):
        ahead_s = index * _ONE_SHOT_CHUNK_S - nats.audio_burst_s
        if ahead_s > 0 and nats.max_audio_speed > 0:
            await asyncio.sleep(max(0.0, began + ahead_s / nats.max_audio_speed - time.monotonic()))
        await worker.chunk(audio[offset : offset + step])


def _speech_data(
    message: Transcription, text: str, language: str | None, base_s: float
) -> stt.SpeechData:
    words = message.words or []
    probabilities = [word.probability for word in words if word.probability is not None]
    return stt.SpeechData(
        language=message.language or language or "und",
        text=text,
        start_time=base_s + message.audio_start_s,
        end_time=base_s + message.audio_end_s,
        # The mean of the words' probabilities where the worker reports them; else unknown.
        confidence=sum(probabilities) / len(probabilities) if probabilities else 0.0,
        words=[
            TimedString(
                word.word.strip(),
                start_time=base_s + word.start_s,
                end_time=base_s + word.end_s,
                confidence=NOT_GIVEN if word.probability is None else word.probability,
                start_time_offset=base_s,
            )
            for word in words
        ]
        or None,
    )


def _joined(finals: list[Transcription], language: str | None) -> stt.SpeechData:
    """A one-shot session's finals as one result (a buffer may hold several utterances)."""
    if not finals:
        return stt.SpeechData(language=language or "und", text="")
    text = " ".join(each for final in finals if (each := final.transcript.strip()))
    words = [word for final in finals for word in final.words or []]
    whole = msgspec.structs.replace(
        finals[0],
        transcript=text,
        audio_end_s=finals[-1].audio_end_s,
        words=words or msgspec.UNSET,
    )
    return _speech_data(whole, text, language, 0.0)


def _worker_error(message: Error) -> APIError:
    # Worker errors are about one utterance or one message; the session goes on.
    return APIError(
        f"stt-streaming worker: {message.code}: {message.message}",
        body={"code": message.code, "utterance_id": message.utterance_id},
        retryable=False,
    )

"""HTTP engine: Whisper behind an OpenAI-compatible ``POST /v1/audio/transcriptions``.

Each utterance goes out as a 16 kHz mono PCM16 WAV in a multipart form, over one pooled,
keep-alive ``httpx.AsyncClient`` shared by every session. Every way an attempt can fail is
classified in one place, `HttpEngine._classify` (as httpx's ``map_httpcore_exceptions``
does for httpcore), and turned into an `EngineError` in one place, `HttpEngine._error`::

    attempt outcome                                  retried   EngineError code
    ├── ConnectError, ReadError, WriteError,         yes       backend_unavailable
    │   RemoteProtocolError (dropped connection)
    ├── timeout: connect, read, write or pool        yes       backend_unavailable
    ├── HTTP 429, 502, 503, 504                      yes       backend_unavailable
    │   └── Retry-After longer than the max backoff  no        backend_unavailable
    ├── any other non-2xx status, 500 included       no        backend_rejected
    ├── 2xx without JSON or without a ``text``       no        backend_bad_response
    └── any other httpx error (proxy, bad URL, ...)  no        backend_unavailable

500 is not retried: the issue lists 429/502/503/504, and OpenAI-compatible servers answer
500 as often for an input they cannot decode as for overload; retrying a bad input only
multiplies the failure. An overloaded server should say 503 or 429.

Retries wait a full-jitter exponential backoff (`WHISPER_HTTP_BACKOFF_S` doubling, capped
at `WHISPER_HTTP_MAX_BACKOFF_S`), or exactly a 429/503's `Retry-After` when that fits under
the same cap; a longer one ends the retries at once. After two failed transcriptions in a
row the engine reports itself unhealthy (the scheduler then sheds partials) until one
succeeds.

Each request carries the current trace context as W3C `traceparent` (the worker runs the
call under its utterance's span), so the server's spans join the publisher's trace.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import logging
import math
import random
import time
import wave
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import httpx
import numpy as np
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stt_worker.config import Settings
from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.errors import EngineError, ErrorCode
from stt_worker.core.protocol import Word
from stt_worker.engines.base import (
    Audio,
    DecodeOptions,
    Engine,
    EngineInfo,
    Segment,
    Transcript,
    is_hallucination,
)

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# Only these two carry a meaningful Retry-After (RFC 9110 section 10.2.3).
RETRY_AFTER_STATUS = frozenset({429, 503})
RESPONSE_FORMATS = frozenset({"json", "verbose_json", "text"})
HEALTH_PATH = "/health"

# Two failures in a row, not one: a single rejected utterance should not shed everyone's
# partials, but a backend that fails twice running is down for all of them.
UNHEALTHY_AFTER_FAILURES = 2

_TRACE_CONTEXT = TraceContextTextMapPropagator()

BODY_SNIPPET_CHARS = 200
# Below the 5 s keep-alive of uvicorn and most proxies, so we do not reuse a connection
# the server is closing at that moment (that race surfaces as RemoteProtocolError).
KEEPALIVE_EXPIRY_S = 4.0

# verbose_json names the language ("english"); the other engines publish codes ("en").
# Whisper's own table (whisper/tokenizer.py: LANGUAGES and its aliases), "_" for spaces.
_WHISPER_LANGUAGES = """
    english:en chinese:zh german:de spanish:es russian:ru korean:ko french:fr japanese:ja
    portuguese:pt turkish:tr polish:pl catalan:ca dutch:nl arabic:ar swedish:sv italian:it
    indonesian:id hindi:hi finnish:fi vietnamese:vi hebrew:he ukrainian:uk greek:el malay:ms
    czech:cs romanian:ro danish:da hungarian:hu tamil:ta norwegian:no thai:th urdu:ur
    croatian:hr bulgarian:bg lithuanian:lt latin:la maori:mi malayalam:ml welsh:cy slovak:sk
    telugu:te persian:fa latvian:lv bengali:bn serbian:sr azerbaijani:az slovenian:sl
    kannada:kn estonian:et macedonian:mk breton:br basque:eu icelandic:is armenian:hy
    nepali:ne mongolian:mn bosnian:bs kazakh:kk albanian:sq swahili:sw galician:gl marathi:mr
    punjabi:pa sinhala:si khmer:km shona:sn yoruba:yo somali:so afrikaans:af occitan:oc
    georgian:ka belarusian:be tajik:tg sindhi:sd gujarati:gu amharic:am yiddish:yi lao:lo
    uzbek:uz faroese:fo haitian_creole:ht pashto:ps turkmen:tk nynorsk:nn maltese:mt
    sanskrit:sa luxembourgish:lb myanmar:my tibetan:bo tagalog:tl malagasy:mg assamese:as
    tatar:tt hawaiian:haw lingala:ln hausa:ha bashkir:ba javanese:jw sundanese:su
    cantonese:yue burmese:my valencian:ca flemish:nl haitian:ht letzeburgesch:lb pushto:ps
    panjabi:pa moldavian:ro moldovan:ro sinhalese:si castilian:es mandarin:zh
    """
_LANGUAGE_CODES = {
    name.replace("_", " "): code
    for name, code in (pair.split(":") for pair in _WHISPER_LANGUAGES.split())
}


# Form fields; a list value is sent as the field repeated (`timestamp_granularities[]`).
Form = dict[str, str | list[str]]


class BadResponseError(ValueError):
    """A 2xx response whose body is not a transcription."""


@dataclass(frozen=True, slots=True)
class _Failure:
    """One failed attempt: what happened, and whether another attempt could help."""

    code: ErrorCode
    reason: str
    retryable: bool
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class _Connection:
    """The pooled client and the request bound, both tied to the loop that made them."""

    client: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    loop: asyncio.AbstractEventLoop


class HttpEngine(Engine):
    """Transcribes through a remote OpenAI-compatible Whisper server (``WHISPER_URL``)."""

    def __init__(self, settings: Settings) -> None:
        try:
            url = httpx.URL(settings.whisper_url)
        except httpx.InvalidURL as exc:
            raise EngineError(f"WHISPER_URL is not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise EngineError(
                f"WHISPER_URL must be an http(s) URL with a host, got {_public_url(url)!r}"
            )
        if settings.whisper_http_response_format not in RESPONSE_FORMATS:
            raise EngineError(
                f"WHISPER_HTTP_RESPONSE_FORMAT must be one of {', '.join(sorted(RESPONSE_FORMATS))}"
                f", got {settings.whisper_http_response_format!r}"
            )
        # Credentials in the URL become an explicit BasicAuth: httpx logs request URLs at
        # INFO, userinfo included. A bearer key, when set, wins over them.
        self._url = url.copy_with(userinfo=b"")
        self._basic_auth = (
            httpx.BasicAuth(url.username, url.password)
            if url.username and settings.whisper_api_key is None
            else None
        )
        self._public_url = _public_url(url)
        self._path = settings.whisper_http_path
        # Where `translate` sessions go: the OpenAI API's sibling route.
        self._translations_path = _translations_path(self._path)
        self._model = settings.whisper_http_model
        self._format = settings.whisper_http_response_format
        self._language = settings.whisper_language
        self._api_key = settings.whisper_api_key
        self._timeout = httpx.Timeout(
            settings.whisper_http_timeout_s, connect=settings.whisper_http_connect_timeout_s
        )
        self._check_timeout = httpx.Timeout(settings.whisper_http_connect_timeout_s)
        self._max_concurrency = settings.whisper_http_max_concurrency
        self.parallelism = self._max_concurrency
        self._attempts = settings.whisper_http_retries + 1
        self._backoff_s = settings.whisper_http_backoff_s
        self._max_backoff_s = settings.whisper_http_max_backoff_s
        self._connection: _Connection | None = None
        self._closing: asyncio.Task[None] | None = None
        self._consecutive_failures = 0
        self.info = EngineInfo(name="http", model=self._model, device=self._public_url)

    def __repr__(self) -> str:
        auth = "bearer" if self._api_key else "none"
        return f"HttpEngine(url={self._public_url!r}, model={self._model!r}, auth={auth})"

    # --- health ---

    @property
    def consecutive_failures(self) -> int:
        """Transcriptions failed in a row since the last success (for readiness)."""
        return self._consecutive_failures

    @property
    def healthy(self) -> bool:
        return self._consecutive_failures < UNHEALTHY_AFTER_FAILURES

    async def check(self) -> bool:
        """Whether the backend answers: ``GET /health`` below 500.

        A server without that route still answers (404, 405) and so counts as reachable;
        a 5xx means it is up but says it cannot serve (e.g. still loading its model).
        """
        client = self._connect().client
        try:
            response = await client.get(HEALTH_PATH, timeout=self._check_timeout)
        except httpx.HTTPError as exc:
            logger.debug("health check of %s failed: %s", self._public_url, _describe(exc))
            return False
        return response.status_code < 500

    # --- lifecycle ---

    async def warmup(self) -> None:
        # A worker whose backend is down should start and report not ready, not crash-loop.
        if not await self.check():
            logger.warning(
                "Whisper backend %s is not reachable yet; starting anyway", self._public_url
            )

    async def aclose(self) -> None:
        """Close the pooled connections; call it on the loop that used the engine."""
        connection, self._connection = self._connection, None
        if connection is not None and connection.loop is asyncio.get_running_loop():
            await connection.client.aclose()

    def close(self) -> None:
        """Best effort from synchronous code; `aclose()` on the worker's loop is the clean way.

        Sockets belong to the loop that opened them. After `asyncio.run()` has returned that
        loop is closed and nothing can close them politely; the OS does at exit.
        """
        connection, self._connection = self._connection, None
        if connection is None or connection.client.is_closed or connection.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is connection.loop:
            self._closing = running.create_task(connection.client.aclose())
        elif running is None and not connection.loop.is_running():
            connection.loop.run_until_complete(connection.client.aclose())

    def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = self._connection
        # A client's pooled connections are tied to the loop that opened them.
        if connection is None or connection.client.is_closed or connection.loop is not loop:
            headers = {}
            if self._api_key is not None:
                headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            pool = self._max_concurrency + 1  # one spare, so `check()` never waits on the pool
            client = httpx.AsyncClient(
                base_url=self._url,
                headers=headers,
                auth=self._basic_auth,
                timeout=self._timeout,
                limits=httpx.Limits(
                    max_connections=pool,
                    max_keepalive_connections=pool,
                    keepalive_expiry=KEEPALIVE_EXPIRY_S,
                ),
            )
            connection = _Connection(client, asyncio.Semaphore(self._max_concurrency), loop)
            self._connection = connection
        return connection

    # --- transcription ---

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        audio_s = len(audio) / SAMPLE_RATE_HZ
        if len(audio) == 0:  # some servers reject a WAV without frames
            return Transcript(text="", language=options.language or self._language)
        wav = await asyncio.to_thread(encode_wav, audio)
        language = options.language or self._language
        form = self._form(language, options)
        path = self._path if options.task == "transcribe" else self._translations_path
        started = time.perf_counter()
        try:
            result = await self._post(path, wav, form, speech_heard=options.speech_heard)
        except EngineError:
            self._record(success=False)
            raise
        self._record(success=True)
        return replace(
            result,
            language=language or result.language,
            audio_s=audio_s,
            inference_s=time.perf_counter() - started,
        )

    def _form(self, language: str | None, options: DecodeOptions) -> Form:
        """The request's form fields, as the OpenAI API names them."""
        form: Form = {"model": self._model, "response_format": self._format}
        if options.word_timestamps:
            # Word times come only in verbose JSON; segments too, for the silence rule.
            form["response_format"] = "verbose_json"
            form["timestamp_granularities[]"] = ["word", "segment"]
        if language and options.task == "transcribe":  # translations take no language
            form["language"] = language
        if options.prompt:
            form["prompt"] = options.prompt
        return form

    async def _post(self, path: str, wav: bytes, form: Form, *, speech_heard: bool) -> Transcript:
        connection = self._connect()
        for attempt in range(1, self._attempts + 1):
            # The bound is on requests in flight; a backoff sleep does not hold a slot.
            async with connection.semaphore:
                outcome = await self._attempt(connection.client, path, wav, form, speech_heard)
            if isinstance(outcome, Transcript):
                return outcome
            failure = self._classify(outcome)
            if not failure.retryable or attempt == self._attempts:
                cause = outcome if isinstance(outcome, Exception) else None
                raise self._error(failure, attempt) from cause
            delay_s = self._delay_s(failure, attempt)
            self.retries += 1
            logger.warning(
                "Whisper backend %s: %s; retry %d of %d in %.2f s",
                self._public_url,
                self._redact(failure.reason),
                attempt,
                self._attempts - 1,
                delay_s,
            )
            await asyncio.sleep(delay_s)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        path: str,
        wav: bytes,
        form: Form,
        speech_heard: bool,
    ) -> Transcript | httpx.Response | Exception:
        trace_headers: dict[str, str] = {}
        _TRACE_CONTEXT.inject(trace_headers)  # nothing when no span is current
        try:
            response = await client.post(
                path,
                data=form,
                files={"file": ("audio.wav", wav, "audio/wav")},
                headers=trace_headers,
            )
        except httpx.HTTPError as exc:
            return exc
        if not response.is_success:
            return response
        try:
            response_format = str(form["response_format"])
            return parse_transcription(response, response_format, speech_heard=speech_heard)
        except BadResponseError as exc:
            return exc

    def _classify(self, outcome: httpx.Response | Exception) -> _Failure:
        """The one place that decides what a failed attempt means."""
        if isinstance(outcome, httpx.Response):
            status = f"HTTP {outcome.status_code} {outcome.reason_phrase}".rstrip()
            if outcome.status_code not in RETRYABLE_STATUS:
                return _Failure(
                    ErrorCode.BACKEND_REJECTED, f"{status}: {_snippet(outcome.text)}", False
                )
            retry_after_s = None
            if outcome.status_code in RETRY_AFTER_STATUS:
                retry_after_s = parse_retry_after(outcome.headers.get("retry-after"))
            if retry_after_s is not None and retry_after_s > self._max_backoff_s:
                # Retrying before the server's time is wasted; waiting longer than the max
                # backoff holds a live user's final hostage. Give up now and say so.
                reason = (
                    f"{status} with Retry-After {retry_after_s:.1f} s, longer than "
                    f"WHISPER_HTTP_MAX_BACKOFF_S ({self._max_backoff_s:g} s)"
                )
                return _Failure(ErrorCode.BACKEND_UNAVAILABLE, reason, False)
            reason = f"{status}: {_snippet(outcome.text)}"  # the body often says why
            return _Failure(ErrorCode.BACKEND_UNAVAILABLE, reason, True, retry_after_s)
        if isinstance(outcome, BadResponseError | httpx.DecodingError):
            return _Failure(ErrorCode.BACKEND_BAD_RESPONSE, _describe(outcome), False)
        if isinstance(outcome, httpx.TimeoutException):
            connecting = isinstance(outcome, httpx.ConnectTimeout)
            limit_s = self._timeout.connect if connecting else self._timeout.read
            return _Failure(
                ErrorCode.BACKEND_UNAVAILABLE, f"{_describe(outcome)} after {limit_s} s", True
            )
        if isinstance(outcome, httpx.NetworkError | httpx.RemoteProtocolError):
            return _Failure(ErrorCode.BACKEND_UNAVAILABLE, _describe(outcome), True)
        return _Failure(ErrorCode.BACKEND_UNAVAILABLE, _describe(outcome), False)

    def _error(self, failure: _Failure, attempts: int) -> EngineError:
        """The one place that turns the last failure into the error a client sees."""
        tried = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if failure.code == ErrorCode.BACKEND_REJECTED:
            what = f"rejected the request: {failure.reason} ({tried}, not retried)"
        elif failure.code == ErrorCode.BACKEND_BAD_RESPONSE:
            what = f"sent an unusable response: {failure.reason} ({tried}, not retried)"
        else:
            what = f"is unavailable: {failure.reason}; gave up after {tried}"
        return EngineError(
            self._redact(f"Whisper backend {self._public_url} {what}"), code=failure.code
        )

    def _delay_s(self, failure: _Failure, attempt: int) -> float:
        if failure.retry_after_s is not None:
            return failure.retry_after_s
        # Full jitter: spreads the retries of many workers over the whole window, so a
        # recovering server is not hit by all of them at once.
        ceiling_s = min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling_s)

    def _redact(self, text: str) -> str:
        # Error bodies may echo the key ("Incorrect API key provided: sk-...").
        if self._api_key is not None and (secret := self._api_key.get_secret_value()):
            text = text.replace(secret, "[redacted]")
        return text

    def _record(self, *, success: bool) -> None:
        was_healthy = self.healthy
        self._consecutive_failures = 0 if success else self._consecutive_failures + 1
        if was_healthy and not self.healthy:
            logger.warning(
                "Whisper backend %s unhealthy after %d failures in a row",
                self._public_url,
                self._consecutive_failures,
            )
        elif not was_healthy and self.healthy:
            logger.info("Whisper backend %s healthy again", self._public_url)


def encode_wav(audio: Audio) -> bytes:
    """16 kHz mono PCM16 WAV: the one format every Whisper server decodes."""
    samples = np.nan_to_num(np.asarray(audio, dtype=np.float32).reshape(-1))
    # x32768 inverts `pcm16_to_float32` exactly, so PCM that arrived as int16 leaves unchanged.
    pcm = np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE_HZ)
        wav.writeframes(pcm.tobytes())
    return buffer.getvalue()


def parse_transcription(
    response: httpx.Response, response_format: str, *, speech_heard: bool = False
) -> Transcript:
    """A 2xx body as a `Transcript`; `BadResponseError` when it is not one. `speech_heard`:
    see `DecodeOptions`."""
    is_json = "json" in response.headers.get("content-type", "")
    if response_format == "text" and not is_json:
        return Transcript(text=response.text.strip())
    try:
        body = response.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise BadResponseError(f"body is not JSON: {_snippet(response.text)}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise BadResponseError(f"no string 'text' in the body: {_snippet(response.text)}")
    return _transcript_from_json(body, speech_heard)


def _transcript_from_json(body: dict[str, object], speech_heard: bool) -> Transcript:
    raw_segments = body.get("segments") or []
    if not isinstance(raw_segments, list):
        raise BadResponseError("'segments' is not a list")
    kept: list[tuple[str, Segment]] = []
    dropped: list[Segment] = []
    no_speech_probs: list[float] = []
    for raw in raw_segments:
        if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
            raise BadResponseError(f"a segment has no string 'text': {_snippet(repr(raw))}")
        no_speech_prob = _number(raw, "no_speech_prob")
        avg_logprob = _number(raw, "avg_logprob")
        if no_speech_prob is not None:
            no_speech_probs.append(no_speech_prob)
        segment = Segment(
            start_s=_number(raw, "start") or 0.0,
            end_s=_number(raw, "end") or 0.0,
            text=raw["text"].strip(),
            avg_logprob=avg_logprob or 0.0,
            no_speech_prob=no_speech_prob or 0.0,
        )
        if (
            no_speech_prob is not None
            and avg_logprob is not None
            and is_hallucination(
                raw["text"], no_speech_prob, avg_logprob, speech_heard=speech_heard
            )
        ):
            # Silence the server decoded anyway: publishing it would invent speech.
            dropped.append(segment)
            continue
        kept.append((raw["text"], segment))
    text = str(body["text"])
    if len(kept) < len(raw_segments):
        # Whisper's `text` is its segments' texts joined as they are (they carry their spaces).
        text = "".join(raw_text for raw_text, _ in kept)
    language = body.get("language")
    return Transcript(
        text=text.strip(),
        segments=tuple(segment for _, segment in kept if segment.text),
        language=_language_code(language) if isinstance(language, str) and language else None,
        no_speech_prob=min(no_speech_probs, default=0.0),
        words=_words(body.get("words"), dropped),
    )


def _words(raw_words: object, dropped: list[Segment]) -> tuple[Word, ...]:
    """The OpenAI API's ``words`` (``word``, ``start``, ``end``; ``probability`` where the
    server adds it, as faster-whisper servers do), less those of segments dropped as
    silence."""
    if raw_words is None:
        return ()
    if not isinstance(raw_words, list):
        raise BadResponseError("'words' is not a list")
    words: list[Word] = []
    for raw in raw_words:
        if not isinstance(raw, dict) or not isinstance(raw.get("word"), str):
            raise BadResponseError(f"a word has no string 'word': {_snippet(repr(raw))}")
        start_s, end_s = _number(raw, "start") or 0.0, _number(raw, "end") or 0.0
        if any(seg.start_s <= (start_s + end_s) / 2 <= seg.end_s for seg in dropped):
            continue
        words.append(Word(raw["word"], start_s, end_s, _number(raw, "probability")))
    return tuple(words)


def _translations_path(path: str) -> str:
    """``/v1/audio/transcriptions`` -> ``/v1/audio/translations``; a path not named like
    the OpenAI API's keeps itself (its server decides what `translate` means there)."""
    head, _, last = path.rstrip("/").rpartition("/")
    return f"{head}/translations" if last == "transcriptions" else path


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)  # the RFC says an integer; some servers send fractions
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _number(raw: dict[str, object], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadResponseError(f"field {key!r} is not a number: {value!r}")
    return float(value)


def _language_code(language: str) -> str:
    language = language.strip().lower()
    return _LANGUAGE_CODES.get(language, language)


def _describe(exc: Exception) -> str:
    # Some httpx exceptions (timeouts among them) have an empty message.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    if not flat:
        return "(empty body)"
    return flat if len(flat) <= BODY_SNIPPET_CHARS else flat[:BODY_SNIPPET_CHARS] + "..."


def _public_url(url: httpx.URL) -> str:
    """The URL without credentials or query (either may carry a secret), for logs and info."""
    host = f"[{url.host}]" if ":" in url.host else url.host  # IPv6
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{host}{port}{url.path.rstrip('/')}"

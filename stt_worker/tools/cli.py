"""The ``stt-streaming`` command: ``serve``, ``demo``, ``gateway``, ``stream``, ``tail``,
``whisper-server``.

``serve`` runs the worker; ``demo`` runs everything in one process (an embedded nats-server,
the worker, a publisher streaming a WAV file at real time and a subscriber printing results;
``--engine http`` adds an in-process whisper-server for the worker's HTTP engine to call);
``stream`` and ``tail`` are the publisher and subscriber alone, for a worker running elsewhere.
``whisper-server`` is our OpenAI-compatible Whisper HTTP service (``whisper-predictor``).
``gateway`` (stt_worker/gateway/) serves a WebSocket bridge and a captioning page, in front of
an embedded nats-server and worker as in ``demo``, or of ``--nats-url``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.errors import NoServersError

from stt_worker.config import Settings, load_settings
from stt_worker.core.errors import SttError
from stt_worker.engines import ENGINE_FACTORIES, LOCAL, create_engine, create_partial_engine
from stt_worker.engines.base import Engine
from stt_worker.runtime.asgi import serving_in_loop
from stt_worker.runtime.connection import TOOL, ConnectError, connect, redact_url
from stt_worker.runtime.nats_server import NatsServer, NatsServerError
from stt_worker.runtime.publisher import StreamStats, WavFormatError, stream_file
from stt_worker.runtime.telemetry import Telemetry
from stt_worker.runtime.telemetry.logs import setup_logging
from stt_worker.runtime.worker import Worker
from stt_worker.tools.console import format_message

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE = "conv_3utt_2s_1s.wav"
SAMPLE_ENV = "STT_SAMPLE_AUDIO"
DEMO_ENGINES = ("faster-whisper", "openai-whisper", "http")
_READY_TIMEOUT_S = 180.0


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1 or 2, no traceback."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:  # all of its arguments, --help included, are the harness's
        return _eval(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except CliError as exc:
        print(f"stt-streaming {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except (NatsServerError, NoServersError, WavFormatError, OSError, SttError) as exc:
        print(f"stt-streaming {args.command}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stt-streaming", description="Streaming speech-to-text worker on NATS, and its tools."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the worker (NATS_URL etc. from the environment)")
    serve.add_argument(
        "--engine",
        choices=[*sorted(ENGINE_FACTORIES), LOCAL],
        help="default: STT_ENGINE; `local`: openai-whisper if PyTorch is installed, else "
        "faster-whisper",
    )
    serve.add_argument("--model", help="Whisper model (WHISPER_MODEL_SIZE), e.g. tiny.en")
    serve.add_argument("--device", help="cpu, cuda or auto (WHISPER_DEVICE)")
    serve.add_argument("--nats-url", help="NATS server (NATS_URL)")
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser(
        "demo", help="embedded nats-server + worker + publisher + subscriber, in one process"
    )
    demo.add_argument(
        "file", nargs="?", type=Path, help=f"16-bit WAV (default: shared/speech/{DEFAULT_SAMPLE})"
    )
    demo.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = no pacing")
    demo.add_argument("--nats-url", help="use this NATS instead of an embedded nats-server")
    demo.add_argument(
        "--engine",
        choices=DEMO_ENGINES,
        default="faster-whisper",
        help="default: faster-whisper; openai-whisper needs PyTorch; http: the worker's HTTP "
        "engine against an in-process whisper-server (faster-whisper), or --whisper-url",
    )
    demo.add_argument(
        "--whisper-url", help="with --engine http: this OpenAI-compatible server instead"
    )
    demo.add_argument("--model", help="Whisper model (WHISPER_MODEL_SIZE)")
    demo.add_argument("--state", choices=("listening", "responding"), default="listening")
    demo.add_argument("--no-vad", action="store_true", help="disable voice activity detection")
    demo.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for results after the audio"
    )
    demo.set_defaults(handler=_run_async(_demo))

    gateway = commands.add_parser(
        "gateway", help="WebSocket gateway and browser page (embedded nats-server + worker)"
    )
    gateway.add_argument("--host", help="listen address (STT_GATEWAY_HOST, default 127.0.0.1)")
    gateway.add_argument("--port", type=int, help="listen port (STT_GATEWAY_PORT, default 8765)")
    gateway.add_argument(
        "--nats-url", help="bridge to this NATS and its workers; no embedded server or worker"
    )
    gateway.add_argument(
        "--engine", choices=DEMO_ENGINES, default="faster-whisper", help="as for demo"
    )
    gateway.add_argument("--whisper-url", help="with --engine http, as for demo")
    gateway.add_argument("--model", help="Whisper model (WHISPER_MODEL_SIZE)")
    gateway.set_defaults(handler=_run_async(_gateway))

    stream = commands.add_parser("stream", help="publish a WAV file as a live client would")
    stream.add_argument("file", type=Path)
    stream.add_argument("--session", help="session id (default: random)")
    stream.add_argument("--nats-url", help="NATS server (default: NATS_URL)")
    stream.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = no pacing")
    stream.add_argument("--chunk-ms", type=int, default=20)
    stream.add_argument("--state", choices=("listening", "responding"), default="listening")
    stream.add_argument("--speaker", help="speaker_id sent in the start message")
    stream.add_argument("--raw", action="store_true", help="raw bytes in 'audio', not base64")
    stream.set_defaults(handler=_run_async(_stream))

    tail = commands.add_parser("tail", help="print transcription results as they are published")
    tail.add_argument("--nats-url", help="NATS server (default: NATS_URL)")
    tail.add_argument("--subject", help="default: <STT_TRANSCRIPTION_SUBJECT_PREFIX>.>")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(handler=_run_async(_tail))

    server = commands.add_parser(
        "whisper-server", help="serve Whisper over HTTP (OpenAI /v1/audio/transcriptions)"
    )
    server.add_argument("--host", help="listen address (WHISPER_SERVER_HOST, default 0.0.0.0)")
    server.add_argument("--port", type=int, help="listen port (WHISPER_SERVER_PORT, default 8000)")
    server.add_argument(
        "--engine",
        choices=("faster-whisper", "openai-whisper"),
        default="faster-whisper",
        help="default: faster-whisper (CTranslate2); openai-whisper needs PyTorch",
    )
    server.add_argument("--model", help="Whisper model (WHISPER_MODEL_SIZE), e.g. tiny.en")
    server.add_argument("--device", help="cpu, cuda or auto (WHISPER_DEVICE)")
    server.set_defaults(handler=_whisper_server)

    evaluate = commands.add_parser(
        "eval",
        help="stream a manifest of clips through the real worker; WER, latency, stability",
        add_help=False,  # `stt-streaming eval --help` is the harness's own
    )
    evaluate.add_argument("args", nargs=argparse.REMAINDER, help="see `stt-streaming eval -h`")
    return parser


def _eval(argv: list[str]) -> int:
    # Imported here: scoring and plots need the `eval` extra, which a worker image omits.
    from stt_worker.evaluation import main as evaluation_main

    return evaluation_main(argv, prog="stt-streaming eval")


def _run_async(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return asyncio.run(command(args))

    return handler


# ---------------------------------------------------------------- serve


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        **_given(nats_url=args.nats_url, whisper_model_size=args.model, whisper_device=args.device)
    )
    setup_logging(settings.log_level, settings.log_format)
    engine = create_engine(settings, args.engine)
    partial_engine = create_partial_engine(settings, args.engine)
    for each in filter(None, (engine, partial_engine)):
        logger.info("engine %s, model %s on %s", each.info.name, each.info.model, each.info.device)
    telemetry = Telemetry.from_settings(settings)
    try:
        asyncio.run(_run_worker(Worker(settings, engine, partial_engine, telemetry)))
    finally:
        telemetry.shutdown()
    return 0


async def _run_worker(worker: Worker) -> None:
    try:
        await worker.run()
    finally:
        for engine in filter(None, (worker.engine, worker.partial_engine)):
            await engine.aclose()


def _given(**overrides: object) -> dict[str, object]:
    """Only the options given on the command line, so the environment still fills the rest."""
    return {name: value for name, value in overrides.items() if value is not None}


# ---------------------------------------------------------------- demo


async def _demo(args: argparse.Namespace) -> int:
    path = args.file or find_sample_audio()
    if not path.is_file():
        raise CliError(f"no such file: {path}", status=2)
    if args.whisper_url and args.engine != "http":
        raise CliError("--whisper-url needs --engine http", status=2)
    # The demo's output is the transcript, not the worker's logs.
    setup_logging("WARNING", "text")

    async with contextlib.AsyncExitStack() as stack:
        url = args.nats_url or (await stack.enter_async_context(NatsServer())).url
        print(f"nats     {redact_url(url)}{'' if args.nats_url else '  (embedded nats-server)'}")
        settings = load_settings(
            nats_url=url,
            **_given(whisper_model_size=args.model, enable_vad=False if args.no_vad else None),
        )
        worker = await stack.enter_async_context(running_worker(args, settings))
        if worker.probe_url:
            print(f"metrics  {worker.probe_url}/metrics  (and /healthz, /readyz)")
        return await _demo_session(args, path, settings)


@contextlib.asynccontextmanager
async def running_worker(args: argparse.Namespace, settings: Settings) -> AsyncIterator[Worker]:
    """A worker in this loop on `--engine`'s engine, ready; drained on exit (`demo`,
    `gateway`). If the worker fails, its TaskGroup cancels the body and raises its error."""
    if "http_port" not in settings.model_fields_set:
        # A demo must not fail because something else holds port 8080.
        settings = settings.model_copy(update={"http_port": 0})
    async with _demo_engine(args, settings) as engine:
        worker = Worker(settings, engine)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(worker.run(stop))
            try:
                async with asyncio.timeout(_READY_TIMEOUT_S):
                    await worker.ready.wait()
                yield worker
            finally:
                stop.set()


@contextlib.asynccontextmanager
async def _demo_engine(args: argparse.Namespace, settings: Settings) -> AsyncIterator[Engine]:
    """The engine `--engine` names; `http` talks to `--whisper-url` or to a whisper-server
    started here on a local faster-whisper engine."""
    async with contextlib.AsyncExitStack() as stack:
        if args.engine == "http":
            url = args.whisper_url or await stack.enter_async_context(
                _in_process_whisper_server(settings)
            )
            settings = settings.model_copy(update={"whisper_url": url})
        # Off the loop: loading a model takes about 1 s (the first openai-whisper run also
        # converts the bundled model once into the cache).
        engine = await asyncio.to_thread(create_engine, settings, args.engine)
        stack.push_async_callback(engine.aclose)  # the HTTP client must close on its own loop
        print(f"engine   {engine.info.name} {engine.info.model} on {engine.info.device}")
        yield engine


@contextlib.asynccontextmanager
async def _in_process_whisper_server(settings: Settings) -> AsyncIterator[str]:
    """`whisper-server` on faster-whisper, served in this loop on 127.0.0.1 and a port the OS
    picks; yields its base URL and stops it on exit."""
    # Imported here: the server needs the local extra, which the HTTP image leaves out.
    from stt_worker.whisper_server import app_for

    engine = await asyncio.to_thread(create_engine, settings, "faster-whisper")
    try:
        async with serving_in_loop(app_for(settings, engine)) as url:
            info = engine.info
            print(f"whisper  {info.name} {info.model} on {info.device} at {url}  (in-process)")
            yield url
    finally:
        engine.close()


async def _demo_session(args: argparse.Namespace, path: Path, settings: Settings) -> int:
    session_id = f"demo-{uuid.uuid4().hex[:8]}"
    nc = await _connect(settings, "stt-streaming demo")
    try:
        sub = await nc.subscribe(f"{settings.transcription_subject_prefix}.{session_id}")
        await nc.flush()  # subscribed before the first chunk leaves
        pace = "as fast as possible" if args.speed == 0 else f"at {args.speed:g}x real time"
        print(f"stream   {path.name} {pace}, session {session_id}\n")

        stats = StreamStats()
        finals: list[str] = []
        latencies: list[float] = []

        async def show_results() -> bool:
            async for msg in sub.messages:
                received = time.time()
                decoded = _decode(msg.data)
                latency = None
                if decoded.get("is_final") and "audio_end_s" in decoded:
                    sent = stats.send_time_for(float(decoded["audio_end_s"]))
                    latency = None if sent is None else received - sent
                if decoded.get("is_final"):
                    finals.append(str(decoded.get("transcript", "")).strip())
                    if latency is not None:
                        latencies.append(latency)
                print(format_message(decoded, latency_s=latency), flush=True)
                if decoded.get("type") == "session_closed":
                    return True
            return False

        async with asyncio.TaskGroup() as tasks:
            results = tasks.create_task(show_results())
            await stream_file(
                nc,
                session_id,
                path,
                speed=args.speed,
                state=args.state,
                subject_prefix=_stream_prefix(settings),
                stats=stats,
            )
            try:
                async with asyncio.timeout(args.timeout):
                    closed = await results
            except TimeoutError:
                closed = False
    finally:
        await nc.close()

    _print_summary(stats, finals, latencies)
    if not closed:
        print(f"no session_closed within {args.timeout:g} s of the last chunk", file=sys.stderr)
        return 1
    return 0


def _print_summary(stats: StreamStats, finals: list[str], latencies: list[float]) -> None:
    sent = f"{stats.audio_s:.1f} s of audio sent in {stats.wall_s:.1f} s"
    print(f"\n{len(finals)} final(s) from {sent}")
    print(f"text     {' '.join(text for text in finals if text)!r}")
    if latencies:
        each = ", ".join(f"{value:.2f}" for value in latencies)
        print(
            f"latency  {each} s after the last audio of each final "
            f"(median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s)"
        )


def find_sample_audio() -> Path:
    """The demo's default WAV: $STT_SAMPLE_AUDIO, else shared/speech/ above the package or CWD."""
    # A developer convenience for the CLI only, so it is not part of the worker's Settings.
    override = os.environ.get(SAMPLE_ENV)
    if override:
        return Path(override)
    searched: list[Path] = []
    for base in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for directory in (base, *base.parents):
            candidate = directory / "shared" / "speech" / DEFAULT_SAMPLE
            if candidate.is_file():
                return candidate
            searched.append(directory)
    raise CliError(
        f"no sample audio: shared/speech/{DEFAULT_SAMPLE} is not in any parent of "
        f"{searched[0]} or {Path.cwd()}; pass a WAV file or set {SAMPLE_ENV}",
        status=2,
    )


# ---------------------------------------------------------------- gateway


async def _gateway(args: argparse.Namespace) -> int:
    from stt_worker.gateway.command import run_gateway  # imports this module

    return await run_gateway(args)


# ---------------------------------------------------------------- stream


async def _stream(args: argparse.Namespace) -> int:
    settings = load_settings(**_given(nats_url=args.nats_url))
    session_id = args.session or f"cli-{uuid.uuid4().hex[:8]}"
    nc = await _connect(settings, "stt-streaming stream")
    try:
        stats = await stream_file(
            nc,
            session_id,
            args.file,
            chunk_ms=args.chunk_ms,
            speed=args.speed,
            state=args.state,
            speaker_id=args.speaker,
            raw_audio=args.raw,
            subject_prefix=_stream_prefix(settings),
        )
    finally:
        await nc.close()
    print(
        f"session {session_id}: {stats.chunks} chunks, {stats.audio_s:.2f} s of "
        f"{stats.sample_rate_hz} Hz x{stats.channels} audio sent in {stats.wall_s:.2f} s"
    )
    return 0


def _stream_prefix(settings: Settings) -> str:
    # The worker subscribes to e.g. "ai.voice.stream.*"; publishers send to its prefix + id.
    return settings.stream_subject.removesuffix(".*").removesuffix(".>")


async def _connect(settings: Settings, name: str) -> NatsClient:
    """Connect as the worker does, but give up after a few attempts and say why."""
    url = redact_url(settings.nats_url)

    async def on_reconnect() -> None:
        print(f"nats: reconnected to {url}", file=sys.stderr)

    try:
        return await connect(settings, name, TOOL, reconnected_cb=on_reconnect)
    except ConnectError as exc:
        raise CliError(exc.message) from exc


# ---------------------------------------------------------------- tail


async def _tail(args: argparse.Namespace) -> int:
    settings = load_settings(**_given(nats_url=args.nats_url))
    subject = args.subject or f"{settings.transcription_subject_prefix}.>"
    nc = await _connect(settings, "stt-streaming tail")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def show(msg: Any) -> None:
        print(render_payload(msg.subject, msg.data, as_json=args.json), flush=True)

    try:
        await nc.subscribe(subject, cb=show)
        print(
            f"listening on {subject} at {redact_url(settings.nats_url)}; Ctrl-C to stop",
            file=sys.stderr,
        )
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await nc.drain()
    return 0


def render_payload(subject: str, data: bytes, *, as_json: bool) -> str:
    """One line for one received message: JSON, or `format_message`'s rendering."""
    decoded = _decode(data)
    # Results carry their session id; fall back to the subject's last token for odd ones.
    decoded.setdefault("session_id", subject.rsplit(".", 1)[-1])
    if as_json:
        return msgspec.json.encode(decoded).decode()
    return format_message(decoded)


def _decode(data: bytes) -> dict[str, Any]:
    try:
        decoded = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return {"type": "undecodable", "size_bytes": len(data)}
    return decoded if isinstance(decoded, dict) else {"type": "non_map", "value": decoded}


# ---------------------------------------------------------------- whisper-server


def _whisper_server(args: argparse.Namespace) -> int:
    from stt_worker.whisper_server import run_server  # needs the local extra

    settings = load_settings(
        **_given(
            whisper_server_host=args.host,
            whisper_server_port=args.port,
            whisper_model_size=args.model,
            whisper_device=args.device,
        )
    )
    setup_logging(settings.log_level, settings.log_format)
    engine = create_engine(settings, args.engine)
    logger.info(
        "engine %s, model %s on %s", engine.info.name, engine.info.model, engine.info.device
    )
    try:
        run_server(
            settings, engine, host=settings.whisper_server_host, port=settings.whisper_server_port
        )
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

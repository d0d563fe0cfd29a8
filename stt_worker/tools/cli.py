"""The ``stt-streaming`` command: parses argv and calls the tool each command names.

``serve`` runs the worker and ``whisper-server`` our OpenAI-compatible Whisper HTTP service
(``whisper-predictor``), both in the foreground (tools/serve.py); ``demo`` runs everything in
one process: an embedded nats-server, the worker, a publisher streaming a WAV file at real
time and a subscriber printing results (tools/demo.py; ``--engine http`` adds an in-process
whisper-server for the worker's HTTP engine to call); ``stream`` and ``tail`` are the
publisher and subscriber alone, for a worker running elsewhere (tools/stream.py, tail.py).
``gateway`` (stt_worker/gateway/) serves a WebSocket bridge and a captioning page, in front of
an embedded nats-server and worker as in ``demo``, or of ``--nats-url``. ``eval`` is the
evaluation harness (stt_worker/evaluation/). ``models`` lists the bundled models and checks
their files' sums (tools/models.py). A command that needs an extra which is not installed says
which one (tools/extras.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TypeAlias

from stt_worker.core.errors import SttError
from stt_worker.engines import ENGINE_FACTORIES, LOCAL
from stt_worker.runtime.bus import mapped_errors
from stt_worker.runtime.nats_server import NatsServerError
from stt_worker.runtime.publisher import WavFormatError
from stt_worker.tools.demo import DEFAULT_SAMPLE, demo
from stt_worker.tools.embedded import DEMO_ENGINES
from stt_worker.tools.extras import extras_named
from stt_worker.tools.models import list_models
from stt_worker.tools.options import CliError
from stt_worker.tools.serve import serve_whisper, serve_worker
from stt_worker.tools.stream import stream
from stt_worker.tools.tail import render_json, render_line, tail

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_STATES = ("listening", "responding")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:  # all of its arguments, --help included, are the harness's
        command, run = "eval", lambda: _eval(argv[1:])
    else:
        args = _parser().parse_args(argv)
        command, run = args.command, lambda: int(args.handler(args))
    try:
        with mapped_errors(), extras_named():
            return run()
    except CliError as exc:
        print(f"stt-streaming {command}: {exc}", file=sys.stderr)
        return exc.status
    except (NatsServerError, WavFormatError, OSError, SttError) as exc:
        print(f"stt-streaming {command}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stt-streaming", description="Streaming speech-to-text worker on NATS, and its tools."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_serve, _demo, _gateway, _stream, _tail, _whisper_server, _evaluate, _models):
        add(commands)
    return parser


def _serve(commands: Commands) -> None:
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
    serve.set_defaults(
        handler=lambda args: serve_worker(
            engine_kind=args.engine, model=args.model, device=args.device, nats_url=args.nats_url
        )
    )


def _demo(commands: Commands) -> None:
    parser = commands.add_parser(
        "demo", help="embedded nats-server + worker + publisher + subscriber, in one process"
    )
    parser.add_argument(
        "file", nargs="?", type=Path, help=f"16-bit WAV (default: shared/speech/{DEFAULT_SAMPLE})"
    )
    parser.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = no pacing")
    parser.add_argument("--nats-url", help="use this NATS instead of an embedded nats-server")
    parser.add_argument(
        "--engine",
        choices=DEMO_ENGINES,
        default="faster-whisper",
        help="default: faster-whisper; openai-whisper needs PyTorch; http: the worker's HTTP "
        "engine against an in-process whisper-server (faster-whisper), or --whisper-url",
    )
    parser.add_argument(
        "--whisper-url", help="with --engine http: this OpenAI-compatible server instead"
    )
    parser.add_argument("--model", help="Whisper model (WHISPER_MODEL_SIZE)")
    parser.add_argument("--state", choices=_STATES, default="listening")
    parser.add_argument("--no-vad", action="store_true", help="disable voice activity detection")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for results after the audio"
    )
    parser.set_defaults(
        handler=lambda args: asyncio.run(
            demo(
                args.file,
                speed=args.speed,
                nats_url=args.nats_url,
                engine_kind=args.engine,
                whisper_url=args.whisper_url,
                model=args.model,
                state=args.state,
                vad=not args.no_vad,
                timeout_s=args.timeout,
            )
        )
    )


def _gateway(commands: Commands) -> None:
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
    gateway.add_argument(
        "--show-token",
        action="store_true",
        help="print the page URL with STT_GATEWAY_TOKEN in it (not printed by default)",
    )
    gateway.set_defaults(handler=_run_gateway)


def _run_gateway(args: argparse.Namespace) -> int:
    # Imported here: the gateway's modules (Starlette, the page) are not the other commands'.
    from stt_worker.gateway.command import run_gateway

    return asyncio.run(
        run_gateway(
            host=args.host,
            port=args.port,
            nats_url=args.nats_url,
            engine_kind=args.engine,
            whisper_url=args.whisper_url,
            model=args.model,
            show_token=args.show_token,
        )
    )


def _stream(commands: Commands) -> None:
    parser = commands.add_parser("stream", help="publish a WAV file as a live client would")
    parser.add_argument("file", type=Path)
    parser.add_argument("--session", help="session id (default: random)")
    parser.add_argument("--nats-url", help="NATS server (default: NATS_URL)")
    parser.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = no pacing")
    parser.add_argument("--chunk-ms", type=int, default=20)
    parser.add_argument("--state", choices=_STATES, default="listening")
    parser.add_argument("--speaker", help="speaker_id sent in the start message")
    parser.add_argument("--raw", action="store_true", help="raw bytes in 'audio', not base64")
    parser.set_defaults(
        handler=lambda args: asyncio.run(
            stream(
                args.file,
                session_id=args.session,
                nats_url=args.nats_url,
                speed=args.speed,
                chunk_ms=args.chunk_ms,
                state=args.state,
                speaker_id=args.speaker,
                raw_audio=args.raw,
            )
        )
    )


def _tail(commands: Commands) -> None:
    parser = commands.add_parser("tail", help="print transcription results as they are published")
    parser.add_argument("--nats-url", help="NATS server (default: NATS_URL)")
    parser.add_argument("--subject", help="default: <STT_TRANSCRIPTION_SUBJECT_PREFIX>.>")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(
        handler=lambda args: asyncio.run(
            tail(
                nats_url=args.nats_url,
                subject=args.subject,
                render=render_json if args.json else render_line,
            )
        )
    )


def _whisper_server(commands: Commands) -> None:
    server = commands.add_parser(
        "whisper-server", help="serve Whisper over HTTP (OpenAI /v1/audio/transcriptions)"
    )
    server.add_argument(
        "--host",
        help="listen address (WHISPER_SERVER_HOST, default 127.0.0.1; 0.0.0.0 serves other "
        "machines: set WHISPER_API_KEY then)",
    )
    server.add_argument("--port", type=int, help="listen port (WHISPER_SERVER_PORT, default 8000)")
    server.add_argument(
        "--engine",
        choices=("faster-whisper", "openai-whisper"),
        default="faster-whisper",
        help="default: faster-whisper (CTranslate2); openai-whisper needs PyTorch",
    )
    server.add_argument("--model", help="Whisper model (WHISPER_MODEL_SIZE), e.g. tiny.en")
    server.add_argument("--device", help="cpu, cuda or auto (WHISPER_DEVICE)")
    server.set_defaults(
        handler=lambda args: serve_whisper(
            engine_kind=args.engine,
            host=args.host,
            port=args.port,
            model=args.model,
            device=args.device,
        )
    )


def _evaluate(commands: Commands) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="stream a manifest of clips through the real worker; WER, latency, stability",
        add_help=False,  # `stt-streaming eval --help` is the harness's own
    )
    evaluate.add_argument("args", nargs=argparse.REMAINDER, help="see `stt-streaming eval -h`")


def _models(commands: Commands) -> None:
    models = commands.add_parser(
        "models", help="the bundled models: packages, pinned versions, files' sizes and sums"
    )
    models.set_defaults(handler=lambda args: list_models())


def _eval(argv: list[str]) -> int:
    # Imported here: scoring and plots need the `eval` extra, which a worker image omits.
    from stt_worker.evaluation import main as evaluation_main

    return evaluation_main(argv, prog="stt-streaming eval")


if __name__ == "__main__":
    sys.exit(main())

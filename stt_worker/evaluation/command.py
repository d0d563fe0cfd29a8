"""`stt-streaming eval`: arguments to options to report."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from stt_worker.engines import ENGINE_FACTORIES
from stt_worker.evaluation.report import render_markdown, write_outputs
from stt_worker.evaluation.results import DEFAULT_MANIFEST, DEFAULT_OUT, EvalOptions
from stt_worker.evaluation.runner import evaluate

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``stt-streaming eval`` (and ``python -m stt_worker.evaluation``)."""
    parser.add_argument(
        "manifest",
        nargs="?",
        type=Path,
        default=DEFAULT_MANIFEST,
        help="JSON lines of {file, text}, files relative to it (default: shared/speech)",
    )
    parser.add_argument(
        "--speed", type=_speed, default=1.0, help="x real time; 0 = no pacing (latency: 1 only)"
    )
    parser.add_argument("--model", default="tiny.en", help="Whisper model (WHISPER_MODEL_SIZE)")
    parser.add_argument(
        "--engine",
        default="faster-whisper",
        choices=sorted(set(ENGINE_FACTORIES) - {"http"}),
        help="a local engine: the baselines decode in this process",
    )
    parser.add_argument("--limit", type=int, help="only the first N clips")
    parser.add_argument(
        "--file", dest="files", action="append", metavar="NAME", help="only this clip (repeatable)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="writes <out>.md, <out>.json and <out>.png (default: bench/results/eval)",
    )
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG")


def _speed(value: str) -> float:
    speed = float(value)
    if not speed >= 0:
        raise argparse.ArgumentTypeError(f"speed must be >= 0, got {value}")
    return speed


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(
        manifest=args.manifest,
        speed=args.speed,
        model=args.model,
        engine=args.engine,
        limit=args.limit,
        files=args.files,
        out=args.out,
        plot=args.plot,
    )


def run_command(args: argparse.Namespace) -> int:
    """CLI entry: evaluate, write the files, print the markdown to stdout.

    Exit 0 when every clip was measured (targets are reported, not enforced: the test
    suite asserts the WER ratio), 1 when a session did not close or gave no final.
    """
    # The worker logs every session at INFO; keep the terminal for progress and the report.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stt_worker.evaluation").setLevel(logging.INFO)  # the progress lines
    options = options_from_args(args)
    report = asyncio.run(evaluate(options))
    if options.out is not None:
        for path in write_outputs(report, options.out, plot=options.plot):
            logger.info("wrote %s", path)
    sys.stdout.write(render_markdown(report))
    return 0 if report.complete else 1


def main(argv: Sequence[str] | None = None, prog: str = "python -m stt_worker.evaluation") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    return run_command(parser.parse_args(argv))

"""What a shed flood costs the worker's protocol parser: `ShedParser` skipping a shed
subject's messages against nats-py's own parser reading the same bytes (the worker's path
before: parse, copy, then drop in `_process_msg`), fed in the reads the worker's client makes
(`runtime/read_size.py`: 256 KiB).

Targets, as ratios so that a loaded machine does not move them: tiny ``state_change``
messages at least 10x nats-py's rate, the two states in turn as `bench.neighbours` floods
them 10x (a run of them is one regular-expression match, `runtime/shed_runs.py`, however
many sizes), garbage of 1-200 bytes (`bench.neighbours`' garbage flood, a hundred and more
sizes) 5x, the same garbage over 16 session ids interleaved 0.8x (runs of one message, more
control lines than one subject's; 0.7x before), 256 KB chunks 10x. Measured on a quiet
2-core AMD EPYC, 2026-12-05: 23.8x, 17.8x (3.7x when only runs of one shape were matched
whole), 8.5x (3.3x), 0.95-1.0x (0.7x) and 2.8-47x:
nats-py's own rate on 256 KB chunks varies between runs from 4,600 to 75,000 a second (the
shedding parser's stays at ~210,000), so that row's ratio says more about nats-py than
about shedding.

    .venv/bin/python -m bench.shed_parser [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

from nats.protocol.parser import Parser

from stt_worker.core.protocol import StateChange, encode_client_message
from stt_worker.runtime import nats_parser
from stt_worker.runtime.read_size import READ_BYTES
from stt_worker.runtime.shedding import Shedder
from stt_worker.runtime.telemetry.metrics import Metrics

SUBJECT = "ai.voice.stream.flood"
# A garbage flood over many session ids at once, interleaved: runs of one message, and more
# control lines than the parser remembers (`_MAX_SHED_LINES`).
SUBJECTS = [SUBJECT, *(f"{SUBJECT}-{n}" for n in range(1, 16))]
TARGETS = {
    "state_change": 10.0,
    "state_change_two": 10.0,
    "garbage": 5.0,
    "garbage_16_subjects": 0.8,
    "chunk_256k": 10.0,
}
ROUNDS = 8


class Sink:
    """The client's side of the parser: counts what it is handed (nothing, when shed)."""

    def __init__(self) -> None:
        self.handed = 0

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:
        self.handed += 1


def wire(payload: bytes, copies: int, subject: str = SUBJECT) -> bytes:
    return b"MSG %s 1 %d\r\n%s\r\n" % (subject.encode(), len(payload), payload) * copies


async def rate(parser: Parser, data: bytes, messages: int, seconds: float) -> float:
    """Messages a second `parser` takes in, `data` fed in reads of READ_BYTES."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for offset in range(0, len(data), READ_BYTES):
            await parser.parse(data[offset : offset + READ_BYTES])
        done += messages
    return done / (time.perf_counter() - start)


def shedding_parser() -> tuple[Parser, Sink]:
    sink = Sink()
    sink._ps = Parser(sink)  # type: ignore[attr-defined]
    shedder = Shedder(Metrics(), hold_s=3600)
    shedder.install(sink)  # type: ignore[arg-type]
    for subject in SUBJECTS:
        shedder.shed(subject)
    return sink._ps, sink  # type: ignore[attr-defined]


async def measure(seconds: float) -> dict[str, tuple[float, float]]:
    """Per flood: the best of several short rounds of each parser, taken in turns, so that
    other work on the machine hits both alike."""
    nats_parser.harden()
    state = encode_client_message(StateChange(state="responding"))
    # `bench.neighbours`' flood: the two states in turn, two sizes (runs of mixed shapes).
    states = [encode_client_message(StateChange(state=s)) for s in ("responding", "listening")]
    rng = random.Random(20)
    garbage = b"".join(wire(rng.randbytes(rng.randint(1, 199)), 1) for _ in range(1000))
    floods = {
        "state_change": (wire(state, 1000), 1000),
        "state_change_two": (b"".join(wire(s, 1) for s in states) * 500, 1000),
        "garbage": (garbage, 1000),
        "garbage_16_subjects": (
            b"".join(
                wire(rng.randbytes(rng.randint(1, 199)), 1, rng.choice(SUBJECTS))
                for _ in range(4000)
            ),
            4000,
        ),
        "chunk_256k": (wire(bytes(256_000), 4), 4),
    }
    rates = {}
    for name, (data, messages) in floods.items():
        plain, (shed_parser, sink) = Parser(Sink()), shedding_parser()
        best = [0.0, 0.0]
        for _ in range(ROUNDS):
            for index, parser in enumerate((plain, shed_parser)):
                best[index] = max(best[index], await rate(parser, data, messages, seconds / ROUNDS))
        assert sink.handed == 0, "a shed message reached the client"
        rates[name] = (best[0], best[1])
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per parser and flood")
    args = parser.parse_args(argv)
    rates = asyncio.run(measure(args.seconds))
    print("| flood | nats-py msg/s | ShedParser msg/s | ratio | target | verdict |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    missed = False
    for name, (plain, shed) in rates.items():
        ratio = shed / plain
        target = TARGETS[name]
        missed |= ratio < target
        verdict = "met" if ratio >= target else "MISSED"
        print(f"| {name} | {plain:,.0f} | {shed:,.0f} | {ratio:.1f} | {target} | {verdict} |")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

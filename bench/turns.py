"""Barge-in on a labelled set of real speech: precision, recall and latency per mode.

Each clip is said while the assistant is `responding` (0.3 s of silence, the clip, 0.8 s of
silence, streamed at real-time pace to a real nats-server and worker):

- backchannels: real "right" and "yes" (tests/data/turns, Speech Commands): must not interrupt;
- interruptions: real "stop" and "no" (same source) and the first seconds of real sentences
  (../shared/speech): must.

Interrupt latency runs from the send time of the chunk where the words start (energy
onset) to the interrupt's timestamp (the worker's clock, the same machine).

    .venv/bin/python -m bench.turns            # writes bench/results/turns.{md,json}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import nats
import numpy as np

from stt_worker.config import load_settings
from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import Interrupt, ServerMessage, SessionClosed, Transcription
from stt_worker.core.vad import FRAME_SAMPLES
from stt_worker.engines import create_engine
from stt_worker.engines.base import Engine
from stt_worker.runtime import bus
from stt_worker.runtime.bus import Delivery
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import read_wav
from stt_worker.runtime.worker import Worker

logger = logging.getLogger("bench.turns")

ROOT = Path(__file__).resolve().parents[1]
TURNS = ROOT / "tests" / "data" / "turns"
SPEECH = ROOT.parent / "shared" / "speech"
OUT = ROOT / "bench" / "results" / "turns"
RATE = 16_000
BEFORE_S, AFTER_S = 0.3, 0.8
SENTENCE_S = 2.5  # the first seconds of a sentence: what a barge-in decision sees
SENTENCES = (
    "ls_1089-134691-0000.wav",
    "ls_1089-134691-0001.wav",
    "ls_1089-134686-0001.wav",
    "lj_LJ001-0008.wav",
    "lj_LJ001-0006.wav",
    "jfk.wav",
)
MODES = ("vad", "words")


@dataclass(frozen=True)
class Case:
    name: str
    label: str  # "backchannel", "echo" (both must not interrupt) or "interruption"
    samples: np.ndarray
    # What the assistant plays, sent as `playback` beside the microphone (echo cases).
    played: np.ndarray | None = None
    words_at_s: float = 0.0  # echo cases: where the user's own words start, if any

    @property
    def onset_s(self) -> float:
        """Where the words start: the first 20 ms frame with a tenth of the loudest frame's
        energy (webrtcvad also flags these clips' background noise as speech, earlier)."""
        if self.played is not None:
            return self.words_at_s
        usable = self.samples[: self.samples.size // FRAME_SAMPLES * FRAME_SAMPLES]
        frames = usable.astype(np.float64).reshape(-1, FRAME_SAMPLES)
        energy = (frames**2).mean(axis=1)
        first = int(np.argmax(energy >= 0.1 * energy.max()))
        return first * FRAME_SAMPLES / RATE


@dataclass
class Outcome:
    mode: str
    case: str
    label: str
    interrupted: bool
    latency_ms: float | None
    final: str
    backchannel: bool
    interrupt_words: str | None  # what word mode heard when it interrupted


def _mono(path: Path, seconds: float | None = None) -> np.ndarray:
    samples, rate = read_wav(path)
    if rate != RATE:
        raise ValueError(f"{path}: {rate} Hz, expected {RATE}")
    samples = samples.reshape(-1)
    return samples[: int(seconds * RATE)] if seconds else samples


def _pad(samples: np.ndarray) -> np.ndarray:
    zeros = np.zeros
    return np.concatenate(
        [zeros(int(BEFORE_S * RATE), np.int16), samples, zeros(int(AFTER_S * RATE), np.int16)]
    )


def labelled_set() -> list[Case]:
    cases = [
        Case(
            path.stem,
            "backchannel" if path.name.startswith(("right", "yes")) else "interruption",
            _pad(_mono(path)),
        )
        for path in sorted(TURNS.glob("*.wav"))
    ]
    cases += [
        Case(f"sentence:{name}", "interruption", _pad(_mono(SPEECH / name, SENTENCE_S)))
        for name in SENTENCES
    ]
    return cases + echo_cases()


# The assistant's sentence, how late and how loud its echo comes back to the microphone.
ECHO_PATHS = (
    ("lj_LJ001-0006.wav", 80, -6),
    ("ls_1089-134691-0001.wav", 150, -10),
    ("ls_1089-134686-0002.wav", 250, -14),
)


def echo_of(name: str, delay_ms: int, level_db: int, rng: np.random.Generator):
    """What the assistant plays (a real sentence and 1 s of silence) and its echo at the
    microphone, as sox `delay` and `vol` would mix it, with room and microphone noise."""
    played = np.concatenate([_mono(SPEECH / name), np.zeros(RATE, np.int16)])
    echo = np.zeros(played.size)
    delay = delay_ms * RATE // 1000
    echo[delay:] = played[: played.size - delay] * 10 ** (level_db / 20)
    echo += rng.normal(0, 30, echo.size)
    return played, echo


def echo_cases() -> list[Case]:
    """Echo alone, or with the user saying "stop" over it 2 s in; every case sends the
    played audio as `playback`."""
    rng = np.random.default_rng(11)
    cases = []
    for name, delay_ms, level_db in ECHO_PATHS:
        played, echo = echo_of(name, delay_ms, level_db, rng)
        label = f"echo:{name}@{delay_ms}ms{level_db}dB"
        cases.append(Case(label, "echo", _clip16(echo), played))
        stop = _mono(TURNS / "stop_105a0eea_nohash_0.wav").astype(np.float64)
        at = int(2.0 * RATE)
        with_user = echo.copy()
        with_user[at : at + stop.size] += stop
        onset = 2.0 + Case("", "", stop.astype(np.int16)).onset_s
        cases.append(Case(label + "+stop", "interruption", _clip16(with_user), played, onset))
    return cases


def _clip16(samples: np.ndarray) -> np.ndarray:
    return np.clip(samples, -32768, 32767).astype(np.int16)


async def _run_case(nc, mode: str, case: Case) -> Outcome:
    session = f"turns-{uuid.uuid4().hex[:8]}"
    async with bus.deliveries(nc, f"ai.voice.transcription.{session}") as deliveries:
        sent = await _send(nc, session, case)
        messages = await _until_closed(deliveries, within_s=60)
    interrupts = [m for m in messages if isinstance(m, Interrupt)]
    finals = [m for m in messages if isinstance(m, Transcription) and m.is_final]
    latency_ms = None
    if interrupts:
        onset_sent = sent[min(len(sent) - 1, int(case.onset_s / CHUNK_S))]
        received = interrupts[0].timestamp  # the worker's clock, same machine
        latency_ms = (received - onset_sent) * 1000 if onset_sent else None
    logger.debug("%s: words began at %.3f", case.name, sent[int(case.onset_s / CHUNK_S)])
    return Outcome(
        mode,
        case.name,
        case.label,
        bool(interrupts),
        latency_ms,
        " ".join(m.transcript for m in finals),
        any(m.backchannel for m in finals),
        interrupts[0].transcript if interrupts else None,
    )


async def _until_closed(
    deliveries: AsyncIterator[Delivery], within_s: float
) -> list[ServerMessage]:
    """The session's messages up to and including `session_closed`."""
    messages: list[ServerMessage] = []
    async with asyncio.timeout(within_s):
        async for delivery in deliveries:
            if isinstance(delivery.message, ProtocolError):
                raise delivery.message
            messages.append(delivery.message)
            if isinstance(delivery.message, SessionClosed):
                break
    return messages


async def measure(engine: Engine, cases: list[Case], modes: tuple[str, ...]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with NatsServer() as server:
        for mode in modes:
            settings = load_settings(nats_url=server.url, barge_in_mode=mode, http_port=-1)
            worker = Worker(settings, engine)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            await asyncio.wait_for(worker.ready.wait(), 120)
            nc = await nats.connect(server.url)
            try:
                for case in cases:  # one at a time: latency without contention
                    outcomes.append(await _run_case(nc, mode, case))
            finally:
                await nc.close()
                stop.set()
                await task
    return outcomes


CHUNK_S = 0.02


async def _send(nc, session: str, case: Case) -> list[float]:
    """Publish like a live client in `responding` (20 ms chunks at real-time pace, each after
    the playback of the same 20 ms when there is one); returns each chunk's send time."""
    subject = f"ai.voice.stream.{session}"
    pack = msgpack.packb
    await nc.publish(subject, pack({"type": "start", "sample_rate": RATE, "state": "responding"}))
    step = int(CHUNK_S * RATE)
    started = time.monotonic()
    sent: list[float] = []
    for index, offset in enumerate(range(0, case.samples.size, step)):
        await asyncio.sleep(max(0.0, started + index * CHUNK_S - time.monotonic()))
        if case.played is not None:
            played = case.played[offset : offset + step].astype("<i2").tobytes()
            await nc.publish(subject, pack({"type": "playback", "audio": played}))
        audio = case.samples[offset : offset + step].astype("<i2").tobytes()
        await nc.publish(subject, pack({"type": "chunk", "audio": audio}))
        sent.append(time.time())
    await nc.publish(subject, pack({"type": "end"}))
    return sent


def summarise(outcomes: list[Outcome]) -> dict[str, dict[str, object]]:
    summary: dict[str, dict[str, object]] = {}
    for mode in sorted({o.mode for o in outcomes}):
        mine = [o for o in outcomes if o.mode == mode]
        real = [o for o in mine if o.label == "interruption"]
        backchannels = [o for o in mine if o.label in ("backchannel", "echo")]
        true_positive = sum(o.interrupted for o in real)
        false_positive = sum(o.interrupted for o in backchannels)
        latencies = sorted(o.latency_ms for o in real if o.latency_ms is not None)
        summary[mode] = {
            "interruptions": len(real),
            "backchannels": sum(o.label == "backchannel" for o in backchannels),
            "echoes": sum(o.label == "echo" for o in backchannels),
            "false_interrupts_on_echo": sum(
                o.interrupted for o in backchannels if o.label == "echo"
            ),
            "recall": true_positive / len(real) if real else None,
            "precision": true_positive / (true_positive + false_positive)
            if true_positive + false_positive
            else None,
            "false_interrupts_on_backchannels": false_positive
            - sum(o.interrupted for o in backchannels if o.label == "echo"),
            "backchannels_published_as_such": sum(
                o.backchannel for o in backchannels if o.label == "backchannel"
            ),
            "latency_ms_p50": statistics.median(latencies) if latencies else None,
            "latency_ms_p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
            if latencies
            else None,
        }
    return summary


def _fmt(value: object, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits else f"{value:.0f}"
    return str(value)


def _on(words: str | None) -> str:
    return f" ({words!r})" if words else ""


def report(outcomes: list[Outcome], summary: dict, meta: dict) -> str:
    lines = [
        "# Barge-in on a labelled set",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['date']}; load average before: {meta['load_before']}",
        "",
        "| mode | interruptions | recall | false interrupts: backchannels | : echo "
        "| precision | published as backchannel | latency from onset p50 / p95 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode, s in summary.items():
        lines.append(
            f"| {mode} | {s['interruptions']} | {_fmt(s['recall'], 2)} "
            f"| {s['false_interrupts_on_backchannels']} of {s['backchannels']} "
            f"| {s['false_interrupts_on_echo']} of {s['echoes']} | {_fmt(s['precision'], 2)} "
            f"| {s['backchannels_published_as_such']} "
            f"| {_fmt(s['latency_ms_p50'])} / {_fmt(s['latency_ms_p95'])} |"
        )
    lines += [
        "",
        "| mode | case | label | interrupted (on) | latency ms | final |",
        "| --- | --- | --- | --- | ---: | --- |",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.mode} | {o.case} | {o.label} "
            f"| {'yes' if o.interrupted else 'no'}{_on(o.interrupt_words)} "
            f"| {_fmt(o.latency_ms)} | {o.final!r}{' (backchannel)' if o.backchannel else ''} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", help="cases whose name contains this (exploration)")
    parser.add_argument(
        "--trace", action="store_true", help="log each probe's words and timing to stderr"
    )
    args = parser.parse_args()
    if args.trace:
        logging.basicConfig(format="%(created).3f %(name)s %(message)s")
        for name in ("stt_worker.core.session", "stt_worker.core.listener", "bench.turns"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    cases = [case for case in labelled_set() if not args.only or args.only in case.name]
    load_before = os.getloadavg()[0]
    engine = create_engine(load_settings())
    started = time.time()
    try:
        outcomes = asyncio.run(measure(engine, cases, tuple(args.modes)))
    finally:
        engine.close()
    summary = summarise(outcomes)
    meta = {
        "command": "python -m bench.turns --modes " + " ".join(args.modes),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_before": round(load_before, 2),
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {"meta": meta, "summary": summary, "outcomes": [asdict(o) for o in outcomes]}, indent=2
        )
    )
    text = report(outcomes, summary, meta)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

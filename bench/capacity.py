"""Capacity: how many live speech sessions one worker sustains in a steady state.

One run, on its own nats-server. A step is N live sessions on a fresh worker in its own
process (`stt-streaming serve`, the configuration's environment over the defaults), the
load from `bench.loadgen` (20 ms chunks, real time, one publisher connection):

1. a staggered ramp (the sessions start evenly over `--ramp` seconds), then a settle;
2. a measured window of `--window` seconds (45 s or more for a figure: shorter steps measure
   a transient, before the queues have settled);
3. a tail, so that speech ending late in the window still meets its endpoint under the same
   load; then ``end`` and a grace for the finals still owed.

Each session says the shared set's single sentences (real speech, cut at the real end of
their last word, `bench.speech_marks`), each followed by 1.2 s of room noise: about 80% talk
time, every session from its own place in the rotation. Per utterance whose speech ENDS
inside the window: end of speech -> final, from the moment the chunk holding the end of its
last word left to the arrival of the final covering it. The judgement, `bench.steady`: p95
<= 1.5 s, no final missing, latency not growing across the window.

The ladder (`--steps`) runs per configuration (`--compare NAME=ENV=VAL,ENV=VAL`, repeated;
one configuration, ``default``, without it), the configurations alternating which goes
first at each rung so that other work on the machine falls on both alike; a configuration
stops one step after its first unsustained one (to show the collapse). Its capacity is the
highest step sustained below that failure. With configurations named ``batched`` and
``unbatched`` the JSON holds ``batching_ratio`` (their capacities' ratio) and
``batching_ratio_range`` (the ratios the rungs allow: each capacity lies from its sustained
rung, ``sustained``, up to below its first failed one, ``first_failed``). A step whose
window was under 45 s, or during which other processes used more than 0.25 cores, says
``not_a_figure``. Environment variables are passed through to the worker as they are: one a
checkout does not know is ignored by its worker.

    .venv/bin/python -m bench.capacity [--steps 8,16,24,32,48,64] [--window 45] [--ramp 10]
        [--compare NAME=ENV=VAL,ENV=VAL ...] [--quick] [--json bench/results/capacity.json]

Writes the JSON and a markdown report beside it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import Connections, Sampler, connected
from bench.loadgen import CHUNK_S, LoadRun, plan_sessions, room_noise, run_load
from bench.steady import (
    BOUND_MS,
    GROWTH_LIMIT_MS,
    Utterance,
    Verdict,
    capacity,
    first_failure,
    judge,
    not_a_figure,
    ratio_range,
)
from bench.turn_latency import SENTENCES, Placement, Sentence, sentences
from stt_worker.config import Settings, load_settings
from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.protocol import SessionClosed, Transcription
from stt_worker.evaluation.results import ROOT, Clip
from stt_worker.evaluation.runner import machine_info, worker_process
from stt_worker.runtime.nats_server import NatsServer

logger = logging.getLogger("bench.capacity")

DEFAULT_JSON = ROOT / "bench" / "results" / "capacity.json"
GAP_S = 1.2  # room noise after each sentence: with the set's ~5.8 s sentences, ~76% talk
LEAD_S = 0.3  # room noise before a session's first sentence
COVER_S = 0.1  # a final covers a sentence when its audio reaches this close to the end
FINAL_QUEUE = "stt_inference_queue_depth:final"


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[int, ...]
    window_s: float
    ramp_s: float
    settle_s: float  # after the last session started, before the window opens
    tail_s: float  # after the window, under the same load
    sentences: tuple[str, ...]

    @property
    def duration_s(self) -> float:
        return self.ramp_s + self.settle_s + self.window_s + self.tail_s


FULL = Plan((8, 16, 24, 32, 48, 64), 45.0, 10.0, 5.0, 3.0, SENTENCES)
# A smoke run (the test's): one small step of short sentences, seconds long.
QUICK = Plan((2,), 6.0, 1.0, 1.0, 2.0, SENTENCES[:3])


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    env: dict[str, str]


def parse_config(text: str) -> Config:
    """``NAME=ENV=VAL,ENV=VAL`` (``NAME=`` for the defaults)."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=ENV=VAL,ENV=VAL")
    if not all(c.isalnum() or c in "-_" for c in name):
        # Session ids start with the name, and a '.' would split their subject's token.
        raise argparse.ArgumentTypeError(f"{name!r}: a name of letters, digits, '-' and '_'")
    env = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{pair!r} in {text!r}: expected ENV=VAL")
        env[key] = value
    return Config(name, env)


@dataclass(slots=True)
class Step:
    """One configuration at one N: the verdict and what explains it."""

    config: str
    sessions: int
    sustained: bool
    why: str
    utterances: int  # ended inside the window
    missing: int
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    growth_ms: float | None
    window_s: float
    finals: int  # every final received in the step, inside the window or not
    closed: int  # sessions closed before the grace ran out (a session closes after its last final)
    talk_fraction: float
    worker_cores: float | None
    foreign_cores: float | None  # other work on the machine during the window
    final_queue_mean: tuple[float | None, float | None]  # first half, second half
    loadavg_before: float
    loadavg_max: float
    generator: dict[str, float]
    # (seconds into the window its speech ended, end of speech -> final ms or None) per
    # judged utterance: the run can be judged again, or plotted, from the JSON.
    trace: list[tuple[float, float | None]] = dataclasses.field(default_factory=list)
    # The window under 45 s or other work on the machine (`bench.steady.not_a_figure`): its
    # verdict is no capacity figure.
    not_a_figure: bool = False


def session_audio(
    chosen: Sequence[Sentence], index: int, total_s: float
) -> tuple[Clip, list[Placement]]:
    """Session `index`: the sentences from its own place in the rotation, each followed by
    `GAP_S` of room noise, looped up to `total_s`; where each sentence lies."""
    rng = np.random.default_rng(index)
    pieces = [room_noise(rng, round(LEAD_S * SAMPLE_RATE_HZ))]
    at = pieces[0].size
    placements: list[Placement] = []
    turn = index
    while at < total_s * SAMPLE_RATE_HZ:
        sentence = chosen[turn % len(chosen)]
        turn += 1
        onset_s = at / SAMPLE_RATE_HZ + sentence.onset_s
        end_s = (at + sentence.pcm.size) / SAMPLE_RATE_HZ
        placements.append(Placement(sentence, onset_s, end_s))
        pieces += [sentence.pcm, room_noise(rng, round(GAP_S * SAMPLE_RATE_HZ))]
        at += sentence.pcm.size + pieces[-1].size
    clip = Clip(f"session-{index}", Path("-"), "", np.concatenate(pieces), ())
    return clip, placements


def talk_fraction(placements: Sequence[Placement], total_s: float) -> float:
    spoken = sum(min(p.end_s, total_s) - p.onset_s for p in placements if p.onset_s < total_s)
    return spoken / total_s


def window_utterances(
    run: LoadRun, placed: dict[str, list[Placement]], first_tick: int, last_tick: int
) -> list[Utterance]:
    """The utterances whose last word's chunk left in ticks [first_tick, last_tick), with the
    arrival of the first final covering each."""
    finals: dict[str, list[tuple[float, Transcription]]] = {}
    for item in run.received:
        if isinstance(item.message, Transcription) and item.message.is_final:
            finals.setdefault(item.session_id, []).append((item.received_at, item.message))
    found = []
    for plan in run.plans:
        for place in placed[plan.session_id]:
            # The chunk holding the last word's end, as `LoadRun.send_time` counts it.
            tick = plan.start_tick + math.ceil(place.end_s / CHUNK_S - 1e-6) - 1
            sent = run.send_time(plan, place.end_s)
            if not first_tick <= tick < last_tick or sent is None:
                continue
            covering = [
                at
                for at, final in finals.get(plan.session_id, [])
                if final.audio_start_s < place.end_s <= final.audio_end_s + COVER_S
            ]
            latency = (min(covering) - sent) * 1000 if covering else None
            found.append(Utterance((tick - first_tick) * CHUNK_S, latency))
    return sorted(found, key=lambda u: u.end_s)


async def measure_step(
    nc: Connections,
    settings: Settings,
    config: Config,
    sessions: int,
    plan: Plan,
    chosen: Sequence[Sentence],
) -> Step:
    """N sessions on a fresh worker under `config`: ramp, settle, window, tail, end."""
    audio = [session_audio(chosen, i, plan.duration_s) for i in range(sessions)]
    prefix = f"{config.name}{sessions}x{time.time_ns() % 10**6:06d}"
    plans = plan_sessions(sessions, plan.ramp_s, prefix, [clip for clip, _ in audio])
    placed = {p.session_id: places for p, (_, places) in zip(plans, audio, strict=True)}
    loadavg_before = os.getloadavg()[0]
    async with worker_process(settings, "faster-whisper", env=config.env) as worker:
        sampler = Sampler(worker)
        async with sampler.running():
            run = await run_load(
                nc.results,
                nc.publisher,
                plans,
                plan.duration_s,
                stream_prefix=settings.stream_subject.removesuffix(".*"),
                transcription_prefix=settings.transcription_subject_prefix,
                results_grace_s=20.0 + sessions,
            )
    first_tick = round((plan.ramp_s + plan.settle_s) / CHUNK_S)
    last_tick = first_tick + round(plan.window_s / CHUNK_S)
    utterances = window_utterances(run, placed, first_tick, last_tick)
    verdict = judge(utterances, plan.window_s)
    opens, closes = float(run.tick_wall[first_tick]), float(run.tick_wall[last_tick - 1])
    middle = (opens + closes) / 2
    step = _step(config, sessions, plan, verdict, audio, run)
    step.trace = [(round(u.end_s, 2), _rounded(u.latency_ms, 1)) for u in utterances]
    step.worker_cores = _rounded(sampler.cores(opens, closes), 3)
    step.foreign_cores = sampler.foreign_cores(opens, closes)
    step.not_a_figure = not_a_figure(plan.window_s, step.foreign_cores)
    step.final_queue_mean = (
        _queue_mean(sampler, opens, middle),
        _queue_mean(sampler, middle, closes),
    )
    step.loadavg_before = round(loadavg_before, 2)
    inside = sampler.window(opens, closes)
    step.loadavg_max = round(max((s.loadavg_1m for s in inside), default=loadavg_before), 2)
    logger.info(
        "%s N=%d: %s (%s), p95 %s ms, growth %s ms, %d utterances, cores %s, others' %s",
        config.name,
        sessions,
        "sustained" if step.sustained else "NOT sustained",
        step.why,
        step.p95_ms,
        step.growth_ms,
        step.utterances,
        step.worker_cores,
        step.foreign_cores,
    )
    return step


def _step(
    config: Config,
    sessions: int,
    plan: Plan,
    verdict: Verdict,
    audio: Sequence[tuple[Clip, list[Placement]]],
    run: LoadRun,
) -> Step:
    fractions = [talk_fraction(places, plan.duration_s) for _, places in audio]
    return Step(
        config=config.name,
        sessions=sessions,
        sustained=verdict.sustained,
        why=verdict.why,
        utterances=verdict.utterances,
        missing=verdict.missing,
        p50_ms=verdict.p50_ms,
        p95_ms=verdict.p95_ms,
        max_ms=verdict.max_ms,
        growth_ms=verdict.growth_ms,
        window_s=plan.window_s,
        finals=sum(
            isinstance(r.message, Transcription) and r.message.is_final for r in run.received
        ),
        closed=sum(isinstance(r.message, SessionClosed) for r in run.received),
        talk_fraction=round(float(np.mean(fractions)), 3),
        worker_cores=None,
        foreign_cores=None,
        final_queue_mean=(None, None),
        loadavg_before=0.0,
        loadavg_max=0.0,
        generator=run.lateness_summary(),
    )


def _queue_mean(sampler: Sampler, start: float, end: float) -> float | None:
    inside = sampler.window(start, end)
    depths = [s.metrics[FINAL_QUEUE] for s in inside if FINAL_QUEUE in s.metrics]
    return round(float(np.mean(depths)), 2) if depths else None


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def run_ladders(plan: Plan, configs: Sequence[Config]) -> dict[str, list[Step]]:
    """Every configuration's ladder, rung by rung, alternating which goes first; each stops
    one step after its first unsustained one."""
    steps: dict[str, list[Step]] = {c.name: [] for c in configs}
    chosen = sentences(plan.sentences)
    async with NatsServer() as server, connected(server.url) as nc:
        settings = load_settings(nats_url=server.url, otel_enabled=False, http_port=0)
        for rung, sessions in enumerate(plan.steps):
            for config in configs if rung % 2 == 0 else list(reversed(configs)):
                done = steps[config.name]
                failed = [i for i, s in enumerate(done) if not s.sustained]
                if failed and len(done) - failed[0] >= 2:
                    continue
                done.append(await measure_step(nc, settings, config, sessions, plan, chosen))
    return steps


def summarise(
    plan: Plan, configs: Sequence[Config], steps: dict[str, list[Step]]
) -> dict[str, Any]:
    """The JSON: per configuration its capacity and steps, the capacity as the interval
    from the sustained rung to the first failed one; when both ``batched`` and
    ``unbatched`` ran, `batching_ratio` (of the sustained rungs) and the range the two
    intervals allow."""
    result: dict[str, Any] = {
        "bound_ms": BOUND_MS,
        "growth_limit_ms": GROWTH_LIMIT_MS,
        "configs": {c.name: _config_summary(c, steps[c.name]) for c in configs},
    }
    found = result["configs"]
    if "batched" in found and "unbatched" in found:
        batched, unbatched = found["batched"], found["unbatched"]
        base = unbatched["sustained"]
        ratio = batched["sustained"] / base if base else None
        result["batching_ratio"] = None if ratio is None else round(ratio, 3)
        low, high = ratio_range(
            (batched["sustained"], batched["first_failed"]),
            (unbatched["sustained"], unbatched["first_failed"]),
        )
        result["batching_ratio_range"] = {"low": low, "high": high}
    result["meta"] = {**machine_info(), "plan": dataclasses.asdict(plan)}
    return result


def _config_summary(config: Config, steps: Sequence[Step]) -> dict[str, Any]:
    rungs = [(s.sessions, s.sustained) for s in steps]
    return {
        "env": config.env,
        "sustained": capacity(rungs),
        "first_failed": first_failure(rungs),
        "steps": [dataclasses.asdict(s) for s in steps],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: one short step")
    parser.add_argument("--steps", help="sessions per rung, comma-separated (e.g. 8,16,24)")
    parser.add_argument("--window", type=float, help="measured window per step, seconds")
    parser.add_argument("--ramp", type=float, help="staggered ramp per step, seconds")
    parser.add_argument(
        "--compare",
        type=parse_config,
        action="append",
        metavar="NAME=ENV=VAL,ENV=VAL",
        help="a worker configuration to measure (repeat; default: one named 'default')",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="JSON output path")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.steps:
        plan = dataclasses.replace(plan, steps=tuple(int(n) for n in args.steps.split(",")))
    if args.window is not None:
        plan = dataclasses.replace(plan, window_s=args.window)
    if args.ramp is not None:
        plan = dataclasses.replace(plan, ramp_s=args.ramp)
    configs = args.compare or [Config("default", {})]
    if len({c.name for c in configs}) != len(configs):
        parser.error("--compare names must differ")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    loadavg_start = os.getloadavg()
    started = time.monotonic()
    steps = asyncio.run(run_ladders(plan, configs))
    result = summarise(plan, configs, steps)
    result["meta"] |= {
        "command": " ".join([".venv/bin/python -m bench.capacity", *(argv or sys.argv[1:])]),
        "wall_s": round(time.monotonic() - started, 1),
        "loadavg_start": [round(x, 2) for x in loadavg_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    from bench.capacity_report import render_markdown

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    markdown = render_markdown(result)
    args.json.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Live turn latency: end of speech -> final, speech onset -> first partial, partial cadence.

N sessions stream the shared set's single sentences (each cut at the real end of its last
word, `bench.speech_marks`, then 1.5 s of room noise so the endpoint can fire) to a real
nats-server and the real worker in its own process, at real time in 20 ms chunks, starts
staggered (`bench.loadgen`). Every session says every sentence, each session in its own
rotation. Per sentence:

- end of speech -> final: the arrival of the final covering the sentence's end minus the
  moment the chunk holding the end of its last word was published. Two LJ clips stop at a
  comma, mid-sentence (their speaker's voice says so: Smart Turn scores their ends 0.01),
  so the figures are given over the sentence ends (`bench.pauses.ends_a_sentence` on the
  reference text, as `bench.endpointing` counts latency) and over every clip's end; the
  targets are judged on the sentence ends, the ends of a turn;
- speech onset -> first partial: the first partial's arrival minus the moment the chunk
  holding the first word's start was published, and how much audio after the onset that
  partial had heard;
- the gaps between partials that arrived while the sentence was still being spoken;
- for configurations whose sessions ask for turn events (`START_OPTIONS`): end of speech ->
  the first `eager_end_of_turn` covering the sentence's end, how long before its final it
  came, and the share of the sentence's eager events a `turn_resumed` followed.

Configurations are measured in one run, one after the other, on the same server: `old`
(the fixed 500 ms endpoint with its final decoded after it, webrtcvad and a partial a second:
the defaults before issue 16) and `new` (the defaults); `interval` is `new` with the partial
cadence before its lead (`STT_PARTIAL_LEAD_MS=0`), `unspeculated` `new` with the final
decoded after the endpoint (`STT_ENDPOINT_SPECULATE_MS=0`), `turn` the opt-in turn mode.
`new`'s sessions also ask for turn events in their `start`. A worker ignores environment
variables and start options it does not know, so `old` is the same command on any
checkout.

    .venv/bin/python -m bench.turn_latency [--sessions 1,16] [--configs old,new,interval] [--quick]
        [--rounds 3] [--baseline DIR] [--json PATH]  # bench/results/turn_latency.{md,json}

One session is measured `--rounds` times (3), each round with other room noise and another
order of the sentences; 16 sessions hear 16 of each at once.

`--baseline DIR` measures each configuration on the worker of the checkout at DIR too, just
before this checkout's (`CONFIG@base`): a change against its parent in one run, as the
machine's load drifts between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import partial_gaps
from bench.harness import connected, write_results
from bench.loadgen import LoadRun, SessionPlan, plan_sessions, room_noise, run_load
from bench.pauses import ends_a_sentence
from bench.speech_marks import loud_frames, speech_span
from stt_worker.config import load_settings
from stt_worker.core.audio import SAMPLE_RATE_HZ
from stt_worker.core.protocol import EagerEndOfTurn, Start, Transcription, TurnResumed
from stt_worker.core.vad import WebrtcDetector
from stt_worker.evaluation.clips import load_clips
from stt_worker.evaluation.results import DEFAULT_MANIFEST, ROOT, Clip, Stability
from stt_worker.evaluation.runner import machine_info, worker_process
from stt_worker.evaluation.stability import partial_stability
from stt_worker.evaluation.textnorm import wer
from stt_worker.runtime.nats_server import NatsServer

logger = logging.getLogger("bench.turn_latency")

DEFAULT_OUT = ROOT / "bench" / "results" / "turn_latency"
TRAIL_S = 1.5  # room noise after each sentence's last word
LEAD_S = 0.3  # room noise before a session's first sentence
# A final covers a sentence when its audio reaches this close to the last word's energy end:
# the VAD may hear a word's soft tail ("him" fading out) as the pause, and a turn check
# can end the turn on the whole text before that tail is over. A cut at a mid-sentence
# pause leaves at least a word (more than this) for a later final.
COVER_TOLERANCE_S = 0.3
# The worker's default partial step (`STT_PARTIAL_INTERVAL_MS`), for configurations that
# leave it alone: a gap with more new audio than this is `spaced`.
DEFAULT_STEP_MS = 300.0
RAMP_PER_SESSION_S = 0.3
# One session is measured this many times, each round with other room noise and another
# order of the sentences: Smart Turn's verdict on some sentence ends swings with the noise
# after the last word (`bench.turn_noise`), so one round's 7 sentence ends are one draw.
ROUNDS = 3
MAX_RAMP_S = 5.0
# The shared set's single sentences (the conversation and 36 s clips are several turns).
SENTENCES = (
    "ls_1089-134691-0000.wav",
    "lj_LJ001-0008.wav",
    "ls_1089-134686-0001.wav",
    "ls_1089-134691-0001.wav",
    "lj_LJ001-0006.wav",
    "ls_1089-134686-0002.wav",
    "noisy10db_lj_LJ001-0004.wav",
    "ls_1089-134686-0000.wav",
    "jfk.wav",
)
QUICK_SENTENCES = SENTENCES[:2]
CONFIGS: dict[str, dict[str, str]] = {
    # The defaults before issue 16: fixed 500 ms endpoint with the final decoded after it,
    # webrtcvad, a partial each second of audio (the first after a second too).
    "old": {
        "STT_ENDPOINT_MODE": "fixed",
        "STT_ENDPOINT_SPECULATE_MS": "0",
        "STT_VAD_ENGINE": "webrtc",
        "STT_PARTIAL_INTERVAL_MS": "1000",
        "STT_PARTIAL_FIRST_MS": "1000",
        "STT_PARTIAL_LEAD_MS": "0",
    },
    "new": {},
    # The defaults with the final decoded after the endpoint, as before speculation.
    "unspeculated": {"STT_ENDPOINT_SPECULATE_MS": "0"},
    # The defaults without the 30 s decode of a final blanked in doubt.
    "undoubted": {"WHISPER_DOUBT_RETRY": "false"},
    # The defaults with the partial cadence before its lead: one partial every interval of
    # new audio, however the decodes land.
    "interval": {"STT_PARTIAL_LEAD_MS": "0"},
    # The defaults with turn mode (Smart Turn and the decoder's end probability), opt-in.
    "turn": {"STT_ENDPOINT_MODE": "turn"},
}
# Start options of a configuration's sessions (the others send a bare `start`).
START_OPTIONS: dict[str, dict[str, Any]] = {"new": {"turn_events": True}}
# Issue 16's targets for the defaults (`new`), and for turn mode beside them: (sessions,
# metric, statistic, bound in ms). Latency to the final counts at the ends of sentences.
TARGETS = (
    (1, "eos_to_final_sentence_ms", "p50", 300.0),
    (1, "eos_to_final_sentence_ms", "p95", 450.0),
    (16, "eos_to_final_sentence_ms", "p95", 600.0),
    (16, "eos_to_final_sentence_ms", "p95", 1500.0),  # capacity: today's steady state holds
    (1, "onset_to_first_partial_ms", "p50", 300.0),
    (1, "onset_to_first_partial_ms", "p95", 500.0),
    (1, "partial_gap_ms", "p95", 300.0),
    # "One at least every 300 ms of speech": the gaps without a pause of the speaker.
    (1, "gap_in_speech_ms", "p95", 300.0),
)


@dataclass(frozen=True, slots=True)
class Sentence:
    name: str
    reference: str
    pcm: np.ndarray  # cut at the end of the last word
    onset_s: float  # where its first word starts
    loud: np.ndarray  # `loud_frames` of `pcm`: where the speaker pauses
    ends_sentence: bool  # its end is a turn's: the reference text ends a sentence


@dataclass(frozen=True, slots=True)
class Placement:
    """One sentence in one session's audio (seconds from the session's first sample)."""

    sentence: Sentence
    onset_s: float
    end_s: float


@dataclass(slots=True)
class Utterance:
    config: str
    sessions: int
    session: str
    sentence: str
    ends_sentence: bool
    eos_to_final_ms: float | None
    onset_to_first_partial_ms: float | None
    first_partial_heard_ms: float | None  # audio after the onset the first partial covered
    partial_gaps_ms: list[float] = field(default_factory=list)
    # The partials that arrived during the sentence, and the gaps between them with causes.
    partial_timings: list[partial_gaps.PartialTiming] = field(default_factory=list)
    gaps: list[partial_gaps.Gap] = field(default_factory=list)
    partials: int = 0
    final_text: str = ""
    wer: float = 1.0
    # Turn events (sessions that ask for them): end of speech -> the first eager event that
    # covers the sentence's end, and how long before the final that covered it it came; the
    # sentence's eager events and how many of them a `turn_resumed` followed.
    eos_to_eager_ms: float | None = None
    eager_lead_ms: float | None = None
    eager_events: int = 0
    eager_resumed: int = 0


def sentences(names: Sequence[str]) -> list[Sentence]:
    """The clips cut at the end of their last word."""
    # The clips' own VAD labels are not used here: the cheapest detector will do.
    clips = load_clips(DEFAULT_MANIFEST, functools.partial(WebrtcDetector, 2), files=names)
    found = []
    for clip in clips:
        span = speech_span(clip.pcm, SAMPLE_RATE_HZ)
        pcm = clip.pcm[: round(span.end_s * SAMPLE_RATE_HZ)]
        loud = loud_frames(pcm, SAMPLE_RATE_HZ)
        complete = ends_a_sentence(clip.reference)
        found.append(Sentence(clip.name, clip.reference, pcm, span.start_s, loud, complete))
    return found


def session_audio(
    chosen: Sequence[Sentence], index: int, total_s: float
) -> tuple[Clip, list[Placement]]:
    """Session `index`: the sentences from its own starting point, each followed by
    `TRAIL_S` of room noise, then room noise up to `total_s`."""
    rng = np.random.default_rng(index)
    pieces = [room_noise(rng, round(LEAD_S * SAMPLE_RATE_HZ))]
    at = pieces[0].size
    placements = []
    for step in range(len(chosen)):
        sentence = chosen[(index + step) % len(chosen)]
        placements.append(
            Placement(
                sentence,
                (at / SAMPLE_RATE_HZ) + sentence.onset_s,
                (at + sentence.pcm.size) / SAMPLE_RATE_HZ,
            )
        )
        pieces += [sentence.pcm, room_noise(rng, round(TRAIL_S * SAMPLE_RATE_HZ))]
        at += sentence.pcm.size + pieces[-1].size
    pieces.append(room_noise(rng, max(0, round(total_s * SAMPLE_RATE_HZ) - at)))
    clip = Clip(f"session-{index}", Path("-"), "", np.concatenate(pieces), ())
    return clip, placements


def measure_utterance(
    config: str,
    run: LoadRun,
    plan: SessionPlan,
    place: Placement,
    messages: list[Any],
    step_ms: float,
) -> Utterance:
    """What came back for one placed sentence; `messages` are the session's `Received`,
    `step_ms` the configuration's audio between two partials."""
    mine = overlapping(messages, Transcription, place)
    finals = [item for item in mine if item.message.is_final]
    partials = [item for item in mine if not item.message.is_final]
    onset_sent = run.send_time(plan, place.onset_s)
    end_sent = run.send_time(plan, place.end_s)
    assert onset_sent is not None and end_sent is not None
    utterance = Utterance(
        config,
        len(run.plans),
        plan.session_id,
        place.sentence.name,
        place.sentence.ends_sentence,
        None,
        None,
        None,
    )
    covering = [
        item for item in finals if item.message.audio_end_s >= place.end_s - COVER_TOLERANCE_S
    ]
    if covering:
        # Negative when the final came before the word's tail was sent.
        utterance.eos_to_final_ms = (covering[-1].received_at - end_sent) * 1000
    text = " ".join(item.message.transcript for item in finals)
    utterance.final_text, utterance.wer = text, wer(place.sentence.reference, text)
    if partials:
        first = partials[0]
        utterance.onset_to_first_partial_ms = (first.received_at - onset_sent) * 1000
        utterance.first_partial_heard_ms = (first.message.audio_end_s - place.onset_s) * 1000
    during = [item for item in partials if item.received_at <= end_sent]
    utterance.partial_gaps_ms = [
        (b.received_at - a.received_at) * 1000 for a, b in itertools.pairwise(during)
    ]
    utterance.partial_timings = [timing(run, plan, place, item, onset_sent) for item in during]
    utterance.gaps = partial_gaps.gaps(
        utterance.partial_timings, place.sentence.loud, place.sentence.onset_s, step_ms
    )
    utterance.partials = len(partials)
    measure_turn_events(utterance, place, messages, end_sent, covering[-1] if covering else None)
    return utterance


def overlapping(messages: list[Any], kind: type, place: Placement) -> list[Any]:
    """The session's `Received` messages of `kind` whose audio overlaps the placed sentence."""
    return [
        item
        for item in messages
        if isinstance(item.message, kind)
        and item.message.audio_start_s < place.end_s
        and item.message.audio_end_s > place.onset_s
    ]


def resumed_eagers(messages: list[Any]) -> dict[int, bool]:
    """Each `eager_end_of_turn` of a session (by `id` of its `Received`), and whether a
    `turn_resumed` of its utterance followed it (before the next eager event)."""
    outcome: dict[int, bool] = {}
    pending: dict[int, Any] = {}  # utterance id -> its latest eager event
    for item in messages:
        message = item.message
        if isinstance(message, EagerEndOfTurn):
            outcome[id(item)] = False
            pending[message.utterance_id] = item
        elif isinstance(message, TurnResumed) and message.utterance_id in pending:
            outcome[id(pending.pop(message.utterance_id))] = True
    return outcome


def measure_turn_events(
    utterance: Utterance, place: Placement, messages: list[Any], end_sent: float, final: Any
) -> None:
    """The sentence's turn events: `final` is the `Received` final covering its end."""
    resumed = resumed_eagers(messages)
    mine = overlapping(messages, EagerEndOfTurn, place)
    utterance.eager_events = len(mine)
    utterance.eager_resumed = sum(resumed[id(item)] for item in mine)
    covering = [
        item for item in mine if item.message.audio_end_s >= place.end_s - COVER_TOLERANCE_S
    ]
    if covering:
        first = covering[0]
        utterance.eos_to_eager_ms = (first.received_at - end_sent) * 1000
        if final is not None:
            utterance.eager_lead_ms = (final.received_at - first.received_at) * 1000


def timing(
    run: LoadRun, plan: SessionPlan, place: Placement, item: Any, onset_sent: float
) -> partial_gaps.PartialTiming:
    """One partial's arrival, audio, decode and what passed between asking and arrival."""
    message = item.message
    asked = run.send_time(plan, message.audio_end_s)
    latency_s = item.received_at - asked if asked is not None else 0.0
    return partial_gaps.PartialTiming(
        at_ms=round((item.received_at - onset_sent) * 1000, 1),
        audio_end_ms=round((message.audio_end_s - place.onset_s) * 1000, 1),
        window_ms=round((message.audio_end_s - message.audio_start_s) * 1000, 1),
        decode_ms=message.inference_ms,
        latency_ms=round(latency_s * 1000, 1),
    )


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None}
    array = np.asarray(values, dtype=float)
    return {
        "n": int(array.size),
        "p50": round(float(np.percentile(array, 50)), 1),
        "p95": round(float(np.percentile(array, 95)), 1),
    }


def summarise(utterances: Sequence[Utterance]) -> dict[str, Any]:
    def present(name: str) -> list[float]:
        return [v for u in utterances if (v := getattr(u, name)) is not None]

    return {
        "utterances": len(utterances),
        "finals_missing": sum(u.eos_to_final_ms is None for u in utterances),
        "first_partials_missing": sum(u.onset_to_first_partial_ms is None for u in utterances),
        "eos_to_final_ms": spread(present("eos_to_final_ms")),
        "eos_to_final_sentence_ms": spread(
            [v for u in utterances if u.ends_sentence and (v := u.eos_to_final_ms) is not None]
        ),
        "onset_to_first_partial_ms": spread(present("onset_to_first_partial_ms")),
        "first_partial_heard_ms": spread(present("first_partial_heard_ms")),
        "partial_gap_ms": spread([g for u in utterances for g in u.partial_gaps_ms]),
        "gaps": partial_gaps.breakdown(
            [g for u in utterances for g in u.gaps],
            [t for u in utterances for t in u.partial_timings],
        ),
        "wer_mean": round(float(np.mean([u.wer for u in utterances])), 3),
    }


def turn_events_summary(utterances: Sequence[Utterance]) -> dict[str, Any]:
    """End of speech -> first eager event, its lead on the final, and how often the user
    went on after one."""
    events = sum(u.eager_events for u in utterances)
    resumed = sum(u.eager_resumed for u in utterances)
    return {
        "eos_to_eager_ms": spread([v for u in utterances if (v := u.eos_to_eager_ms) is not None]),
        "eager_lead_ms": spread([v for u in utterances if (v := u.eager_lead_ms) is not None]),
        "eagers_missing": sum(u.eos_to_eager_ms is None for u in utterances),
        "eager_events": events,
        "resumed": resumed,
        "resumed_share": round(resumed / events, 3) if events else None,
    }


async def measure_step(
    config: str, url: str, chosen: Sequence[Sentence], sessions: int, rounds: int = 1
) -> tuple[dict[str, Any], list[Utterance]]:
    """`sessions` live sessions on the running worker, `rounds` times one after the other
    with other sessions' audio (room noise, order): their summary and utterances."""
    runs = [await _one_round(config, url, chosen, sessions, index) for index in range(rounds)]
    utterances = [u for measured, _, _ in runs for u in measured]
    stability = sum((found for _, found, _ in runs), Stability())
    summary = summarise(utterances) | {
        "rounds": rounds,
        "partial_stability": {
            "change_rate": _rate(stability.change_rate),
            "stable_change_rate": _rate(stability.stable_change_rate),
            "partials": stability.partials,
        },
        "generator": runs[-1][2].lateness_summary(),
    }
    if START_OPTIONS.get(config.split("@")[0], {}).get("turn_events"):
        summary["turn_events"] = turn_events_summary(utterances)
    summary["loadavg_1m"] = round(os.getloadavg()[0], 2)
    logger.info("%s N=%d: %s", config, sessions, json.dumps(summary))
    return summary, utterances


async def _one_round(
    config: str, url: str, chosen: Sequence[Sentence], sessions: int, round_: int
) -> tuple[list[Utterance], Stability, LoadRun]:
    """One round of `sessions` live sessions; round r's sessions hear the audio of sessions
    r * sessions onwards (their own noise and order of sentences)."""
    speech_s = LEAD_S + sum(s.pcm.size / SAMPLE_RATE_HZ + TRAIL_S for s in chosen)
    ramp_s = min(MAX_RAMP_S, RAMP_PER_SESSION_S * (sessions - 1))
    duration_s = ramp_s + speech_s + 0.5
    first = round_ * sessions
    audio = [session_audio(chosen, first + i, duration_s) for i in range(sessions)]
    plans = plan_sessions(
        sessions, ramp_s, f"{config}{sessions}r{round_}x{os.getpid()}", [a for a, _ in audio]
    )
    options = START_OPTIONS.get(config.split("@")[0], {})
    async with connected(url) as nc:
        run = await run_load(
            nc.results,
            nc.publisher,
            plans,
            duration_s,
            results_grace_s=30.0,
            start=Start(**options),
        )
    utterances, stability = [], Stability()
    step_ms = float(CONFIGS[config.split("@")[0]].get("STT_PARTIAL_INTERVAL_MS", DEFAULT_STEP_MS))
    for plan, (_, placements) in zip(plans, audio, strict=True):
        messages = [item for item in run.received if item.session_id == plan.session_id]
        utterances += [
            measure_utterance(config, run, plan, p, messages, step_ms) for p in placements
        ]
        stability += partial_stability(item.message for item in messages)
    return utterances, stability, run


async def run_all(
    configs: Sequence[str],
    counts: Sequence[int],
    chosen: Sequence[Sentence],
    baseline: Path | None = None,
    rounds: int = 1,
) -> tuple[dict[str, dict[str, Any]], list[Utterance]]:
    """Every configuration in turn, each in a worker process of its own on one server (the
    baseline checkout's first, when given); one session `rounds` times."""
    results: dict[str, dict[str, Any]] = {}
    utterances: list[Utterance] = []
    trees = [("@base", baseline), ("", None)] if baseline else [("", None)]
    with NatsServer() as server:
        settings = load_settings(nats_url=server.url, otel_enabled=False, http_port=0)
        for name, (suffix, tree) in itertools.product(configs, trees):
            config = name + suffix
            env = CONFIGS[name]
            async with worker_process(settings, "faster-whisper", env=env, cwd=tree):
                for sessions in counts:
                    repeat = rounds if sessions == 1 else 1
                    summary, measured = await measure_step(
                        config, server.url, chosen, sessions, repeat
                    )
                    results.setdefault(config, {})[str(sessions)] = summary
                    utterances += measured
    return results, utterances


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def judge(results: dict[str, dict[str, Any]], config: str = "new") -> list[dict[str, Any]]:
    """Issue 16's targets, on `config` where it was measured."""
    judged = []
    for sessions, metric, statistic, bound in TARGETS:
        step = results.get(config, {}).get(str(sessions)) or {}
        measured = step.get(metric) or step.get("gaps", {}).get(metric)
        value = measured[statistic] if measured else None
        judged.append(
            {
                "target": f"{metric} {statistic} <= {bound:.0f} at {sessions} session(s)",
                "value": value,
                "met": None if value is None else value <= bound,
            }
        )
    return judged


def _ms(spread_: dict[str, Any], statistic: str) -> str:
    value = spread_[statistic]
    return "-" if value is None else f"{value:.0f}"


def gaps_report(results: dict[str, dict[str, Any]]) -> list[str]:
    """Where the gaps between partials come from (`bench.partial_gaps`), and how stable the
    partials were."""
    lines = [
        "",
        "## Gaps between partials",
        "",
        f"Over {partial_gaps.GAP_TARGET_MS:.0f} ms by cause (`bench/partial_gaps.py`): "
        "`pause` the speaker paused, `spaced` more audio than a step (a decoded partial went "
        "unpublished, or the cadence stretched), `decode` the decode alone took longer, "
        "`waited` the partial waited for a slot or its session's previous job, `growth` a "
        "step of audio plus the decode's growth and jitter. "
        "*In speech*: the gaps without a pause. *Changed*: words shown in partials that the "
        "next hypothesis changed; *stable changed*: words within `stable_chars` changed later.",
        "",
        "| config | sessions | gaps | in speech p50 / p95 ms | over target by cause "
        "| decode p50 / p95 ms | waited p50 / p95 ms | changed | stable changed |",
        "| --- | ---: | ---: | --- | --- | --- | --- | ---: | ---: |",
    ]
    for config, steps in results.items():
        for sessions, s in steps.items():
            g, stability = s["gaps"], s["partial_stability"]
            causes = ", ".join(f"{k} {v}" for k, v in g["over_target_by_cause"].items()) or "-"
            speech, decode, waited = g["gap_in_speech_ms"], g["decode_ms"], g["waited_ms"]
            lines.append(
                f"| {config} | {sessions} | {g['gaps']} | {_ms(speech, 'p50')} / "
                f"{_ms(speech, 'p95')} | {causes} | {_ms(decode, 'p50')} / {_ms(decode, 'p95')} "
                f"| {_ms(waited, 'p50')} / {_ms(waited, 'p95')} | {stability['change_rate']} "
                f"| {stability['stable_change_rate']} |"
            )
    return lines


def turn_events_report(results: dict[str, dict[str, Any]]) -> list[str]:
    """The turn events of the configurations whose sessions asked for them."""
    rows = [
        (config, sessions, s["turn_events"])
        for config, steps in results.items()
        for sessions, s in steps.items()
        if "turn_events" in s
    ]
    if not rows:
        return []
    lines = [
        "",
        "## Turn events",
        "",
        f"Sessions of {', '.join(f'`{c}`' for c in START_OPTIONS)} ask for turn events. "
        "*End of speech -> eager*: the first `eager_end_of_turn` covering the sentence's end; "
        "*lead*: how long before the final it came; *resumed*: the share of eager events "
        "(mid-sentence pauses included) a `turn_resumed` followed, the early answers an "
        "assistant would have dropped.",
        "",
        "| config | sessions | end of speech -> eager p50 / p95 ms | lead on the final "
        "p50 / p95 ms | sentences without one | eager events | resumed |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for config, sessions, t in rows:
        eager, lead = t["eos_to_eager_ms"], t["eager_lead_ms"]
        share = "-" if t["resumed_share"] is None else f"{t['resumed_share']:.0%}"
        lines.append(
            f"| {config} | {sessions} | {_ms(eager, 'p50')} / {_ms(eager, 'p95')} "
            f"| {_ms(lead, 'p50')} / {_ms(lead, 'p95')} | {t['eagers_missing']} "
            f"| {t['eager_events']} | {share} ({t['resumed']}) |"
        )
    return lines


def report(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        "# Live turn latency",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['nproc']} CPUs ({meta['cpu']}); commit {meta['commit']}; "
        f"{meta['date']}; load average at the start {meta['loadavg_start']}",
        "",
        f"Sentences: {', '.join(meta['sentences'])}; each cut at its last word, then "
        f"{TRAIL_S} s of room noise. One session: {meta.get('rounds', 1)} round(s), each with "
        f"other room noise and order. `old`: {CONFIGS['old']}; `new`: the defaults, its "
        "sessions asking for turn events.",
        "",
        "*End of speech -> final*: at the ends of sentences (the turn's end), and at every "
        "clip's end (two LJ clips stop at a comma, mid-sentence, where a turn rule that "
        "hears the voice holds the turn).",
        "",
        "| config | sessions | utterances | end of speech -> final p50 / p95 ms, sentence "
        "ends | all ends | onset -> first partial p50 / p95 ms | first partial heard p50 ms "
        "| gap between partials p50 / p95 ms | finals missing | WER | load 1m |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for config, steps in data["results"].items():
        for sessions, s in steps.items():
            eos, first = s["eos_to_final_ms"], s["onset_to_first_partial_ms"]
            ends = s.get("eos_to_final_sentence_ms") or spread([])
            gap = s["partial_gap_ms"]
            lines.append(
                f"| {config} | {sessions} | {s['utterances']} | {_ms(ends, 'p50')} / "
                f"{_ms(ends, 'p95')} | {_ms(eos, 'p50')} / "
                f"{_ms(eos, 'p95')} | {_ms(first, 'p50')} / {_ms(first, 'p95')} "
                f"| {_ms(s['first_partial_heard_ms'], 'p50')} | {_ms(gap, 'p50')} / "
                f"{_ms(gap, 'p95')} | {s['finals_missing']} | {s['wer_mean']:.3f} "
                f"| {s['loadavg_1m']} |"
            )
    lines += gaps_report(data["results"])
    lines += turn_events_report(data["results"])
    judged = {"new": data["targets"], **data.get("targets_other", {})}
    for config, rows in judged.items():
        if not any(row["value"] is not None for row in rows):
            continue
        lines += [
            "",
            f"## Targets (issue 16, `{config}`)",
            "",
            "| target | value | met |",
            "| --- | ---: | --- |",
        ]
        for row in rows:
            met = {True: "yes", False: "no", None: "not measured"}[row["met"]]
            value = "-" if row["value"] is None else f"{row['value']:.0f}"
            lines.append(f"| {row['target']} | {value} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,16", help="session counts, comma-separated")
    parser.add_argument("--configs", default="old,new,turn", help="of: " + ", ".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="two short sentences, one session")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"one session this many times, each with other room noise ({ROUNDS}; --quick: 1)",
    )
    parser.add_argument("--baseline", type=Path, help="a checkout to measure beside this one")
    parser.add_argument("--json", type=Path, help="the JSON's path (default beside the .md)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="prefix of .md and .json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    counts = [1] if args.quick else [int(n) for n in args.sessions.split(",")]
    chosen = sentences(QUICK_SENTENCES if args.quick else SENTENCES)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    results, utterances = asyncio.run(run_all(configs, counts, chosen, args.baseline, rounds))
    meta = machine_info() | {
        "loadavg_start": loadavg_start,
        "sentences": [s.name for s in chosen],
        "rounds": rounds,
        "configs": {c: CONFIGS[c] for c in configs},
        "start_options": {c: START_OPTIONS[c] for c in configs if c in START_OPTIONS},
        "baseline": str(args.baseline) if args.baseline else None,
    }
    data = {
        "meta": meta,
        "targets": judge(results),
        # Turn mode against the same targets: the candidate for the default.
        "targets_other": {"turn": judge(results, "turn")},
        "results": results,
        "utterances": [asdict(u) for u in utterances],
    }
    write_results(args.out, data, report(data), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluation outputs: markdown, JSON and the PNG plot."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from stt_worker.evaluation.results import EOS_INFERENCE_FACTOR, EvalReport, Spread, Summary
from stt_worker.evaluation.runner import _wall_ms


def render_markdown(report: EvalReport) -> str:
    """The report as markdown: targets, per clip, overall, per final, transcripts."""
    sections = (
        _heading(report),
        _targets(report),
        _per_clip(report),
        _overall(report.summary),
        _finals(report),
        _errors(report),
        _transcripts(report),
    )
    return "\n".join(line for section in sections for line in section) + "\n"


def _heading(report: EvalReport) -> list[str]:
    """The command, the machine and the setup, and a warning when not run at real time."""
    meta, setup = report.meta, report.setup
    lines = [
        "# Streaming evaluation",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['nproc']} CPUs, {meta['cpu']}; {meta['date']}; "
        f"Python {meta['python']}; commit {meta['commit']}",
        "",
        "Setup: " + ", ".join(f"{k}={v}" for k, v in setup.items()),
        "",
    ]
    if setup["speed"] != 1:
        lines += [
            f"**Speed {setup['speed']:g}: audio was not sent at real time, so latencies "
            "include queueing behind earlier audio and are not meaningful.**",
            "",
        ]
    return lines


def _targets(report: EvalReport) -> list[str]:
    lines = [
        "## Targets",
        "",
        "| metric | value | target | verdict | detail |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for check in report.targets:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[check.passed]
        lines.append(
            f"| {check.name} | {check.value} | {check.target} | {verdict} | {check.detail} |"
        )
    return lines


def _per_clip(report: EvalReport) -> list[str]:
    lines = [
        "",
        "## Per clip",
        "",
        "Latency = receive time of the final minus the send time of the chunk holding "
        "(*last chunk*) the final's `audio_end_s`, endpoint silence included, or (*end of "
        "speech*) its last voiced frame, found with the worker's VAD (webrtcvad) run over the "
        "clip. *msg inf*: the message's `inference_ms`; *bare inf*: `transcribe_blocking` on "
        "the same slice, same engine, after the session. *changed*: words shown in partials "
        "that the next hypothesis changed / words shown (words edited by alignment). Times in ms.",
        "",
        "| clip | dur s | finals | partials | stream WER | offline WER | offline inf "
        "| last-chunk lat | end-of-speech lat | msg inf | bare inf | changed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: |",
    ]
    for r in report.clips:
        lines.append(
            f"| {r.name} | {r.duration_s:.2f} | {len(r.finals)} | {len(r.partials)} "
            f"| {r.stream_wer:.3f} | {r.offline_wer:.3f} | {r.offline_inference_ms:.0f} "
            f"| {_each(f.latency_last_chunk_ms for f in r.finals)} "
            f"| {_each(f.latency_speech_end_ms for f in r.finals)} "
            f"| {_each(f.inference_ms for f in r.finals)} "
            f"| {_each(f.bare_inference_ms for f in r.finals)} "
            f"| {r.stability.words_changed}/{r.stability.words_shown} "
            f"({r.stability.words_edited}) |"
        )
    return lines


def _overall(summary: Summary) -> list[str]:
    return [
        "",
        "## Overall",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| clips / audio | {summary.clips} / {summary.audio_s:.1f} s |",
        f"| finals (by ending) | {summary.finals} {summary.finals_by_ending} |",
        f"| streaming WER (corpus) | {summary.stream_wer:.4f} |",
        f"| offline WER (corpus) | {summary.offline_wer:.4f} |",
        "| last-chunk -> final latency p50 / p95 / mean / max "
        f"| {_spread(summary.latency_last_chunk_ms)} |",
        "| end-of-speech -> final latency p50 / p95 / mean / max "
        f"| {_spread(summary.latency_speech_end_ms)} |",
        "| (end-of-speech latency - silence waited) / bare inference p50 / p95 / mean / max "
        f"| {_spread(summary.eos_over_bare, '.2f')} |",
        f"| finals within endpoint silence + {EOS_INFERENCE_FACTOR} x bare inference "
        f"| {summary.finals_within_eos_bound} / {summary.finals} |",
        f"| inference_ms in messages (finals) p50 / p95 / mean / max "
        f"| {_spread(summary.inference_ms)} |",
        f"| bare inference, same slices | {_spread(summary.bare_inference_ms)} |",
        "| pipeline overhead: last-chunk latency - message inference "
        f"| {_spread(summary.pipeline_overhead_ms)} |",
        f"| offline inference per clip | {_spread(summary.offline_inference_ms)} |",
        f"| finals whose text equals the bare decode | {summary.finals_matching_bare_text}"
        f" / {summary.finals} |",
        f"| partials: count; latency p50 / p95 / mean / max | {summary.partials}; "
        f"{_spread(summary.partial_latency_ms)} |",
        "| partial interval within an utterance p50 / p95 / mean / max "
        f"| {_spread(summary.partial_interval_ms)} |",
        "| partial words changed / shown; edited (aligned); partials revised | "
        f"{summary.stability.words_changed} / {summary.stability.words_shown}; "
        f"{summary.stability.words_edited}; "
        f"{summary.stability.revised_partials} / {summary.stability.partials} |",
        f"| sessions without session_closed | {summary.sessions_not_closed or 'none'} |",
        f"| clips without a final | {summary.clips_without_final or 'none'} |",
    ]


def _finals(report: EvalReport) -> list[str]:
    lines = [
        "",
        "## Finals",
        "",
        "| clip | utt | audio s | ended by | trailing sil s | last-chunk lat | eos lat "
        "| msg inf | bare inf | eos bound | (eos-sil)/bare | text |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report.clips:
        for f in r.finals:
            same = "" if f.text == f.bare_text else f" (bare: {f.bare_text!r})"
            lines.append(
                f"| {r.name} | {f.utterance_id} | {f.audio_start_s:.2f}-{f.audio_end_s:.2f} "
                f"| {f.ended_by} | {f.trailing_silence_s:.2f} | {f.latency_last_chunk_ms:.0f} "
                f"| {f.latency_speech_end_ms:.0f} | {f.inference_ms:.0f} "
                f"| {f.bare_inference_ms:.0f} | {f.eos_bound_ms:.0f} | {f.eos_over_bare:.2f} "
                f"| {f.text!r}{same} |"
            )
    return lines


def _errors(report: EvalReport) -> list[str]:
    """The section of errors, left out when there were none."""
    errors = [(r.name, e) for r in report.clips for e in r.errors]
    if not errors:
        return []
    return ["", "## Errors", ""] + [f"- {name}: {e}" for name, e in errors]


def _transcripts(report: EvalReport) -> list[str]:
    lines = ["", "## Transcripts", ""]
    for r in report.clips:
        lines += [
            f"- **{r.name}**",
            f"  - ref: {r.reference}",
            f"  - stream: {r.stream_text}",
            f"  - offline: {r.offline_text}",
        ]
    return lines


def report_json(report: EvalReport) -> dict[str, Any]:
    """The report as plain JSON data (every measurement, per final and per partial)."""
    return asdict(report)


def write_outputs(report: EvalReport, out: Path, *, plot: bool = True) -> list[Path]:
    """Write ``<out>.md``, ``<out>.json`` and (with `plot`) ``<out>.png``; their paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    markdown, data = Path(f"{out}.md"), Path(f"{out}.json")
    markdown.write_text(render_markdown(report))
    # NaN/inf (e.g. a 0 ms bare inference) are not JSON: write null instead.
    data.write_text(json.dumps(_finite(report_json(report)), indent=2) + "\n")
    written = [markdown, data]
    if plot:
        written.append(write_plot(report, Path(f"{out}.png")))
    return written


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def write_plot(report: EvalReport, path: Path) -> Path:
    """Per clip: final latency (p50, max) beside bare inference, and WER streaming vs offline."""
    # A bare Figure renders with Agg on savefig: no pyplot, no global backend, no display.
    from matplotlib.figure import Figure

    clips = report.clips
    names = [Path(r.name).stem for r in clips]
    x = np.arange(len(clips))
    width = 0.2

    def per_clip(values: Iterable[Sequence[float]], reduce: Any) -> list[float]:
        return [float(reduce(v)) if v else 0.0 for v in values]

    eos = [[f.latency_speech_end_ms for f in r.finals] for r in clips]
    last = [[f.latency_last_chunk_ms for f in r.finals] for r in clips]
    bare = [[f.bare_inference_ms for f in r.finals] for r in clips]

    figure = Figure(figsize=(max(8.0, 0.9 * len(clips) + 3), 8), layout="constrained")
    latency_axes, wer_axes = figure.subplots(2, 1)
    bars = [
        ("end of speech -> final, p50", per_clip(eos, statistics.median)),
        ("end of speech -> final, max", per_clip(eos, max)),
        ("last chunk -> final, p50", per_clip(last, statistics.median)),
        ("bare inference, p50", per_clip(bare, statistics.median)),
    ]
    for index, (label, values) in enumerate(bars):
        latency_axes.bar(x + (index - 1.5) * width, values, width, label=label)
    speed = report.setup["speed"]
    latency_axes.axhline(
        _wall_ms(report.setup["endpoint_silence_ms"], speed),
        color="grey",
        linestyle="--",
        linewidth=1,
        label="endpoint silence",
    )
    pace = "real time" if speed == 1 else f"speed {speed:g}: latency not meaningful"
    latency_axes.set_title(f"Final latency per clip ({pace})")
    latency_axes.set_ylabel("ms")
    latency_axes.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    latency_axes.legend(fontsize=8)

    wer_axes.bar(x - width / 2, [r.stream_wer for r in clips], width, label="streaming finals")
    wer_axes.bar(x + width / 2, [r.offline_wer for r in clips], width, label="offline, whole clip")
    summary = report.summary
    wer_axes.set_title(
        f"WER per clip (corpus: streaming {summary.stream_wer:.3f}, "
        f"offline {summary.offline_wer:.3f})"
    )
    wer_axes.set_ylabel("WER")
    highest = max((max(r.stream_wer, r.offline_wer) for r in clips), default=0.0)
    wer_axes.set_ylim(0, max(0.05, 1.15 * highest))  # an all-zero run still shows an axis
    wer_axes.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    wer_axes.legend(fontsize=8)
    figure.savefig(path, dpi=100)
    return path


def _each(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values) or "-"


def _spread(spread: Spread, number: str = ".0f") -> str:
    if not spread.n:
        return "-"
    values = (spread.p50, spread.p95, spread.mean, spread.max)
    return " / ".join(format(v, number) for v in values if v is not None)

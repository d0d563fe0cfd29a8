"""The capacity benchmark's outputs: targets, markdown, JSON and the two plots."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from bench.capacity import (
    CAPACITY_RATIO_TARGET,
    EOS_INFERENCE_FACTOR,
    IDLE_SESSION_BYTES_TARGET,
    SESSIONS_PER_CORE_TARGET,
    Step,
)


def _step_dict(step: Step | None, finals: bool) -> dict[str, Any] | None:
    if step is None:
        return None
    data = dataclasses.asdict(step)
    if not finals:
        data.pop("final_list")
    return data


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """Plain data; per-final records only for the two latency steps."""
    ours, baseline = result["ours"], result["baseline"]
    return {
        "meta": result["meta"],
        "targets": targets(result),
        "ours": {
            "capacity": ours["capacity"],
            "throughput": ours["throughput"],
            "setup": ours["setup"],
            "n1": _step_dict(ours["n1"], True),
            "at75": _step_dict(ours["at75"], True),
            "steps": [_step_dict(s, False) for s in ours["steps"]],
        },
        "baseline": {
            "capacity": baseline["capacity"],
            "throughput": baseline["throughput"],
            "setup": baseline["setup"],
            "steps": [_step_dict(s, False) for s in baseline["steps"]],
        },
        "silent": result["silent"],
        "engines": result["engines"],
    }


def _silent_at(result: dict[str, Any], most: bool = True) -> dict[str, Any] | None:
    steps = result["silent"]["steps"]
    return (steps[-1] if most else steps[0]) if steps else None


def _largest_sustained(steps: list[Step]) -> int:
    return max((s.sessions for s in steps if s.sustained), default=0)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    ours, baseline = result["ours"]["capacity"], result["baseline"]["capacity"]
    through = result["ours"]["throughput"], result["baseline"]["throughput"]
    largest = [_largest_sustained(result[k]["steps"]) for k in ("ours", "baseline")]
    also = (
        f"; largest N sustained in any step: {largest[0]} vs {largest[1]}"
        f"; real-time throughput, latency aside: {through[0]} vs {through[1]}"
    )
    if baseline:
        ratio = ours / baseline
        measured = f"{ratio:.1f}x ({ours} vs {baseline} sessions{also})"
        capacity = {"measured": measured, "met": ratio >= CAPACITY_RATIO_TARGET}
    else:
        measured = f"{ours} vs 0 sessions (the baseline sustains none{also})"
        capacity = {"measured": measured, "met": ours > 0}
    rows = [{"target": f"capacity >= {CAPACITY_RATIO_TARGET:g} x naive baseline", **capacity}]
    n1 = result["ours"]["n1"]
    over = n1.overhead.get("over_bare", {}) if n1 else {}
    p95 = over.get("p95")
    rows.append(
        {
            "target": "N=1: p95 (end of speech -> final - silence) / bare "
            f"<= {EOS_INFERENCE_FACTOR}",
            "measured": "-"
            if p95 is None
            else f"{p95:.2f} ({n1.overhead['within_bound']} / {n1.overhead['finals']} finals "
            f"within silence + {EOS_INFERENCE_FACTOR} x bare)",
            "met": None if p95 is None else p95 <= EOS_INFERENCE_FACTOR,
        }
    )
    silent = _silent_at(result)
    if silent is not None:
        per_core = silent["sessions_per_core"]
        rows.append(
            {
                "target": f"silent real-time sessions per core >= {SESSIONS_PER_CORE_TARGET}",
                "measured": f"{per_core} (at {silent['sessions']} sessions)",
                "met": per_core >= SESSIONS_PER_CORE_TARGET,
            }
        )
        per_session = silent["rss_growth_bytes_per_session"]
        rows.append(
            {
                "target": f"memory per idle session < {IDLE_SESSION_BYTES_TARGET // 1024} KB",
                "measured": f"{per_session / 1024:.1f} KB (at {silent['sessions']} sessions)",
                "met": per_session < IDLE_SESSION_BYTES_TARGET,
            }
        )
    return rows


def _ms(spread: dict[str, Any], key: str) -> str:
    value = spread.get(key)
    if spread.get("n", 0) and value is None:
        return "∞"
    return "-" if value is None else f"{value:.0f}"


def _verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[met]


def render_markdown(result: dict[str, Any], command: str, plots: list[str]) -> str:
    meta = result["meta"]
    ours, baseline = result["ours"], result["baseline"]
    lines = [
        "# Capacity: live sessions on one machine, ours against the naive baseline",
        "",
        f"Command: `{command}`; {meta['wall_s']:.0f} s.",
        "",
        f"Machine: {meta['nproc']} CPUs, {meta['cpu']}; {meta['date']}; Python "
        f"{meta['python']}; commit {meta['commit']}. 1-minute load average "
        f"{meta['loadavg_start'][0]} at start, {meta['loadavg_end'][0]} at end (per step "
        "below: other work on the machine inflates every time).",
        "",
        f"Load: real speech ({len(meta['clips'])} shared clips up to "
        f"{meta['plan']['clip_max_s']:g} s, looped per session "
        "in its own order with 1-3 s pauses of room noise), 20 ms `audio_b64` chunks at real "
        "time, starts staggered over the ramp, one publisher connection; each worker in its own "
        "process on the same nats-server.",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "| --- | --- | --- |",
        *(f"| {t['target']} | {t['measured']} | {_verdict(t['met'])} |" for t in targets(result)),
        "",
        "## Capacity",
        "",
        f"Ours: `stt-streaming serve` defaults ({_describe(ours['setup'], True)}). Sustained: "
        f"p95 end of speech -> final <= endpoint silence + 1 s = {_bound(ours)} ms, over the "
        "step and over its last third, and it *keeps up*: every session closed after `end` "
        "and the median latency of the step's last third at most 1 s above its first "
        "third's (no growing backlog).",
        "",
        "Baseline (`bench/naive_worker.py`, the seed's design): "
        f"{_describe(baseline['setup'], False)}; sessions start at random phases over one "
        "buffer's length. It has no endpoint, so its bound is p95 "
        "buffer full -> result <= 1000 ms (the same "
        "+1 s after its trigger) and every full buffer's result must arrive; *end of speech* "
        "for it is the last voiced frame of the buffer.",
        "",
        "| system | N | sustained | keeps up (latency growth ms) | p95 judged ms (bound) | "
        "last third p95 | end of speech -> final p50 / p95 / p99 ms | worker CPU cores | "
        "RSS MB | final queue max | load avg before / max |",
        "| --- | ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for step in [*ours["steps"], *baseline["steps"]]:
        lines.append(
            f"| {step.system} | {step.sessions} | {'yes' if step.sustained else 'no: ' + step.why}"
            f" | {'yes' if step.keeps_up else 'no'} ({step.growth_ms:.0f}) "
            f"| {_ms(step.latency_ms, 'p95')} ({step.bound_ms:.0f}) "
            f"| {_ms(step.latency_last_third_ms, 'p95')} "
            f"| {_ms(step.eos_ms, 'p50')} / {_ms(step.eos_ms, 'p95')} / {_ms(step.eos_ms, 'p99')} "
            f"| {_num(step.worker_cores, 2)} | {_num(step.worker_rss_mb, 0)} "
            f"| {_num(step.queue_depth_final_max, 0)} "
            f"| {step.loadavg_before} / {step.loadavg_max} |"
        )
    ratio = (
        f"{ours['capacity'] / baseline['capacity']:.1f}x"
        if baseline["capacity"]
        else "- (baseline 0)"
    )
    lines += [
        "",
        f"**Capacity: ours {ours['capacity']} sessions, baseline {baseline['capacity']}: "
        f"{ratio}.** Real-time throughput (every result, latency not climbing more than 1 s "
        f"over the step, whatever its level): ours {ours['throughput']}, baseline "
        f"{baseline['throughput']} (the largest N tried that kept up).",
        "",
        "## Latency at N = 1 and at 75% of capacity",
        "",
        "Bare: the same final's audio decoded alone by the same engine settings in the bench "
        "process after the step (worker idle). Worker's inference: the final's own "
        "`inference_ms`. Pipeline: last chunk -> final minus that (queue wait, NATS both "
        "ways, publishing). Overhead: (end of speech -> final - silence waited) / bare.",
        "",
        "| N | finals | end of speech -> final p50 / p95 / p99 ms | bare p50 / p95 ms | "
        "worker's inference p50 / p95 ms | pipeline p50 / p95 ms | overhead p50 / p95 / p99 | "
        "within silence + 1.15 x bare | partial latency p50 / p95 ms | partial interval "
        "p50 / p95 / p99 ms |",
        "| ---: | ---: | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for step in (ours["n1"], ours["at75"]):
        if step is None or (step is ours["at75"] and step is ours["n1"]):
            continue
        o = step.overhead
        over = o.get("over_bare", {})
        lines.append(
            f"| {step.sessions} | {o.get('finals', 0)} "
            f"| {_ms(o['eos_ms'], 'p50')} / {_ms(o['eos_ms'], 'p95')} / {_ms(o['eos_ms'], 'p99')}"
            f" | {_ms(o['bare_ms'], 'p50')} / {_ms(o['bare_ms'], 'p95')} "
            f"| {_ms(o['worker_inference_ms'], 'p50')} / {_ms(o['worker_inference_ms'], 'p95')} "
            f"| {_ms(o['pipeline_ms'], 'p50')} / {_ms(o['pipeline_ms'], 'p95')} "
            f"| {_num(over.get('p50'), 2)} / {_num(over.get('p95'), 2)} / "
            f"{_num(over.get('p99'), 2)} | {o.get('within_bound')} / {o.get('finals')} "
            f"| {_ms(step.partial_latency_ms, 'p50')} / {_ms(step.partial_latency_ms, 'p95')} "
            f"| {_ms(step.partial_interval_ms, 'p50')} / {_ms(step.partial_interval_ms, 'p95')} / "
            f"{_ms(step.partial_interval_ms, 'p99')} |"
        )
    silent = result["silent"]
    lines += [
        "",
        "## Non-inference path: silent real-time sessions",
        "",
        "Sessions streaming room noise (decode, base64, VAD, session state; nothing reaches "
        "the model), on the fresh worker before the speech steps. Worker idle: "
        f"{silent['idle_cores']} cores. Per session: "
        "(worker cores - idle cores) / N; memory: RSS growth / N.",
        "",
        "| sessions | real time | worker CPU cores | sessions per core | chunks/s received "
        "(sent) | chunks/s per core | RSS MB | RSS growth per session | generator pace, late "
        "ticks | generator / nats-server cores | load avg before / max |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for row in silent["steps"]:
        gen, others = row["generator"], row.get("other_cores", {})
        lines.append(
            f"| {row['sessions']} | {'yes' if row['real_time'] else '**no**'} "
            f"| {row['worker_cores']:.3f} | {row['sessions_per_core']} "
            f"| {row['chunks_per_s']} ({row['chunks_expected_per_s']}) "
            f"| {row['chunks_per_s_per_core']} | {row['rss_mb']} "
            f"| {row['rss_growth_bytes_per_session'] / 1024:.1f} KB "
            f"| {gen.get('pace')}, {gen.get('ticks_late_over_20ms')} / {gen.get('ticks')} "
            f"| {others.get('generator', '-')} / {others.get('nats-server', '-')} "
            f"| {row['loadavg_before']} / {row['loadavg_max']} |"
        )
    lines += [
        "",
        "*Sessions per core* counts the sessions' worth of audio the worker actually took in "
        "(chunks/s / 50): where a step is not real time, it carried fewer than it was sent.",
    ]
    if result["engines"]:
        lines += [
            "",
            "## Engines on the same clips (`bench/engines.py`, one decode at a time)",
            "",
            "| engine | model | device | mean inference s | RTF | WER |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        for row in result["engines"]:
            if "skipped" in row:
                lines.append(f"| {row['engine']} | skipped: {row['skipped']} | | | | |")
                continue
            lines.append(
                f"| {row['engine']} | {row['model']} | {row['device']} "
                f"| {row['mean_inference_s']:.3f} | {row['rtf']:.3f} | {_num(row['wer'], 3)} |"
            )
    lines += ["", *(f"![{name}]({name})" for name in plots)]
    return "\n".join(lines) + "\n"


def _bound(system: dict[str, Any]) -> str:
    steps = system["steps"]
    return f"{steps[0].bound_ms:.0f}" if steps else "-"


def _describe(setup: dict[str, Any], ours: bool) -> str:
    if ours:
        return (
            f"{setup['model']}, endpoint {setup['endpoint_silence_ms']} ms, partials every "
            f"{setup['partial_interval_ms']} ms, {setup['max_concurrent_inferences']} decodes at "
            f"once, window utterance + {setup['window_pad_s']:g} s, beam {setup['beam_size']}"
        )
    seconds = setup["buffer_size_bytes"] / 32000
    return (
        f"{setup['model']}, buffers of {setup['buffer_size_bytes']} bytes ({seconds:g} s) or "
        f"{setup['chunk_timeout_s']:g} s without a chunk, 30 s window, "
        f"{setup['max_concurrent_inferences']} decode at a time, beam {setup['beam_size']}"
    )


def _num(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def write_plots(result: dict[str, Any], prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours, baseline = result["ours"]["steps"], result["baseline"]["steps"]
    paths = [Path(f"{prefix}_latency.png"), Path(f"{prefix}_cpu.png")]

    def points(steps: list[Step], pick: Any) -> tuple[list[int], list[float]]:
        pairs = sorted((s.sessions, pick(s)) for s in steps if pick(s) is not None)
        return [p[0] for p in pairs], [p[1] for p in pairs]

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for steps, label, style in ((ours, "ours", "o-"), (baseline, "baseline", "s--")):
        for key, alpha in (("p50", 0.5), ("p95", 1.0)):
            x, y = points(steps, lambda s, key=key: s.latency_ms.get(key))
            axis.plot(x, y, style, alpha=alpha, label=f"{label} {key}")
    if ours:
        axis.axhline(ours[0].bound_ms, color="C0", lw=0.8, ls=":", label="ours: bound")
    if baseline:
        axis.axhline(baseline[0].bound_ms, color="C1", lw=0.8, ls=":", label="baseline: bound")
    axis.set_xlabel("concurrent speech sessions (N)")
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.set_title(
        "Latency vs N (ours: end of speech -> final; baseline: buffer full -> result)",
        fontsize=9,
    )
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(paths[0], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for steps, label, style in ((ours, "ours", "o-"), (baseline, "baseline", "s--")):
        x, y = points(steps, lambda s: s.worker_cores)
        axes[0].plot(x, y, style, label=label)
    axes[0].axhline(result["meta"]["nproc"], color="grey", lw=0.8, ls=":", label="cores")
    axes[0].set_xlabel("concurrent speech sessions (N)")
    axes[0].set_ylabel("worker CPU (cores)")
    axes[0].set_title("Speech sessions")
    axes[0].legend(fontsize=8)
    silent = result["silent"]["steps"]
    axes[1].plot(
        [r["sessions"] for r in silent], [r["worker_cores"] for r in silent], "o-", label="ours"
    )
    axes[1].set_xscale("log")
    axes[1].set_xlabel("silent real-time sessions")
    axes[1].set_ylabel("worker CPU (cores)")
    axes[1].set_title("Non-inference path")
    figure.tight_layout()
    figure.savefig(paths[1], dpi=110)
    plt.close(figure)
    return paths


def write_outputs(result: dict[str, Any], prefix: Path, command: str) -> Path:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    plots = write_plots(result, prefix)
    markdown = render_markdown(result, command, [p.name for p in plots])
    Path(f"{prefix}.md").write_text(markdown)
    Path(f"{prefix}.json").write_text(json.dumps(to_json(result), indent=1) + "\n")
    return Path(f"{prefix}.md")


def result_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """A run's result back from its JSON, to render it again without measuring."""

    def step(raw: dict[str, Any] | None) -> Step | None:
        if raw is None:
            return None
        return Step(**{k: v for k, v in raw.items() if k != "final_list"})

    systems = {}
    for name in ("ours", "baseline"):
        raw = data[name]
        systems[name] = {
            **raw,
            "steps": [step(s) for s in raw["steps"]],
            "n1": step(raw.get("n1")),
            "at75": step(raw.get("at75")),
        }
    return {**data, **systems}


def main(argv: list[str] | None = None) -> int:
    """Render ``<prefix>.md`` and the plots again from ``<prefix>.json``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("prefix", type=Path, nargs="?", default=Path("bench/results/capacity"))
    args = parser.parse_args(argv)
    data = json.loads(Path(f"{args.prefix}.json").read_text())
    result = result_from_json(data)
    plots = write_plots(result, args.prefix)
    command = data["meta"].get("command", ".venv/bin/python -m bench.capacity")
    Path(f"{args.prefix}.md").write_text(render_markdown(result, command, [p.name for p in plots]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

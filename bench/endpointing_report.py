"""bench/results/endpointing.{json,md,png}: the cut-off curve's tables and figure."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from bench.endpointing_rules import (
    ADAPTIVE_FRAMES,
    CHECK_FRAMES,
    CHECK_POINTS,
    CURVE_MAX_PAUSE_MS,
    FALLBACK_MS,
    FRAME_MS,
    TURN_POINTS,
    meets_target,
    operating_point,
)

CUT_LEVELS = (0.05, 0.10)


def summarise(scored: list[dict]) -> dict:
    """Per family: its operating points, and its points meeting the target."""
    families: dict[str, list[dict]] = defaultdict(list)
    for point in scored:
        families[point["family"]].append(point)
    summary = {}
    for family, points in families.items():
        summary[family] = {
            f"at_{round(level * 100)}pct_cut": operating_point(points, level)
            for level in CUT_LEVELS
        }
        meeting = [p for p in points if meets_target(p)]
        summary[family]["meets_target"] = [p["label"] for p in meeting]
        summary[family]["best_meeting_target"] = min(
            meeting, key=lambda p: p["latency_p50_ms"], default=None
        )
    return summary


def write_report(data: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data["summary"] = summarise(data["points"])
    data["tune_summary"] = summarise(data["tune_points"])
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    plot(data, out.with_suffix(".png"))
    page = out.with_suffix(".md")
    kept = _analysis(page.read_text()) if page.exists() else ANALYSIS
    page.write_text(markdown(data, out.with_suffix(".png").name).replace(ANALYSIS, kept))


ANALYSIS = "<!-- analysis -->\n<!-- /analysis -->"


def _analysis(page: str) -> str:
    """The hand-written analysis of an earlier run's page, kept across reruns."""
    start, end = page.find("<!-- analysis -->"), page.find("<!-- /analysis -->")
    if start < 0 or end < start:
        return ANALYSIS
    return page[start : end + len("<!-- /analysis -->")]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _cells(p: dict, lengths: list[int]) -> str:
    """A point's scores as table cells, after the columns that name it."""
    rates = " | ".join(_fmt(p["cut_rate_by_pause_ms"][str(n)]) for n in lengths)
    whole = f"{len(p['whole_sentences_cut'])}/{p['whole_sentences']}"
    target = "yes" if meets_target(p) else "no"
    return (
        f"| {_fmt(p['cut_rate'])} | {rates} | {whole} "
        f"| {p['latency_p50_ms']:.0f} | {p['latency_p95_ms']:.0f} "
        f"| {p['latency_p50_ms_all_ends']:.0f} | {target} |"
    )


def _header(lead: list[str], lengths: list[int]) -> list[str]:
    scores = [
        f"cut (inserted, <= {CURVE_MAX_PAUSE_MS} ms)",
        *(f"cut {n} ms" for n in lengths),
        "whole sentences cut",
        "p50 ms",
        "p95 ms",
        "p50 ms, all ends",
    ]
    aligns = ["---"] * len(lead) + ["---:"] * len(scores) + ["---"]
    return [f"| {' | '.join([*lead, *scores, 'target met'])} |", f"| {' | '.join(aligns)} |"]


def _table(points: list[dict], lengths: list[int]) -> list[str]:
    rows = [f"| {p['family']} | {p['label']} " + _cells(p, lengths) for p in points]
    return [*_header(["rule", "threshold"], lengths), *rows]


def _operating_points(summary: dict) -> list[str]:
    ops = ["| rule | latency at 5% cut-offs (p50 / p95 ms) | at 10% | best meeting the target |"]
    ops.append("| --- | --- | --- | --- |")
    for family, s in summary.items():
        cells = []
        for key in ("at_5pct_cut", "at_10pct_cut", "best_meeting_target"):
            p = s[key]
            cells.append(
                "none"
                if p is None
                else f"{p['latency_p50_ms']:.0f} / {p['latency_p95_ms']:.0f} ({p['label']})"
            )
        ops.append(f"| {family} | " + " | ".join(cells) + " |")
    return ops


def _set_line(data: dict) -> str:
    lengths = ", ".join(map(str, data["pause_lengths_ms"]))
    parts = []
    for half, counts in data["counts"].items():
        names = sorted(name for name, h in data["halves"].items() if h == half)
        parts.append(
            f"*{half}*: {counts['sentences']} sentences ({counts['complete_ends']} ending a "
            f"sentence), {counts['inserted']} inserted pauses, {counts['natural']} pauses of "
            f"their own long enough for a rule to act on ({', '.join(names)})"
        )
    return (
        f"Set: pauses of {lengths} ms of room tone inserted at every usable word gap "
        "(`bench.pauses`), the sentences dealt into two halves by `bench.pause_halves`; "
        + "; ".join(parts)
        + "."
    )


def _grid(data: dict, lengths: list[int]) -> list[str]:
    grid = data["turn_grid"]
    axes = "; ".join(f"`{k}` {', '.join(map(str, v))}" for k, v in grid["grid"].items())
    rows = [("shipped defaults", grid["shipped"])]
    for key, name in (
        ("tuned", "tuned on the tuning half"),
        ("swapped", "tuned on the held-out half"),
    ):
        if grid[key] is not None:
            rows.append((name, grid[key]))
    table = _header(["point", "half"], lengths)
    for name, entry in rows:
        for half in ("held-out", "tune"):
            table.append(f"| {name} | {half} " + _cells(entry[half], lengths))
    neighbours = _header(["moved setting", "value", "half"], lengths)
    for entry in grid["neighbours"]:
        moved, value = entry["moved"], entry["settings"][entry["moved"]]
        for half in ("held-out", "tune"):
            neighbours.append(f"| `{moved}` | {value} | {half} " + _cells(entry[half], lengths))
    picked = {
        key: "none met the target" if grid[key] is None else f"`{grid[key]['settings']}`"
        for key in ("tuned", "swapped")
    }
    return [
        "## Turn mode's settings: tuned on one half, judged on the other",
        "",
        f"All {grid['combinations']} combinations of {axes} (`hold` -1: equal to `over`), "
        "replayed on the tuning half; the tuned point meets the target there with the lowest "
        f"mean latency over its sentence ends (then the fewest cut-offs): {picked['tuned']}. "
        "The check the other way round, tuned on the held-out half and judged on the tuning "
        f"one: {picked['swapped']}.",
        "",
        *table,
        "",
        "One setting moved at a time from the defaults:",
        "",
        *neighbours,
    ]


def markdown(data: dict, png: str) -> str:
    lengths = data["pause_lengths_ms"]
    meta = data["meta"]
    lines = [
        "# End of turn: cut-offs against latency",
        "",
        ANALYSIS,
        "",
        f"Command: `{meta['command']}`; {meta['date']}, commit {meta['commit']}, "
        f"{meta['nproc']} CPUs ({meta['cpu']}); {meta['engine']} {meta['model']}; "
        f"VAD {meta['vad']}; {meta['seconds']} s (cached features are reused).",
        "",
        _set_line(data),
        "",
        "## Operating points (held-out half)",
        "",
        f"Cut-offs here: the share of inserted pauses up to {CURVE_MAX_PAUSE_MS} ms where the "
        "turn is ended (a longer one outlasts most rules' longest wait); a "
        "point qualifies only if no sentence without an inserted pause is cut. Target "
        "(issue 16): <= 10% of 400 ms and <= 20% of 700 ms pauses cut, none in a sentence "
        "without one.",
        "",
        *_operating_points(data["summary"]),
        "",
        f"![cut-offs against latency, held-out half]({png})",
        "",
        "On the tuning half:",
        "",
        *_operating_points(data["tune_summary"]),
        "",
        *_grid(data, lengths),
        "",
        "## Every point (held-out half)",
        "",
        "Latency: end of the last word (energy) -> the final's text ready, on the sentences "
        "whose text ends a sentence (*all ends*: every sentence's end, LJ utterances that stop "
        "at a comma included). Every point on the tuning half is in the JSON (`tune_points`).",
        "",
        *_table(data["shipped"] + data["points"], lengths),
        "",
        "## How the rules are replayed",
        "",
        f"- Silence runs from the worker's VAD over each clip, in {FRAME_MS} ms frames, from "
        "its first silent frame (which may fall before or after the word's energy end).",
        f"- Turn check: the engine decodes the audio up to "
        f"{', '.join(str(p * FRAME_MS) for p in CHECK_POINTS)} ms into the silence run with "
        f"the turn check's options (turn mode's check and recheck, the adaptive mode's at "
        f"{ADAPTIVE_FRAMES * FRAME_MS} ms); its measured time counts. Its text is the final "
        "when a rule ends the turn on it; otherwise the final is decoded after the decision "
        f"(its time taken as the {CHECK_FRAMES * FRAME_MS} ms check's).",
        f"- Smart Turn: probability at {', '.join(str(p * FRAME_MS) for p in TURN_POINTS)} ms "
        "of silence, with its measured time per call; in turn mode it runs first and the "
        "decode after it (as `TurnCheckEngine` runs them), at the check and at each recheck.",
        f"- Alone, the decoder's end probability (checked at {CHECK_FRAMES * FRAME_MS} ms) and "
        f"Smart Turn (at each point) end the turn at {FALLBACK_MS} ms of silence when they "
        "never say *over*. Turn mode is replayed with the worker's own `TurnEndpoint` and "
        "`TurnRule` (built by `runtime.sessions.session_config` from the settings); the "
        "adaptive mode with its own `AdaptiveEndpoint`. A decision that lands after speech "
        "resumed is not a cut.",
        "",
    ]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    families: dict[str, list[dict]] = defaultdict(list)
    for point in data["points"]:
        families[point["family"]].append(point)
    for family, points in families.items():
        ordered = sorted(points, key=lambda p: p["threshold"])  # a curve along its threshold
        (line,) = ax.plot(
            [p["latency_p50_ms"] for p in ordered],
            [p["cut_rate"] * 100 for p in ordered],
            marker=".",
            label=family,
        )
        best = data["summary"][family]["at_5pct_cut"]
        if best is not None:
            ax.plot(
                best["latency_p50_ms"],
                best["cut_rate"] * 100,
                "o",
                ms=10,
                mfc="none",
                color=line.get_color(),
            )
    for p in data["shipped"]:
        ax.plot(p["latency_p50_ms"], p["cut_rate"] * 100, "*", ms=14, color="black")
        ax.annotate(
            p["label"],
            (p["latency_p50_ms"], p["cut_rate"] * 100),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    for level in CUT_LEVELS:
        ax.axhline(level * 100, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("median end of last word -> final text ready (ms)")
    ax.set_ylabel(f"inserted pauses <= {CURVE_MAX_PAUSE_MS} ms where the turn is ended (%)")
    tuned = data["turn_grid"]["tuned"]
    if tuned is not None:
        point = tuned["held-out"]
        ax.plot(point["latency_p50_ms"], point["cut_rate"] * 100, "X", ms=11, color="crimson")
        ax.annotate(
            "turn mode, tuned on the other half",
            (point["latency_p50_ms"], point["cut_rate"] * 100),
            textcoords="offset points",
            xytext=(6, -10),
            fontsize=8,
        )
    ax.set_title("Held-out half: cut-offs against latency (circles: latency at 5% cut-offs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

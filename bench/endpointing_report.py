"""bench/results/endpointing.{json,md,png}: the cut-off curve's tables and figure."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from bench.endpointing_rules import (
    ADAPTIVE_FRAMES,
    CHECK_FRAMES,
    FALLBACK_MS,
    FRAME_MS,
    TURN_POINTS,
    meets_target,
    operating_point,
)

CUT_LEVELS = (0.05, 0.10)


def summarise(data: dict) -> dict:
    """Per family: its operating points, and the fused rule's points meeting the target."""
    families: dict[str, list[dict]] = defaultdict(list)
    for point in data["points"]:
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
    data["summary"] = summarise(data)
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


def _row(p: dict, lengths: list[int]) -> str:
    rates = " | ".join(_fmt(p["cut_rate_by_pause_ms"][str(n)]) for n in lengths)
    whole = f"{len(p['whole_sentences_cut'])}/{p['whole_sentences']}"
    target = "yes" if meets_target(p) else "no"
    return (
        f"| {p['family']} | {p['label']} | {_fmt(p['cut_rate'])} | {rates} | {whole} "
        f"| {p['latency_p50_ms']:.0f} | {p['latency_p95_ms']:.0f} "
        f"| {p['latency_p50_ms_all_ends']:.0f} | {target} |"
    )


def markdown(data: dict, png: str) -> str:
    lengths = data["pause_lengths_ms"]
    meta, counts, summary = data["meta"], data["counts"], data["summary"]
    head = " | ".join(f"cut {n} ms" for n in lengths)
    table = [
        f"| rule | threshold | cut (all inserted) | {head} | whole sentences cut "
        "| p50 ms | p95 ms | p50 ms, all ends | target met |",
        "| --- | --- | ---: | "
        + " | ".join("---:" for _ in lengths)
        + " | ---: | ---: | ---: | ---: | --- |",
    ]
    table += [_row(p, lengths) for p in data["shipped"]]
    table += [_row(p, lengths) for p in data["points"]]
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
    lines = [
        "# End of turn: cut-offs against latency",
        "",
        ANALYSIS,
        "",
        f"Command: `{meta['command']}`; {meta['date']}, commit {meta['commit']}, "
        f"{meta['nproc']} CPUs ({meta['cpu']}); {meta['engine']} {meta['model']}; "
        f"VAD {meta['vad']}; {meta['seconds']} s (cached features are reused).",
        "",
        f"Set: {counts['sentences']} sentences ({counts['complete_ends']} ending a sentence), "
        f"{counts['inserted']} inserted pauses ({', '.join(map(str, lengths))} ms of silence "
        f"between the two words, room tone), {counts['natural']} pauses of the sentences' own "
        "that are long enough for a rule to act on.",
        "",
        "## Operating points",
        "",
        "Cut-offs here: the share of inserted pauses (all lengths) where the turn is ended; a "
        "point qualifies only if no sentence without an inserted pause is cut. Target "
        "(issue 16): <= 10% of 400 ms and <= 20% of 700 ms pauses cut, none in a sentence "
        "without one.",
        "",
        *ops,
        "",
        f"![cut-offs against latency]({png})",
        "",
        "## Every point",
        "",
        "Latency: end of the last word (energy) -> the final's text ready, on the sentences "
        "whose text ends a sentence (*all ends*: every sentence's end, LJ utterances that stop "
        "at a comma included).",
        "",
        *table,
        "",
        "## How the rules are replayed",
        "",
        f"- Silence runs from the worker's VAD over each clip, in {FRAME_MS} ms frames, from "
        "its first silent frame (which may fall before or after the word's energy end).",
        f"- Turn check: the engine decodes the audio up to {CHECK_FRAMES * FRAME_MS} ms "
        f"(turn mode's check) and {ADAPTIVE_FRAMES * FRAME_MS} ms (the adaptive mode's) into "
        "the silence run with the turn check's options; its measured time counts. Its text "
        "is the final when a rule ends the turn on it; otherwise the final is decoded after "
        "the decision (its time taken as the check's).",
        f"- Smart Turn: probability at {', '.join(str(p * FRAME_MS) for p in TURN_POINTS)} ms "
        "of silence, with its measured time per call; in turn mode it runs first and the "
        "decode after it (as `TurnCheckEngine` runs them), at the check and at each recheck "
        "(the decode measured nearest before it).",
        f"- Alone, the decoder's end probability (checked at {CHECK_FRAMES * FRAME_MS} ms) and "
        f"Smart Turn (at each point) end the turn at {FALLBACK_MS} ms of silence when they "
        "never say *over*. Turn mode is replayed with the worker's own `TurnEndpoint` and "
        "`TurnRule` (built by `runtime.sessions.session_config`), its Smart Turn threshold "
        "(`over_prob`) and decoder veto swept, its other settings the defaults; the adaptive "
        "mode with its own `AdaptiveEndpoint`. A decision that lands after speech resumed is "
        "not a cut.",
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
        ordered = sorted(points, key=lambda p: p["latency_p50_ms"])
        (line,) = ax.plot(
            [p["latency_p50_ms"] for p in ordered],
            [p["cut_rate"] * 100 for p in ordered],
            marker=".",
            label=family,
        )
        best = data["summary"][family]["at_10pct_cut"]
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
    ax.set_ylabel("inserted pauses where the turn is ended (%)")
    ax.set_title("End of turn: cut-offs against latency (circles: latency at 10% cut-offs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

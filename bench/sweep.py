"""Trade-off curves from the evaluation harness, each point a full run over the shared clips.

- endpoint: `STT_ENDPOINT_SILENCE_MS` against WER (cuts at natural pauses cost accuracy) and
  end-of-speech -> final latency;
- models: tiny.en, base, and the dual model (base finals, tiny.en partials).

Run: `.venv/bin/python bench/sweep.py [--speed 1] [--endpoints 300,500,700,1000]`; writes
`bench/results/sweep.md` and `.json`. Latency is meaningful only at speed 1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path

from stt_worker.evaluation import EvalOptions, EvalReport, evaluate, machine_info

OUT = Path(__file__).resolve().parent / "results" / "sweep"


def row(label: str, report: EvalReport) -> dict[str, object]:
    summary = dataclasses.asdict(report.summary)
    eos = summary["latency_speech_end_ms"]
    partial = summary["partial_latency_ms"]
    return {
        "setup": label,
        "finals": summary["finals"],
        "stream_wer": round(summary["stream_wer"], 4),
        "offline_wer": round(summary["offline_wer"], 4),
        "wer_ratio": None if summary["wer_ratio"] is None else round(summary["wer_ratio"], 3),
        "eos_p50_ms": round(eos["p50"]),
        "eos_p95_ms": round(eos["p95"]),
        "within_bound": f"{summary['finals_within_eos_bound']}/{summary['finals']}",
        "partial_p50_ms": round(partial["p50"]) if partial["n"] else None,
        "partial_words_changed": round(summary["partial_change_rate"], 3),
    }


async def sweep(speed: float, endpoints: list[int]) -> list[dict[str, object]]:
    points = [
        (f"tiny.en, endpoint {ms} ms", "tiny.en", {"endpoint_silence_ms": ms}) for ms in endpoints
    ]
    points += [
        ("base, endpoint 500 ms", "base", {}),
        ("base finals + tiny.en partials", "base", {"partial_model": "tiny.en"}),
    ]
    rows = []
    for label, model, settings in points:
        report = await evaluate(
            EvalOptions(speed=speed, model=model, plot=False, settings=settings)
        )
        rows.append(row(label, report))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--endpoints", default="300,500,700,1000")
    args = parser.parse_args()
    endpoints = [int(ms) for ms in args.endpoints.split(",")]
    rows = asyncio.run(sweep(args.speed, endpoints))
    meta = machine_info()
    header = list(rows[0])
    lines = [
        "# Trade-offs: endpoint silence and models (evaluation harness, shared clips)",
        "",
        f"Command: `.venv/bin/python bench/sweep.py --speed {args.speed:g} "
        f"--endpoints {args.endpoints}`; {json.dumps(meta)}",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(str(r[key]) for key in header) + " |" for r in rows),
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

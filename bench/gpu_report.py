"""bench/gpu_check.sh's report: what the GPU run found, as <out>.md and <out>.json.

Reads from the run's work folder: the engine tests' JUnit XML (tests.xml), the batching
bench's JSON per model (batching-<model>.json, as `python -m bench.batching --json` prints it)
or, without that bench, bench.engines' unbatched times (engines.json). A piece that is
missing is named in the report as not measured, never left out silently, and makes the exit
status 1 (as do failed tests and failed steps), after both files are written.

    python -m bench.gpu_report --work DIR --out bench/results/gpu --gpu FILE --libs FILE \
        [--failure TEXT ...] [--budget-s S] [--elapsed-s S]
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODELS = ("tiny.en", "base")


def read_text(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def test_results(junit: Path) -> dict[str, Any]:
    """Counts and the failed tests' names from pytest's JUnit XML; `ran: False` without it."""
    if not junit.is_file():
        return {"ran": False}
    root = ElementTree.parse(junit).getroot()
    failed, skipped, total = [], [], 0
    for case in root.iter("testcase"):
        total += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped.append(name)
    return {
        "ran": True,
        "total": total,
        "passed": total - len(failed) - len(skipped),
        "failed": failed,
        "skipped": skipped,
    }


def batching_results(work: Path) -> dict[str, Any]:
    """bench.batching's JSON per model, as it printed it (unreadable output is recorded)."""
    results: dict[str, Any] = {}
    for model in MODELS:
        path = work / f"batching-{model}.json"
        if not path.is_file():
            continue
        try:
            results[model] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            results[model] = {"error": f"not JSON ({exc}): {path.read_text()[:200]!r}"}
    return results


def engine_times(work: Path) -> list[dict[str, Any]]:
    """bench.engines' rows (unbatched, one decode at a time): the fallback measurement."""
    path = work / "engines.json"
    if not path.is_file():
        return []
    rows = []
    for engine in json.loads(path.read_text())["engines"]:
        summary = engine.get("summary") or {}
        rows.append(
            {
                "label": engine["label"],
                "device": engine["device"],
                "precision": engine["extra"].get("compute_type") or engine["extra"].get("dtype"),
                "mean_inference_s": summary.get("mean_inference_s"),
                "rtf": summary.get("rtf"),
                "wer": summary.get("wer"),
            }
        )
    return rows


def gather(args: argparse.Namespace) -> dict[str, Any]:
    batching = batching_results(args.work)
    engines = engine_times(args.work)
    not_measured = [f"batched vs unbatched, {m}" for m in MODELS if m not in batching]
    if not engines and not batching:
        not_measured.append("unbatched decode times")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpu": read_text(args.gpu),
        "libraries": read_text(args.libs),
        "budget_s": args.budget_s,
        "elapsed_s": args.elapsed_s,
        "tests": test_results(args.work / "tests.xml"),
        "batching": batching,
        "engines": engines,
        "not_measured": not_measured,
        "failures": args.failure,
    }


def _number(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def render(report: dict[str, Any]) -> str:
    tests = report["tests"]
    lines = [
        "# GPU check",
        "",
        f"`bench/gpu_check.sh`, {report['date']}, {report['elapsed_s']} s of a "
        f"{report['budget_s']} s budget.",
        "",
        f"- GPU (nvidia-smi): {report['gpu'] or 'not read'}",
        f"- Libraries: {report['libraries'] or 'not read'}",
    ]
    if tests["ran"]:
        lines.append(
            f"- Engine tests on CUDA (STT_TEST_DEVICE=cuda): {tests['passed']} passed, "
            f"{len(tests['failed'])} failed, {len(tests['skipped'])} skipped of {tests['total']}"
        )
        lines += [f"  - failed: `{name}`" for name in tests["failed"]]
    else:
        lines.append("- Engine tests on CUDA: did not run")
    for model, result in report["batching"].items():
        ratio = result.get("batching_ratio") if isinstance(result, dict) else None
        lines.append(f"- Batching, {model}: ratio {_number(ratio, 2)} (raw result in the JSON)")
    if report["engines"]:
        lines += [
            "",
            "Unbatched, one decode at a time (bench.engines):",
            "",
            "| engine | device | precision | mean decode s | RTF | WER |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['label']} | {r['device']} | {r['precision']} | "
            f"{_number(r['mean_inference_s'], 3)} | {_number(r['rtf'], 4)} | "
            f"{_number(r['wer'], 3)} |"
            for r in report["engines"]
        ]
    if report["not_measured"]:
        lines += ["", "Not measured: " + "; ".join(report["not_measured"]) + "."]
    if report["failures"]:
        lines += ["", "Failed steps:", ""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines) + "\n"


def problems(report: dict[str, Any]) -> list[str]:
    """What keeps the run from being complete: any of it makes the exit status 1."""
    found = list(report["failures"])
    tests = report["tests"]
    if not tests["ran"]:
        found.append("the engine tests did not run")
    elif tests["failed"] or not tests["total"]:
        found.append(f"{len(tests['failed'])} of {tests['total']} engine tests failed")
    found += [f"not measured: {what}" for what in report["not_measured"]]
    found += [
        f"batching, {model}: {result['error']}"
        for model, result in report["batching"].items()
        if isinstance(result, dict) and "error" in result
    ]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="writes <out>.md, <out>.json")
    parser.add_argument("--gpu", type=Path, required=True, help="nvidia-smi's output")
    parser.add_argument("--libs", type=Path, required=True, help="the library check's output")
    parser.add_argument("--failure", action="append", default=[], help="a failed step")
    parser.add_argument("--budget-s", type=int, default=0)
    parser.add_argument("--elapsed-s", type=int, default=0)
    args = parser.parse_args(argv)
    report = gather(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(render(report))
    for problem in problems(report):
        print(f"gpu_report: {problem}", file=sys.stderr)
    return 1 if problems(report) else 0


if __name__ == "__main__":
    sys.exit(main())

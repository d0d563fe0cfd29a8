"""bench/gpu_check.sh without a GPU: its plan, its argument checks, the clear stops when the
machine has no GPU or no package index, and the report it writes from a run's results.

The run itself needs an NVIDIA GPU (see the script); this covers everything before and after.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_report
from tests.helpers import REPO, SPEECH_DIR

SCRIPT = REPO / "bench" / "gpu_check.sh"


def run_check(
    *args: str, path_prefix: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("PIP_INDEX_URL", "VIRTUAL_ENV")}
    if path_prefix is not None:
        environ["PATH"] = f"{path_prefix}{os.pathsep}{environ['PATH']}"
    return subprocess.run(
        ["bash", str(SCRIPT), "--speech", str(SPEECH_DIR), *args],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def fake_nvidia_smi(folder: Path, *, output: str, status: int) -> Path:
    folder.mkdir(exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\necho '{output}'\nexit {status}\n")
    tool.chmod(0o755)
    return folder


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple"


def test_dry_run_prints_every_step_within_the_budget(tmp_path: Path) -> None:
    result = run_check("--dry-run", "--budget-s", "100", "--work", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    steps = [line.split()[0] for line in plan.splitlines()[2:]]
    bench = (
        ["bench-tiny.en", "bench-base"]
        if (REPO / "bench/batching.py").is_file()
        else ["bench-engines"]
    )
    assert steps == ["gpu-seen", "index", "venv", "install", "gpu-libs", "tests", *bench, "report"]
    limits = [
        int(line.split()[1].rstrip("s")) for line in plan.splitlines()[2:] if "index" not in line
    ]
    assert max(limits) <= 100
    assert "STT_TEST_DEVICE=cuda" in plan and "tests/test_engine.py" in plan
    assert "--out " + str(REPO / "bench/results/gpu") in plan
    assert not (tmp_path / "w").exists(), "a dry run touches nothing"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--budget-s", "8m"], "--budget-s must be a whole number"),
        (["--budget-s"], "--budget-s needs a value"),
        (["--wheelhouse", "/no/such/folder"], "is not a folder"),
        (["--speech", "/no/such/folder"], "no test clips"),
    ],
)
def test_bad_arguments_stop_before_anything_runs(args: list[str], message: str) -> None:
    result = run_check("--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_machine_without_a_gpu_stops_at_the_first_step(tmp_path: Path) -> None:
    tools = fake_nvidia_smi(tmp_path / "bin", output="No devices were found", status=9)
    result = run_check("--work", str(tmp_path / "w"), path_prefix=tools)
    assert result.returncode == 1
    assert "step 'gpu-seen' failed (exit 9)" in result.stderr
    assert "No devices were found" in result.stderr
    assert not (tmp_path / "w" / "venv").exists()


def test_no_package_index_stops_with_the_offline_way(tmp_path: Path) -> None:
    tools = fake_nvidia_smi(tmp_path / "bin", output="NVIDIA H200, 143771 MiB, 580.1", status=0)
    work = tmp_path / "w"
    result = run_check("--work", str(work), path_prefix=tools, PIP_INDEX_URL=closed_port_url())
    assert result.returncode == 2
    assert "is not reachable from this machine" in result.stderr
    assert "--wheelhouse" in result.stderr
    assert (work / "gpu-seen.log").read_text().startswith("NVIDIA H200")
    assert not (work / "venv").exists()


# ------------------------------------------------------------------ the report


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="tests.test_engine" name="test_tiny_en_transcribes_jfk"/>
  <testcase classname="tests.test_engine" name="test_base_model_transcribes_jfk">
    <failure message="assert 0.2 &lt;= 0.15">...</failure></testcase>
  <testcase classname="tests.test_openai_whisper" name="test_conversion_is_exact">
    <skipped message="fp16 on GPU"/></testcase>
</testsuite></testsuites>
"""


def engines_payload() -> dict:
    return {
        "engines": [
            {
                "label": "faster-whisper tiny.en",
                "device": "cuda",
                "extra": {"compute_type": "float16"},
                "summary": {"mean_inference_s": 0.0123, "rtf": 0.0021, "wer": 0.03},
            },
            {
                "label": "http -> whisper server",
                "device": "http",
                "extra": {},
                "summary": {"mean_inference_s": None, "rtf": None, "wer": None},
            },
        ]
    }


def write_report(tmp_path: Path, *extra: str, status: int = 1) -> tuple[dict, str]:
    work = tmp_path / "work"
    (work / "gpu-seen.log").write_text("NVIDIA H200, 143771 MiB, 580.1\n")
    out = tmp_path / "results" / "gpu"
    argv = ["--work", str(work), "--out", str(out), "--gpu", str(work / "gpu-seen.log")]
    argv += ["--libs", str(work / "gpu-libs.log"), "--budget-s", "480", "--elapsed-s", "301"]
    assert gpu_report.main([*argv, *extra]) == status
    return json.loads(Path(f"{out}.json").read_text()), Path(f"{out}.md").read_text()


def test_report_from_tests_and_unbatched_times(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "tests.xml").write_text(JUNIT)
    (tmp_path / "work" / "engines.json").write_text(json.dumps(engines_payload()))
    report, markdown = write_report(tmp_path, "--failure=tests: exit 1")

    assert report["tests"] == {
        "ran": True,
        "total": 3,
        "passed": 1,
        "failed": ["tests.test_engine::test_base_model_transcribes_jfk"],
        "skipped": ["tests.test_openai_whisper::test_conversion_is_exact"],
    }
    assert report["engines"][0] == {
        "label": "faster-whisper tiny.en",
        "device": "cuda",
        "precision": "float16",
        "mean_inference_s": 0.0123,
        "rtf": 0.0021,
        "wer": 0.03,
    }
    # No batching bench ran: the report says so rather than leaving it out.
    assert report["not_measured"] == ["batched vs unbatched, tiny.en", "batched vs unbatched, base"]
    assert "1 passed, 1 failed, 1 skipped of 3" in markdown
    assert "| faster-whisper tiny.en | cuda | float16 | 0.012 | 0.0021 | 0.030 |" in markdown
    assert "| http -> whisper server | http | None | - | - | - |" in markdown
    assert "Not measured: batched vs unbatched, tiny.en; batched vs unbatched, base." in markdown
    assert "- tests: exit 1" in markdown
    assert "Libraries: not read" in markdown
    assert gpu_report.problems(report) == [
        "tests: exit 1",
        "1 of 3 engine tests failed",
        "not measured: batched vs unbatched, tiny.en",
        "not measured: batched vs unbatched, base",
    ]


def test_a_complete_run_reports_success(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    passing = JUNIT.replace('<failure message="assert 0.2 &lt;= 0.15">...</failure>', "")
    (work / "tests.xml").write_text(passing)
    for model in gpu_report.MODELS:
        (work / f"batching-{model}.json").write_text(json.dumps({"batching_ratio": 2.0}))
    report, _ = write_report(tmp_path, status=0)
    assert gpu_report.problems(report) == []


def test_report_keeps_the_batching_results_and_flags_bad_output(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "batching-tiny.en.json").write_text(json.dumps({"batching_ratio": 3.5}))
    (work / "batching-base.json").write_text("Traceback (most recent call last): ...")
    report, markdown = write_report(tmp_path)
    assert report["batching"]["tiny.en"] == {"batching_ratio": 3.5}
    assert report["batching"]["base"]["error"].startswith("not JSON")
    assert report["tests"] == {"ran": False}
    assert report["not_measured"] == []
    assert "Batching, tiny.en: ratio 3.50" in markdown
    assert "Batching, base: ratio -" in markdown
    assert "Engine tests on CUDA: did not run" in markdown


def test_report_runs_as_a_module(tmp_path: Path) -> None:
    # The script calls it as `python -m bench.gpu_report` from the checkout.
    (tmp_path / "work").mkdir()
    out = tmp_path / "gpu"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu_report",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--gpu",
            str(tmp_path / "none"),
            "--libs",
            str(tmp_path / "none"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Nothing measured: both files are still written, and the status says it is incomplete.
    assert result.returncode == 1, result.stderr
    assert "gpu_report: the engine tests did not run" in result.stderr
    assert "unbatched decode times" in json.loads(Path(f"{out}.json").read_text())["not_measured"]
    assert Path(f"{out}.md").read_text().startswith("# GPU check")

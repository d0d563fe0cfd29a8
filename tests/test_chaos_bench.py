"""The chaos benchmark's quick run (`python -m bench.chaos --quick`): real nats-server with
JetStream, real elastic worker processes, real speech; a worker killed and one drained and
replaced under live sessions, and no final lost or published twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"lost_finals", "duplicate_finals", "wer_ratio", "p95_disrupted_s", "p95_calm_s"}


@pytest.mark.timeout(420)
def test_quick_chaos_run_loses_and_repeats_no_final(tmp_path: Path) -> None:
    path = tmp_path / "chaos.json"
    command = [sys.executable, "-m", "bench.chaos", "--quick", "--json", str(path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    data = json.loads(path.read_text())
    assert data.keys() >= KEYS
    assert [e["event"].split()[0] for e in data["events"]] == ["kill", "term"]
    assert all(e["rebalanced_s"] is not None for e in data["events"]), data["events"]
    # Speech went through both runs: there were utterances to lose.
    assert data["utterances"] >= 4 and data["finals_disrupted"] >= 4
    assert data["unclosed"] == {"calm": 0, "disrupted": 0}
    assert data["lost_finals"] == 0, data["per_session"]
    assert data["duplicate_finals"] == 0, data["per_session"]
    assert data["p95_calm_s"] is not None and data["wer_ratio"] is not None
    assert "| lost_finals | 0 |" in path.with_suffix(".md").read_text()

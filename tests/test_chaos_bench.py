"""The chaos benchmark's quick run (`python -m bench.chaos --quick`): real nats-server with
JetStream, real elastic worker processes, real speech; a worker killed and one drained and
replaced under live sessions, and no final lost or published twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos_score import Heard, match, words

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


def heard(utterance_id: int, text: str) -> Heard:
    return Heard(utterance_id, words(text), 0.0, 1.0, "end", 0.0)


CALM = [heard(1, "he hoped there would be stew"), heard(2, "for dinner turnips and carrots")]


def test_a_final_whose_words_never_came_is_lost_and_a_replayed_one_is_a_duplicate() -> None:
    assert match(CALM, CALM).lost == 0 and match(CALM, CALM).duplicates == 0
    # A drain cut the first utterance in two: nothing lost, nothing repeated.
    cut = [heard(1, "he hoped there"), heard(2, "would be stew"), heard(3, CALM[1].words[0])]
    assert match(CALM, [*cut, heard(4, "dinner turnips and carrots")]).lost == 0
    assert match(CALM, CALM[:1]).lost == 1
    replayed = [CALM[0], heard(2, "he hoped there would be stew"), heard(3, "for dinner turnips")]
    assert match(CALM, replayed).duplicates == 1
    renumbered = [CALM[0], heard(1, "for dinner turnips and carrots")]
    assert match(CALM, renumbered).duplicates == 1


def test_a_decoding_loop_does_not_outweigh_the_words_of_its_utterance() -> None:
    looped = [heard(1, "he hoped there would be stew p-p-p-p-p-p-p-p-p-p-p-p-p-p-p-p")]
    assert match(looped, CALM[:1]).lost == 0

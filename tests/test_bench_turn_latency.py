"""The live turn-latency benchmark in its quick mode: real nats-server, the real worker in its
own process per configuration, real speech at real time. Checks the outputs' structure and
that what they measure is consistent with the audio that was sent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_turn_latency_quick_run_measures_both_configs(tmp_path: Path) -> None:
    prefix = tmp_path / "turn_latency"
    json_path = tmp_path / "elsewhere.json"
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "bench.turn_latency", "--quick", "--configs", "old,new", "--rounds", "2"),
            *("--out", str(prefix), "--json", str(json_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    data = json.loads(json_path.read_text())
    assert not prefix.with_suffix(".json").exists()  # --json chose the path
    assert set(data["results"]) == {"old", "new"}
    sentences = data["meta"]["sentences"]
    assert data["meta"]["rounds"] == 2
    for config, steps in data["results"].items():
        step = steps["1"]
        # One session twice, each round its own session (its own room noise).
        assert step["utterances"] == 2 * len(sentences) and step["rounds"] == 2, config
        mine = [u for u in data["utterances"] if u["config"] == config]
        assert len({u["session"] for u in mine}) == 2, config
        # Every sentence was heard and ended: a final covering its last word, the words
        # right, a partial before it.
        assert step["finals_missing"] == 0 and step["first_partials_missing"] == 0, config
        assert step["wer_mean"] <= 0.34, config
        for metric in ("eos_to_final_ms", "onset_to_first_partial_ms", "partial_gap_ms"):
            assert {"n", "p50", "p95"} <= set(step[metric]), (config, metric)
    for utterance in data["utterances"]:
        # Measured from the real end of speech: a reference point past the last word (the
        # file's end, say) would give negative values.
        assert 0 < utterance["eos_to_final_ms"] < 5000, utterance
        # A partial holds audio sent before it arrived: its heard audio after the onset is
        # less than the time from the onset to its arrival.
        heard, arrived = utterance["first_partial_heard_ms"], utterance["onset_to_first_partial_ms"]
        assert 0 < heard < arrived, utterance
        # Each partial arrived after its decode, which began after its audio was sent.
        timings = utterance["partial_timings"]
        assert all(0 < t["decode_ms"] <= t["latency_ms"] for t in timings), utterance
        assert len(utterance["gaps"]) == max(0, len(timings) - 1), utterance
    # Both quick sentences end a sentence: the targets' latency counts each of them.
    assert data["targets"][0]["target"].startswith("eos_to_final_sentence_ms p50")
    for config, steps in data["results"].items():
        ends, every = steps["1"]["eos_to_final_sentence_ms"], steps["1"]["eos_to_final_ms"]
        assert ends == every and ends["n"] == 2 * len(sentences), config
    assert all(u["ends_sentence"] for u in data["utterances"])
    # `new`'s sessions ask for turn events: an eager end of turn came for a sentence's end
    # before its final; `old`'s do not.
    assert "turn_events" not in data["results"]["old"]["1"]
    events = data["results"]["new"]["1"]["turn_events"]
    assert events["eager_events"] >= 1 and events["eos_to_eager_ms"]["n"] >= 1, events
    assert 0 <= events["resumed"] <= events["eager_events"]
    assert events["eager_lead_ms"]["p50"] > 0, events
    for utterance in data["utterances"]:
        if utterance["eos_to_eager_ms"] is not None:
            assert utterance["eos_to_eager_ms"] < utterance["eos_to_final_ms"], utterance

    markdown = prefix.with_suffix(".md").read_text()
    assert "| old | 1 |" in markdown and "| new | 1 |" in markdown
    assert "## Targets" in markdown
    assert "## Turn events" in markdown and "| new | 1 |" in markdown.split("## Turn events")[1]


def test_the_latency_counts_the_ends_of_sentences_not_clips_that_stop_at_a_comma() -> None:
    from bench.turn_latency import SENTENCES, Utterance, sentences, summarise

    ends = {s.name: s.ends_sentence for s in sentences(SENTENCES)}
    # LJ001-0004 and -0006 stop mid-sentence, at a comma; LibriSpeech's and JFK's end one.
    assert {n for n, e in ends.items() if not e} == {
        "noisy10db_lj_LJ001-0004.wav",
        "lj_LJ001-0006.wav",
    }
    held = Utterance("c", 1, "s", "lj_LJ001-0006.wav", False, 1200.0, None, None)
    quick = Utterance("c", 1, "s", "jfk.wav", True, 250.0, None, None)
    summary = summarise([held, quick])
    assert summary["eos_to_final_sentence_ms"] == {"n": 1, "p50": 250.0, "p95": 250.0}
    assert summary["eos_to_final_ms"]["n"] == 2

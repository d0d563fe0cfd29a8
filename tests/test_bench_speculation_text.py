"""bench.speculation_text in its quick mode: the real engine decodes three real sentence
ends as their speculation and as their final's own decode."""

from __future__ import annotations

import json
from pathlib import Path

from bench import speculation_text


def test_quick_run_compares_each_sentence_end_s_two_texts(tmp_path: Path) -> None:
    assert speculation_text.main(["--quick", "--out", str(tmp_path / "st")]) == 0
    data = json.loads((tmp_path / "st.json").read_text())
    pairs = data["pairs"]
    assert sorted(p["sentence"] for p in pairs) == sorted(speculation_text.QUICK)
    assert data["meta"]["speculate_ms"] < data["meta"]["endpoint_ms"]
    for pair in pairs:
        # Both decodes hear the whole sentence: the words are (nearly) right either way.
        assert pair["final"] and pair["speculation"], pair
        assert pair["final_wer"] <= 0.34 and pair["speculation_wer"] <= 0.34, pair
    assert data["differ"] == sum(p["final"] != p["speculation"] for p in pairs)
    assert abs(data["final_wer"] - sum(p["final_wer"] for p in pairs) / len(pairs)) < 1e-3
    assert "sentence ends: mean WER" in (tmp_path / "st.md").read_text()

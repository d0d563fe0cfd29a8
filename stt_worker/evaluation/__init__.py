"""Evaluation harness: streams a speech manifest through the real worker and scores it.

`evaluate` starts its own ``nats-server`` and a `Worker` (a task in the same loop) and
streams every clip of the manifest (lines of ``{"file", "text"}``) one at a time as its own
session, exactly as a publisher would: ``start``, 20 ms chunks at real time (or `speed`
times it, 0 = as fast as possible), ``end``. From wall-clock receive times it measures:

- **last-chunk latency** of each final: since the send of the chunk holding its
  ``audio_end_s`` (the utterance's last audio, endpoint silence included);
- **end-of-speech latency**: since the send of the chunk holding the utterance's last voiced
  frame. The trailing silence is counted with the worker's own VAD (webrtcvad, its
  aggressiveness, 20 ms frames) run over the whole clip, so it matches the worker frame for
  frame: for a final cut by the endpoint it is exactly ``endpoint_silence_ms``; for one
  flushed by ``end`` it is whatever silence the clip ends with;
- **partial latency**, the same as last-chunk latency for partials, and **partial
  stability** (`partial_stability`).

After each session closes (the worker is idle then) the same engine decodes the whole clip
(the offline baseline streaming must equal) and each final's exact audio slice (*bare
inference*, the engine time the final's latency is compared with). WER is jiwer after
Whisper's English normaliser (`stt_worker.evaluation.textnorm`), corpus-level over clips.

Latency is only meaningful at ``speed == 1``: faster, chunks queue up behind inference.

Needs the ``eval`` extra (jiwer, whisper-normalizer, matplotlib); the worker never imports it.

    stt-streaming eval [MANIFEST] [--speed 1] [--limit N] [--file NAME ...] [--out PREFIX]
    python -m stt_worker.evaluation ...   (the same)

Modules: `results` (records and targets), `clips`, `stability`, `runner` (streaming and
measuring), `report` (markdown, JSON, PNG), `command`.
"""

from stt_worker.evaluation.command import main
from stt_worker.evaluation.report import render_markdown, write_outputs, write_plot
from stt_worker.evaluation.results import EvalOptions, EvalReport, Summary
from stt_worker.evaluation.runner import evaluate, machine_info
from stt_worker.evaluation.stability import partial_stability

__all__ = [
    "EvalOptions",
    "EvalReport",
    "Summary",
    "evaluate",
    "machine_info",
    "main",
    "partial_stability",
    "render_markdown",
    "write_outputs",
    "write_plot",
]

"""Is a speculation's text as good a final as the final's own decode?

A speculative final (`core/speculation.py`) hears the utterance up to `STT_ENDPOINT_SPECULATE_MS`
of its closing pause, then digital silence up to `STT_ENDPOINT_SILENCE_MS`; the final's own
decode hears the whole pause. For each sentence of the pause set (`bench.pauses`, with
`--extra lj` its 24 extra LJ Speech utterances) as spoken, the worker's VAD finds the pause
after the last word, and the worker's engine decodes both, each with its own options (the
speculation's without the doubt retry, as `runtime.decode_plan` plans it). WER of each
against the reference text, and the texts that differ.

    .venv/bin/python -m bench.speculation_text [--extra lj] [--quick] [--out PREFIX]
        # bench/results/speculation_text.{md,json}
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import pauses as pause_set
from bench.endpointing import silence_runs
from bench.harness import write_results
from stt_worker.config import load_settings
from stt_worker.core.vad import FRAME_MS, FRAME_SAMPLES, VoiceActivityDetector
from stt_worker.engines import create_engine
from stt_worker.engines.base import DecodeOptions
from stt_worker.evaluation.results import ROOT
from stt_worker.evaluation.runner import machine_info
from stt_worker.evaluation.textnorm import wer
from stt_worker.runtime.pipeline import speech_detectors

OUT = ROOT / "bench" / "results" / "speculation_text"
LEAD_FRAMES = 10  # audio kept before the first voiced frame, as the worker's pre-roll
QUICK = ("ls_1089-134691-0000", "ls_1089-134686-0001", "lj_LJ001-0008")


@dataclass(frozen=True)
class Pair:
    sentence: str
    final: str
    speculation: str
    final_wer: float
    speculation_wer: float


def texts(names: Sequence[str] | None, extra: Sequence[str]) -> list[Pair]:
    settings = load_settings()
    detector = speech_detectors(settings)
    speculate = settings.endpoint_speculate_ms // FRAME_MS
    endpoint = settings.endpoint_silence_ms // FRAME_MS
    engine = create_engine(settings)
    final_options = DecodeOptions(full_window_retry=True)
    speculation_options = DecodeOptions(full_window_retry=True, doubt_retry=False)
    pairs = []
    try:
        for sentence in pause_set.sentences(tuple(names) if names else None, extra):
            samples = sentence.samples
            speech = list(VoiceActivityDetector(detector()).push(samples).speech)
            end = sentence.speech_end_s * 1000 / FRAME_MS
            pause = next(first for first, length in silence_runs(speech) if first + length >= end)
            start = max(0, speech.index(True) - LEAD_FRAMES) * FRAME_SAMPLES
            heard = samples[start : (pause + endpoint) * FRAME_SAMPLES]
            early = samples[start : (pause + speculate) * FRAME_SAMPLES]
            padded = np.concatenate([early, np.zeros(heard.size - early.size, np.int16)])
            final = _decode(engine, heard, final_options)
            speculation = _decode(engine, padded, speculation_options)
            pairs.append(
                Pair(
                    sentence.name,
                    final,
                    speculation,
                    round(wer(sentence.text, final), 4),
                    round(wer(sentence.text, speculation), 4),
                )
            )
    finally:
        engine.close()
    return pairs


def _decode(engine, samples: np.ndarray, options: DecodeOptions) -> str:
    return engine.transcribe_blocking(samples.astype(np.float32) / 32768, options).text


def report(data: dict) -> str:
    meta, pairs = data["meta"], data["pairs"]
    lines = [
        "# Speculation's text against the final's own decode",
        "",
        f"Command: `{meta['command']}`; {meta['date']}; commit {meta['commit']}; "
        f"{meta['nproc']} CPUs ({meta['cpu']}); {meta['model']}.",
        "",
        f"{len(pairs)} sentence ends: mean WER **{data['final_wer']:.4f}** for the final's own "
        f"decode ({meta['endpoint_ms']} ms of the pause heard), **{data['speculation_wer']:.4f}**"
        f" for the speculation ({meta['speculate_ms']} ms, then digital silence); the texts "
        f"differ at {data['differ']}.",
        "",
        "| sentence | final's WER | speculation's WER | final | speculation |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for p in pairs:
        if p["final"] != p["speculation"]:
            lines.append(
                f"| {p['sentence']} | {p['final_wer']:.3f} | {p['speculation_wer']:.3f} "
                f"| {p['final']} | {p['speculation']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--extra", action="append", default=[], choices=pause_set.EXTRAS)
    parser.add_argument("--quick", action="store_true", help="three short sentences")
    parser.add_argument("--out", type=Path, default=OUT, help="prefix of .md and .json")
    args = parser.parse_args(argv)
    settings = load_settings()
    started = time.perf_counter()
    pairs = texts(QUICK if args.quick else None, () if args.quick else args.extra)
    data = {
        "meta": machine_info()
        | {
            "model": f"{settings.engine}:{settings.whisper_model_size}",
            "speculate_ms": settings.endpoint_speculate_ms,
            "endpoint_ms": settings.endpoint_silence_ms,
            "extra": args.extra,
            "seconds": round(time.perf_counter() - started),
        },
        "final_wer": round(float(np.mean([p.final_wer for p in pairs])), 4),
        "speculation_wer": round(float(np.mean([p.speculation_wer for p in pairs])), 4),
        "differ": sum(p.final != p.speculation for p in pairs),
        "pairs": [asdict(p) for p in pairs],
    }
    write_results(args.out, data, report(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

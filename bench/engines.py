"""Benchmark: inference time, real-time factor and WER of every engine, on the same clips.

One run measures, one engine after another (never two at once) and each with
`max_concurrent_inferences=1`:

1. faster-whisper tiny.en (CTranslate2, int8 on CPU, short window: the defaults);
2. faster-whisper base;
3. openai-whisper tiny.en (PyTorch fp32 on CPU; the bundled weights, converted once);
4. http: the worker's `HttpEngine` against our own whisper server (`create_app`), served by
   uvicorn on 127.0.0.1 in this process, with its own faster-whisper tiny.en instance.

Clips come from the shared manifest (16 kHz mono WAV); a clip longer than 30 s is cut to its
first 30 s. Each clip is decoded once as a warm-up (the short-window engine meets a new
encoder shape per window bucket), then `--repeat` times; its time is the mean of those.
Times are each engine's own `Transcript.inference_s`; for `http` that is the client's round
trip (POST to parsed answer), and the server's inference time is what the server's engine
reports for the same request (the number it sends back as `X-Inference-Time-Ms`), recorded
by a wrapper engine inside the server, so the overhead is round trip minus server inference.

RTF = sum of per-clip mean inference s / sum of audio s. WER is corpus WER (jiwer over the
list of clips, after Whisper's English normaliser) over the clips that were not cut, whose
reference text covers the whole clip.

    .venv/bin/python bench/engines.py [--clips N] [--repeat R] [--out bench/results/engines]

Writes ``<out>.md`` and ``<out>.json`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

from stt_worker.config import Settings, load_settings
from stt_worker.core.audio import SAMPLE_RATE_HZ, pcm16_to_float32
from stt_worker.core.errors import EngineError
from stt_worker.engines import create_engine
from stt_worker.engines.base import Audio, DecodeOptions, Engine, Transcript
from stt_worker.evaluation import machine_info as evaluation_machine_info
from stt_worker.runtime.asgi import serving_in_loop
from stt_worker.runtime.publisher import read_wav
from stt_worker.whisper_server import create_app

logger = logging.getLogger("bench.engines")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "manifest.jsonl"
DEFAULT_OUT = ROOT / "bench" / "results" / "engines"
MAX_CLIP_S = 30.0
OPTIONS = DecodeOptions()

_normalise = EnglishTextNormalizer()


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    reference: str
    audio: Audio
    cut: bool  # longer than MAX_CLIP_S in the manifest; the reference covers more than audio

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE_HZ


@dataclass(slots=True)
class ClipRun:
    name: str
    audio_s: float
    cut: bool
    reference: str
    text: str
    inference_s: list[float]  # one per repeat, warm-up excluded
    server_s: list[float] = field(default_factory=list)  # http only: the server's engine time

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.inference_s)

    @property
    def server_mean_s(self) -> float | None:
        return statistics.fmean(self.server_s) if self.server_s else None

    @property
    def wer(self) -> float | None:
        return wer([self.reference], [self.text])


@dataclass(slots=True)
class EngineRun:
    label: str
    engine: str
    model: str
    device: str
    extra: dict[str, str]
    load_s: float
    clips: list[ClipRun] = field(default_factory=list)
    skipped: str | None = None


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One row of the benchmark: which engine, and the settings that differ from defaults."""

    label: str
    kind: str  # a `create_engine` kind, or "http" (served by our own whisper server)
    overrides: dict[str, Any]


# Same parallelism for all, so the rows compare: one decode at a time, on all cores.
COMMON: dict[str, Any] = {"max_concurrent_inferences": 1}
SPECS = (
    EngineSpec("faster-whisper tiny.en", "faster-whisper", {"whisper_model_size": "tiny.en"}),
    EngineSpec("faster-whisper base", "faster-whisper", {"whisper_model_size": "base"}),
    EngineSpec(
        "openai-whisper tiny.en",
        "openai-whisper",
        {"whisper_model_size": "tiny.en", "whisper_device": "cpu"},
    ),
    EngineSpec("http -> whisper server", "http", {"whisper_model_size": "tiny.en"}),
)


def load_clips(manifest: Path, limit: int | None) -> list[Clip]:
    clips = []
    for line in manifest.read_text().splitlines()[:limit]:
        entry = json.loads(line)
        path = manifest.parent / entry["file"]
        samples, sample_rate_hz = read_wav(path)
        if sample_rate_hz != SAMPLE_RATE_HZ or samples.shape[1] != 1:
            raise SystemExit(f"{path}: need 16 kHz mono, got {sample_rate_hz} Hz x{samples.shape}")
        keep = int(MAX_CLIP_S * SAMPLE_RATE_HZ)
        pcm = np.ascontiguousarray(samples[:keep, 0])
        cut = samples.shape[0] > keep
        clips.append(Clip(entry["file"], entry["text"], pcm16_to_float32([pcm]), cut))
    return clips


def wer(references: list[str], hypotheses: list[str]) -> float | None:
    if not references:
        return None
    return jiwer.wer([_normalise(r) for r in references], [_normalise(h) for h in hypotheses])


# ---------------------------------------------------------------- the http engine's server


class RecordingEngine(Engine):
    """Wraps the server's engine and keeps the inference time of each request it serves.

    The server computes `X-Inference-Time-Ms` from exactly this `inference_s`; recording it
    here needs no change to the client (whose httpx client is private) or the server.
    """

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.info = inner.info
        self.parallelism = inner.parallelism
        self._recorded: list[float] = []

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        transcript = await self._inner.transcribe(audio, options)
        self._recorded.append(transcript.inference_s)
        return transcript

    async def warmup(self) -> None:
        await self._inner.warmup()

    def close(self) -> None:
        self._inner.close()

    def take(self) -> float:
        """The server time of the one request since the last call."""
        recorded, self._recorded = self._recorded, []
        # Requests run one at a time; more or fewer than one means the pairing is off.
        if len(recorded) != 1:
            raise RuntimeError(f"expected one server inference per request, got {len(recorded)}")
        return recorded[0]


@contextlib.asynccontextmanager
async def http_engine(settings: Settings) -> AsyncIterator[tuple[Engine, RecordingEngine]]:
    """The worker's HttpEngine talking to our whisper server, which runs `settings`' model."""
    local = await asyncio.to_thread(create_engine, settings, "faster-whisper")
    recorder = RecordingEngine(local)
    try:
        app = create_app(
            recorder,
            model_name=local.info.model,
            max_concurrency=1,
            max_queue=settings.whisper_server_max_queue,
            max_upload_bytes=settings.whisper_server_max_upload_bytes,
        )
        async with serving_in_loop(app) as url:
            client_settings = load_settings(
                **COMMON,
                whisper_url=url,
                whisper_http_response_format="json",
                whisper_http_max_concurrency=1,
                # A retry would hide a failure inside a slow round trip: fail loudly instead.
                whisper_http_retries=0,
            )
            client = create_engine(client_settings, "http")
            try:
                await client.warmup()
                yield client, recorder
            finally:
                await client.aclose()
    finally:
        recorder.close()


# ---------------------------------------------------------------- measuring


async def measure(
    engine: Engine, clips: list[Clip], repeat: int, server: RecordingEngine | None
) -> list[ClipRun]:
    runs = []
    for clip in clips:
        await engine.transcribe(clip.audio, OPTIONS)  # warm-up, not counted
        if server is not None:
            server.take()
        times: list[float] = []
        server_times: list[float] = []
        text = ""
        for _ in range(repeat):
            transcript = await engine.transcribe(clip.audio, OPTIONS)
            times.append(transcript.inference_s)
            text = transcript.text
            if server is not None:
                server_times.append(server.take())
        runs.append(
            ClipRun(clip.name, clip.duration_s, clip.cut, clip.reference, text, times, server_times)
        )
        logger.info("  %s: %.3f s  %r", clip.name, runs[-1].mean_s, text[:60])
    return runs


async def bench_engine(spec: EngineSpec, clips: list[Clip], repeat: int) -> EngineRun:
    settings = load_settings(**COMMON, **spec.overrides)
    logger.info("%s", spec.label)
    if spec.kind == "http":
        return await bench_http(spec, settings, clips, repeat)
    started = time.perf_counter()
    try:
        engine = await asyncio.to_thread(create_engine, settings, spec.kind)
    except EngineError as exc:  # e.g. openai-whisper without torch: say so and go on
        logger.warning("%s skipped: %s", spec.label, exc)
        return EngineRun(spec.label, spec.kind, "-", "-", {}, 0.0, skipped=str(exc))
    try:
        await engine.warmup()
        run = _engine_run(spec, engine, time.perf_counter() - started)
        run.clips = await measure(engine, clips, repeat, None)
    finally:
        await engine.aclose()
    return run


async def bench_http(
    spec: EngineSpec, settings: Settings, clips: list[Clip], repeat: int
) -> EngineRun:
    started = time.perf_counter()
    async with http_engine(settings) as (engine, server):
        run = _engine_run(spec, engine, time.perf_counter() - started)
        # The model and device that decode are the server's; the client adds the URL.
        run.extra = {**server.info.extra, "url": run.device}
        run.model, run.device = server.info.model, server.info.device
        run.clips = await measure(engine, clips, repeat, server)
    return run


def _engine_run(spec: EngineSpec, engine: Engine, load_s: float) -> EngineRun:
    info = engine.info
    return EngineRun(spec.label, info.name, info.model, info.device, dict(info.extra), load_s)


async def run_all(specs: tuple[EngineSpec, ...], clips: list[Clip], repeat: int) -> list[EngineRun]:
    return [await bench_engine(spec, clips, repeat) for spec in specs]


# ---------------------------------------------------------------- report


def summarise(run: EngineRun) -> dict[str, Any]:
    if run.skipped is not None:
        return {"skipped": run.skipped}
    audio_s = sum(c.audio_s for c in run.clips)
    inference_s = sum(c.mean_s for c in run.clips)
    scored = [c for c in run.clips if not c.cut]
    summary: dict[str, Any] = {
        "clips": len(run.clips),
        "audio_s": round(audio_s, 3),
        "load_s": round(run.load_s, 3),
        "mean_inference_s": inference_s / len(run.clips),
        "rtf": inference_s / audio_s,
        "wer": wer([c.reference for c in scored], [c.text for c in scored]),
        "wer_clips": len(scored),
    }
    server = [c.server_mean_s for c in run.clips]
    if all(s is not None for s in server) and server:
        server_s = sum(s for s in server if s is not None)
        summary |= {
            "round_trip_s": inference_s / len(run.clips),
            "server_inference_s": server_s / len(run.clips),
            "overhead_ms": (inference_s - server_s) / len(run.clips) * 1000,
            "overhead_ratio": inference_s / server_s,
        }
    return summary


def machine_info() -> dict[str, Any]:
    # Other work on the machine inflates times; the load average says how much there was.
    return {**evaluation_machine_info(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def render_markdown(
    runs: list[EngineRun], summaries: list[dict[str, Any]], meta: dict[str, Any]
) -> str:
    lines = [
        "# Engines: inference time, RTF and WER on the same clips",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['nproc']} CPUs, {meta['cpu']}; {meta['date']}; Python {meta['python']}"
        f"; commit {meta['commit']}; load average {meta['loadavg_start']} at start, "
        f"{meta['loadavg_end']} at end",
        "",
        f"{meta['clips']} clips, {meta['audio_s']:.1f} s of audio (clips cut to "
        f"{MAX_CLIP_S:g} s), {meta['repeat']} timed repeat(s) per clip after one warm-up; "
        "engines run one after another, one decode at a time. *inf s*: mean inference per "
        "clip; *load s*: build and warm up; *RTF*: inference s / audio s; *WER*: corpus WER "
        "over the uncut clips "
        f"({meta['wer_clips']}), Whisper's English normaliser. For http, *inf s* is the "
        "client's round trip and *server inf* the server engine's own time "
        "(`X-Inference-Time-Ms`); *overhead* = round trip - server inference.",
        "",
        "| engine | model | device | load s | inf s | RTF | WER | round trip s "
        "| server inf s | overhead ms | ratio |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run, s in zip(runs, summaries, strict=True):
        if run.skipped is not None:
            lines.append(f"| {run.label} | skipped: {run.skipped} | | | | | | | | | |")
            continue
        device = run.device
        if kind := run.extra.get("compute_type") or run.extra.get("dtype"):
            device = f"{device} {kind}"
        if run.engine == "http":
            device = f"{device}, via HTTP"
        lines.append(
            f"| {run.label} | {run.model} | {device} | {s['load_s']:.1f} "
            f"| {s['mean_inference_s']:.3f} | {s['rtf']:.3f} | {_num(s['wer'], 3)} "
            f"| {_num(s.get('round_trip_s'), 3)} | {_num(s.get('server_inference_s'), 3)} "
            f"| {_num(s.get('overhead_ms'), 1)} | {_num(s.get('overhead_ratio'), 2)} |"
        )
    measured = [r for r in runs if r.skipped is None]
    lines += [
        "",
        "## Per clip: mean inference s (http: round trip / server)",
        "",
        "| clip | audio s | " + " | ".join(r.label for r in measured) + " |",
        "| --- | ---: |" + " ---: |" * len(measured),
    ]
    for index, clip in enumerate(measured[0].clips if measured else []):
        cells = []
        for run in measured:
            c = run.clips[index]
            server_s = c.server_mean_s
            cells.append(f"{c.mean_s:.3f}" + (f" / {server_s:.3f}" if server_s else ""))
        cut = " (cut)" if clip.cut else ""
        lines.append(f"| {clip.name}{cut} | {clip.audio_s:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clips", type=int, default=None, help="first N clips (default all)")
    parser.add_argument("--repeat", type=int, default=3, help="timed decodes per clip")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="writes <out>.md and <out>.json"
    )
    args = parser.parse_args()
    if args.repeat < 1 or (args.clips is not None and args.clips < 1):
        parser.error("--clips and --repeat must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)  # progress on stderr; stdout keeps the report

    meta = {**machine_info(), "command": shlex.join(sys.orig_argv)}
    clips = load_clips(args.manifest, args.clips)
    runs = asyncio.run(run_all(SPECS, clips, args.repeat))
    summaries = [summarise(run) for run in runs]
    meta |= {
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "clips": len(clips),
        "audio_s": sum(c.duration_s for c in clips),
        "repeat": args.repeat,
        "wer_clips": sum(not c.cut for c in clips),
    }
    markdown = render_markdown(runs, summaries, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(markdown)
    payload = {
        "meta": meta,
        "engines": [
            {
                **asdict(run),
                "summary": summary,
                "clip_wer": {c.name: c.wer for c in run.clips},
            }
            for run, summary in zip(runs, summaries, strict=True)
        ],
    }
    Path(f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: streaming WER and latency per clip, against offline decodes in the same run.

One process runs an embedded nats-server, the worker (its own task) and a publisher that
streams every clip of the speech manifest, one at a time, at real time as its own session.
For each final it measures, from wall-clock receive time:

- last-chunk latency: since the send of the chunk that completed the final's `audio_end_s`
  (the utterance's last audio, endpoint silence included);
- end-of-speech latency: since the send of the chunk holding the utterance's last voiced
  frame. The trailing silence is counted with the worker's own VAD (webrtcvad, its
  aggressiveness, 20 ms frames) run over the whole clip, so its state matches the worker's
  frame for frame. For a final cut by the endpoint that silence is exactly
  `endpoint_silence_ms`; for one flushed by ``end`` it is whatever silence the clip ends with.

The same engine then decodes, after each session closes (the worker is idle then), the
whole clip (offline baseline) and each final's exact [audio_start_s, audio_end_s] slice
("bare inference", to compare with the message's `inference_ms`). WER uses Whisper's English
normaliser; corpus WER is jiwer over the list of clips, not a mean of per-clip ratios.

    .venv/bin/python bench/clips.py [--speed 1] [--model tiny.en]
        [--manifest ../shared/speech/manifest.jsonl] [--out bench/results/clips]

Writes ``<out>.md`` and ``<out>.json`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jiwer
import msgspec
import nats
import numpy as np
from nats.aio.client import Client as NatsClient
from whisper_normalizer.english import EnglishTextNormalizer

from stt_worker.audio import Pcm16, pcm16_to_float32
from stt_worker.config import SAMPLE_RATE_HZ, Settings, load_settings
from stt_worker.engines import create_engine
from stt_worker.engines.base import DecodeOptions, LocalEngine
from stt_worker.nats_server import NatsServer
from stt_worker.publisher import StreamStats, read_wav, stream_file
from stt_worker.vad import FRAME_MS, VoiceActivityDetector
from stt_worker.worker import Worker

logger = logging.getLogger("bench.clips")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "manifest.jsonl"
DEFAULT_OUT = ROOT / "bench" / "results" / "clips"
READY_TIMEOUT_S = 180.0
# After the last chunk: room for a queued final plus a 30 s window on a slow CPU.
RESULTS_TIMEOUT_S = 60.0

_normalise = EnglishTextNormalizer()


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    path: Path
    reference: str
    pcm: Pcm16
    # The worker's VAD decision for each 20 ms frame of the clip, from sample 0.
    speech: tuple[bool, ...]

    @property
    def duration_s(self) -> float:
        return self.pcm.size / SAMPLE_RATE_HZ


@dataclass(frozen=True, slots=True)
class Received:
    message: dict[str, Any]
    received_at: float  # time.time(), the clock StreamStats uses


@dataclass(frozen=True, slots=True)
class FinalResult:
    utterance_id: int
    audio_start_s: float
    audio_end_s: float
    ended_by: str  # "endpoint", "end" (flushed by the end message) or "cut" (max length)
    trailing_silence_s: float
    speech_end_s: float
    latency_last_chunk_ms: float
    latency_speech_end_ms: float
    inference_ms: float  # from the message
    bare_inference_ms: float  # transcribe_blocking on the same slice, here
    text: str
    bare_text: str

    @property
    def latency_over_bare(self) -> float:
        return self.latency_last_chunk_ms / self.bare_inference_ms


@dataclass(frozen=True, slots=True)
class PartialResult:
    utterance_id: int
    audio_end_s: float
    latency_ms: float  # since the send of the chunk that completed its audio
    inference_ms: float
    received_at: float


@dataclass(slots=True)
class ClipResult:
    name: str
    duration_s: float
    reference: str
    stream_text: str
    offline_text: str
    stream_wer: float
    offline_wer: float
    offline_inference_ms: float
    closed: bool
    finals: list[FinalResult] = field(default_factory=list)
    partials: list[PartialResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- clips


def load_clips(manifest: Path, vad_aggressiveness: int) -> list[Clip]:
    clips = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        path = manifest.parent / entry["file"]
        samples, sample_rate_hz = read_wav(path)
        if sample_rate_hz != SAMPLE_RATE_HZ or samples.shape[1] != 1:
            raise SystemExit(f"{path}: need 16 kHz mono, got {sample_rate_hz} Hz x{samples.shape}")
        pcm = np.ascontiguousarray(samples[:, 0])
        # The same detector class and frame grid as the worker (publisher chunks start at 0).
        vad = VoiceActivityDetector(vad_aggressiveness)
        speech = vad.push(pcm).speech + vad.flush().speech
        clips.append(Clip(entry["file"], path, entry["text"], pcm, speech))
    return clips


def audio_slice(clip: Clip, start_s: float, end_s: float) -> np.ndarray:
    """The clip's samples over [start_s, end_s), zero-padded as the worker pads its last frame."""
    start, end = round(start_s * SAMPLE_RATE_HZ), round(end_s * SAMPLE_RATE_HZ)
    piece = clip.pcm[start:end]
    if piece.size < end - start:
        piece = np.concatenate([piece, np.zeros(end - start - piece.size, dtype=np.int16)])
    return pcm16_to_float32([piece])


def trailing_silence_frames(clip: Clip, start_s: float, end_s: float) -> int:
    first, last = round(start_s * 1000 / FRAME_MS), round(end_s * 1000 / FRAME_MS)
    count = 0
    for index in range(min(last, len(clip.speech)) - 1, first - 1, -1):
        if clip.speech[index]:
            break
        count += 1
    return count


def wer(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer([_normalise(r) for r in references], [_normalise(h) for h in hypotheses])


# ---------------------------------------------------------------- streaming


async def stream_clip(
    nc: NatsClient, settings: Settings, clip: Clip, session_id: str, speed: float
) -> tuple[StreamStats, list[Received], bool]:
    """Stream one clip as one session; every message until session_closed, and whether it came."""
    sub = await nc.subscribe(f"{settings.transcription_subject_prefix}.{session_id}")
    await nc.flush()  # subscribed before the first chunk leaves
    stats = StreamStats()
    received: list[Received] = []

    async def collect() -> bool:
        async for msg in sub.messages:
            message = msgspec.msgpack.decode(msg.data)
            received.append(Received(message, time.time()))
            if message.get("type") == "session_closed":
                return True
        return False

    # The worker subscribes to e.g. "ai.voice.stream.*"; publishers send to prefix + id.
    prefix = settings.stream_subject.removesuffix(".*").removesuffix(".>")
    try:
        async with asyncio.TaskGroup() as tasks:
            collector = tasks.create_task(collect())
            await stream_file(
                nc, session_id, clip.path, speed=speed, subject_prefix=prefix, stats=stats
            )
            try:
                async with asyncio.timeout(RESULTS_TIMEOUT_S):
                    closed = await collector
            except TimeoutError:
                closed = False
    finally:
        await sub.unsubscribe()
    return stats, received, closed


async def bench_clip(
    nc: NatsClient,
    engine: LocalEngine,
    settings: Settings,
    clip: Clip,
    session_id: str,
    speed: float,
) -> ClipResult:
    stats, received, closed = await stream_clip(nc, settings, clip, session_id, speed)
    endpoint_frames = max(1, settings.endpoint_silence_ms // FRAME_MS)
    finals: list[FinalResult] = []
    partials: list[PartialResult] = []
    errors: list[str] = []
    for item in received:
        message = item.message
        if message.get("type") == "error":
            errors.append(f"{message.get('code')}: {message.get('message')}")
        if message.get("type") != "transcript":
            continue
        start_s, end_s = float(message["audio_start_s"]), float(message["audio_end_s"])
        sent = stats.send_time_for(end_s)
        if sent is None:
            errors.append(f"no chunk sent for audio_end_s={end_s}")
            continue
        latency_ms = (item.received_at - sent) * 1000
        if not message["is_final"]:
            partials.append(
                PartialResult(
                    int(message["utterance_id"]),
                    end_s,
                    latency_ms,
                    float(message["inference_ms"]),
                    item.received_at,
                )
            )
            continue
        silence = trailing_silence_frames(clip, start_s, end_s)
        if silence >= endpoint_frames:
            ended_by = "endpoint"
        elif end_s >= stats.audio_s - 1e-3:
            ended_by = "end"
        else:
            ended_by = "cut"
        speech_end_s = end_s - silence * FRAME_MS / 1000
        speech_sent = stats.send_time_for(speech_end_s) or sent
        # Engine time for exactly this audio, on the now idle engine (off the event loop).
        bare = await asyncio.to_thread(
            engine.transcribe_blocking, audio_slice(clip, start_s, end_s), DecodeOptions()
        )
        finals.append(
            FinalResult(
                utterance_id=int(message["utterance_id"]),
                audio_start_s=start_s,
                audio_end_s=end_s,
                ended_by=ended_by,
                trailing_silence_s=silence * FRAME_MS / 1000,
                speech_end_s=round(speech_end_s, 3),
                latency_last_chunk_ms=latency_ms,
                latency_speech_end_ms=(item.received_at - speech_sent) * 1000,
                inference_ms=float(message["inference_ms"]),
                bare_inference_ms=bare.inference_s * 1000,
                text=str(message["transcript"]).strip(),
                bare_text=bare.text.strip(),
            )
        )
    offline = await asyncio.to_thread(
        engine.transcribe_blocking, pcm16_to_float32([clip.pcm]), DecodeOptions()
    )
    stream_text = " ".join(f.text for f in finals if f.text)
    return ClipResult(
        name=clip.name,
        duration_s=clip.duration_s,
        reference=clip.reference,
        stream_text=stream_text,
        offline_text=offline.text.strip(),
        stream_wer=wer([clip.reference], [stream_text]),
        offline_wer=wer([clip.reference], [offline.text]),
        offline_inference_ms=offline.inference_s * 1000,
        closed=closed,
        finals=finals,
        partials=partials,
        errors=errors,
    )


async def run(args: argparse.Namespace) -> tuple[list[ClipResult], dict[str, Any]]:
    async with NatsServer() as server:
        settings = load_settings(nats_url=server.url, whisper_model_size=args.model)
        clips = load_clips(args.manifest, settings.vad_aggressiveness)
        engine = await asyncio.to_thread(create_engine, settings)
        if not isinstance(engine, LocalEngine):
            raise SystemExit(f"{engine.info.name} has no transcribe_blocking for the baselines")
        setup = {
            "engine": engine.info.name,
            "model": engine.info.model,
            "device": engine.info.device,
            **engine.info.extra,
            "endpoint_silence_ms": settings.endpoint_silence_ms,
            "partial_interval_ms": settings.partial_interval_ms,
            "vad_aggressiveness": settings.vad_aggressiveness,
            "max_utterance_s": settings.max_utterance_samples / SAMPLE_RATE_HZ,
            "speed": args.speed,
        }
        results: list[ClipResult] = []
        try:
            worker = Worker(settings, engine)
            stop = asyncio.Event()
            # A failing worker cancels the benchmark through the TaskGroup and raises its error.
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(worker.run(stop))
                try:
                    async with asyncio.timeout(READY_TIMEOUT_S):
                        await worker.ready.wait()
                    nc = await nats.connect(server.url, name="bench-clips", connect_timeout=5)
                    try:
                        for index, clip in enumerate(clips):
                            print(f"[{index + 1}/{len(clips)}] {clip.name}", file=sys.stderr)
                            session_id = f"bench-{index:02d}-{time.time_ns() % 10**6:06d}"
                            results.append(
                                await bench_clip(nc, engine, settings, clip, session_id, args.speed)
                            )
                    finally:
                        await nc.close()
                finally:
                    stop.set()
        finally:
            engine.close()
    return results, setup


# ---------------------------------------------------------------- report


def summarise(results: list[ClipResult]) -> dict[str, Any]:
    finals = [f for r in results for f in r.finals]
    partials = [p for r in results for p in r.partials]
    last = [f.latency_last_chunk_ms for f in finals]
    speech_end = [f.latency_speech_end_ms for f in finals]
    bare = [f.bare_inference_ms for f in finals]
    reported = [f.inference_ms for f in finals]
    return {
        "clips": len(results),
        "audio_s": round(sum(r.duration_s for r in results), 3),
        "finals": len(finals),
        "finals_by_ending": {
            kind: sum(f.ended_by == kind for f in finals) for kind in ("endpoint", "end", "cut")
        },
        "partials": len(partials),
        "stream_wer": wer([r.reference for r in results], [r.stream_text for r in results]),
        "offline_wer": wer([r.reference for r in results], [r.offline_text for r in results]),
        "latency_last_chunk_ms": _spread(last),
        "latency_speech_end_ms": _spread(speech_end),
        "partial_latency_ms": _spread([p.latency_ms for p in partials]),
        "partial_interval_ms": _spread(_partial_intervals(results)),
        "mean_inference_ms": _mean(reported),
        "mean_bare_inference_ms": _mean(bare),
        "mean_offline_inference_ms": _mean([r.offline_inference_ms for r in results]),
        "latency_over_bare_of_means": _mean(last) / _mean(bare) if bare else None,
        "latency_over_bare_median": (
            statistics.median(f.latency_over_bare for f in finals) if finals else None
        ),
        "finals_matching_bare_text": sum(f.text == f.bare_text for f in finals),
        "sessions_not_closed": [r.name for r in results if not r.closed],
    }


def _partial_intervals(results: list[ClipResult]) -> list[float]:
    """Receive-time gaps between consecutive partials of the same utterance."""
    gaps = []
    for result in results:
        for a, b in zip(result.partials, result.partials[1:], strict=False):
            if a.utterance_id == b.utterance_id:
                gaps.append((b.received_at - a.received_at) * 1000)
    return gaps


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _spread(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    p50, p95 = np.percentile(values, [50, 95])
    return {
        "n": len(values),
        "p50": float(p50),
        "p95": float(p95),
        "mean": statistics.fmean(values),
        "max": max(values),
    }


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "commit": commit,
    }


def render_markdown(
    results: list[ClipResult], summary: dict[str, Any], setup: dict[str, Any], meta: dict[str, Any]
) -> str:
    lines = [
        "# Streaming vs offline, per clip",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['nproc']} CPUs, {meta['cpu']}; {meta['date']}; "
        f"Python {meta['python']}; commit {meta['commit']}",
        "",
        "Setup: " + ", ".join(f"{k}={v}" for k, v in setup.items()),
        "",
        "Latency = receive time of the final minus the send time of the chunk holding "
        "(*last chunk*) the final's `audio_end_s`, endpoint silence included, or (*end of "
        "speech*) its last voiced frame, found with the worker's VAD (webrtcvad) run over the "
        "clip. *msg inf*: the message's `inference_ms`; *bare inf*: `transcribe_blocking` on "
        "the same slice, same engine, after the session. Times in ms.",
        "",
        "| clip | dur s | finals | partials | stream WER | offline WER | offline inf "
        "| last-chunk lat | end-of-speech lat | msg inf | bare inf |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.duration_s:.2f} | {len(r.finals)} | {len(r.partials)} "
            f"| {r.stream_wer:.3f} | {r.offline_wer:.3f} | {r.offline_inference_ms:.0f} "
            f"| {_each(f.latency_last_chunk_ms for f in r.finals)} "
            f"| {_each(f.latency_speech_end_ms for f in r.finals)} "
            f"| {_each(f.inference_ms for f in r.finals)} "
            f"| {_each(f.bare_inference_ms for f in r.finals)} |"
        )
    last, speech = summary["latency_last_chunk_ms"], summary["latency_speech_end_ms"]
    partial_lat, gaps = summary["partial_latency_ms"], summary["partial_interval_ms"]
    lines += [
        "",
        "## Overall",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| clips / audio | {summary['clips']} / {summary['audio_s']:.1f} s |",
        f"| finals (by ending) | {summary['finals']} {summary['finals_by_ending']} |",
        f"| streaming WER (corpus) | {summary['stream_wer']:.4f} |",
        f"| offline WER (corpus) | {summary['offline_wer']:.4f} |",
        f"| last-chunk -> final latency p50 / p95 / mean / max | {_stats(last)} |",
        f"| end-of-speech -> final latency p50 / p95 / mean / max | {_stats(speech)} |",
        f"| mean inference_ms in messages (finals) | {summary['mean_inference_ms']:.0f} |",
        f"| mean bare inference, same slices | {summary['mean_bare_inference_ms']:.0f} |",
        f"| mean offline inference per clip | {summary['mean_offline_inference_ms']:.0f} |",
        "| last-chunk latency / bare inference (ratio of means; median per final) "
        f"| {_ratio(summary['latency_over_bare_of_means'])}; "
        f"{_ratio(summary['latency_over_bare_median'])} |",
        f"| finals whose text equals the bare decode | {summary['finals_matching_bare_text']}"
        f" / {summary['finals']} |",
        f"| partials: count; latency p50 / p95 / mean / max | {summary['partials']}; "
        f"{_stats(partial_lat)} |",
        f"| partial interval within an utterance p50 / p95 / mean / max | {_stats(gaps)} |",
        f"| sessions without session_closed | {summary['sessions_not_closed'] or 'none'} |",
        "",
        "## Finals",
        "",
        "| clip | utt | audio s | ended by | trailing sil s | last-chunk lat | eos lat "
        "| msg inf | bare inf | lat/bare | text |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        for f in r.finals:
            same = "" if f.text == f.bare_text else f" (bare: {f.bare_text!r})"
            lines.append(
                f"| {r.name} | {f.utterance_id} | {f.audio_start_s:.2f}-{f.audio_end_s:.2f} "
                f"| {f.ended_by} | {f.trailing_silence_s:.2f} | {f.latency_last_chunk_ms:.0f} "
                f"| {f.latency_speech_end_ms:.0f} | {f.inference_ms:.0f} "
                f"| {f.bare_inference_ms:.0f} | {f.latency_over_bare:.2f} "
                f"| {f.text!r}{same} |"
            )
    errors = [(r.name, e) for r in results for e in r.errors]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {name}: {e}" for name, e in errors]
    lines += ["", "## Transcripts", ""]
    for r in results:
        lines += [
            f"- **{r.name}**",
            f"  - ref: {r.reference}",
            f"  - stream: {r.stream_text}",
            f"  - offline: {r.offline_text}",
        ]
    return "\n".join(lines) + "\n"


def _each(values: Any) -> str:
    return ", ".join(f"{v:.0f}" for v in values) or "-"


def _stats(spread: dict[str, float | int]) -> str:
    if not spread["n"]:
        return "-"
    return " / ".join(f"{spread[k]:.0f}" for k in ("p50", "p95", "mean", "max"))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = no pacing")
    parser.add_argument("--model", default="tiny.en", help="Whisper model (WHISPER_MODEL_SIZE)")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="writes <out>.md and <out>.json"
    )
    args = parser.parse_args()
    # The worker logs every session at INFO; keep stdout for the report.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    results, setup = asyncio.run(run(args))
    summary = summarise(results)
    meta = {**machine_info(), "command": shlex.join(sys.orig_argv)}
    markdown = render_markdown(results, summary, setup, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(markdown)
    payload = {
        "meta": meta,
        "setup": setup,
        "summary": summary,
        "clips": [asdict(r) for r in results],
    }
    Path(f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown)
    return 1 if summary["sessions_not_closed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Batched decoding for the CTranslate2 engine: jobs of several sessions in one model call.

CTranslate2's Whisper decodes a batch of mel windows of one length, with prompts whose
start-of-transcript token sits at one position, under one token cap. Jobs are grouped by all
three: the window is the engine's short-window bucket (a 2 s utterance is never padded to a
10 s companion's window), the prompt length follows the session's context, the cap the job's
kind. Each group is one encode and one generate. The decoder runs each item on its own, so a
job's tokens are those it gets alone; word times, the 30 s loop retry, and audio that needs
no decode or more than one window stay per job, as when decoded alone.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stt_worker.engines.base import Audio, DecodeOptions, Transcript, is_inaudible
from stt_worker.engines.ct2_windows import WindowResult, window_transcript
from stt_worker.engines.decoding import WINDOW_FRAMES

if TYPE_CHECKING:
    from stt_worker.engines.faster_whisper import FasterWhisperEngine


@dataclass(frozen=True, slots=True)
class _Job:
    index: int  # its place in the batch
    chunk: np.ndarray  # the log-mel frames of its audio
    frames: int  # its encoder window
    options: DecodeOptions


def decode_batch(
    engine: FasterWhisperEngine,
    jobs: Sequence[tuple[Audio, DecodeOptions]],
    alone: Callable[[Audio, DecodeOptions], Transcript],
) -> list[Transcript]:
    """Each job's transcript, as `alone(audio, options)` would give it."""
    transcripts: dict[int, Transcript] = {}
    groups: dict[tuple[int, int, int | None], list[_Job]] = collections.defaultdict(list)
    for index, (audio, options) in enumerate(jobs):
        mel = None if is_inaudible(audio) else engine.mel(audio)
        if mel is None or mel.shape[-1] - 1 > WINDOW_FRAMES:
            transcripts[index] = alone(audio, options)  # no decode, or several windows
            continue
        chunk = mel[:, : mel.shape[-1] - 1]
        job = _Job(index, chunk, engine.window_frames(chunk.shape[-1]), options)
        # Its length is the same whatever the language: the start sequence's tokens differ.
        prompt = engine.prompt_tokens(options.language or "en", options.task, options.prompt)
        groups[job.frames, len(prompt), options.max_new_tokens].append(job)
    for group in groups.values():
        for job, result in zip(group, _decode_group(engine, group), strict=True):
            transcripts[job.index] = window_transcript([(0, job.chunk.shape[-1], result)])
    return [transcripts[index] for index in range(len(jobs))]


def _decode_group(engine: FasterWhisperEngine, group: list[_Job]) -> list[WindowResult]:
    frames = group[0].frames
    encoded = engine.encode([job.chunk for job in group], frames)
    languages = engine.languages(encoded, [job.options.language for job in group])
    prompts = [
        engine.prompt_tokens(language, job.options.task, job.options.prompt)
        for job, language in zip(group, languages, strict=True)
    ]
    options = [job.options for job in group]
    generated = engine.generate(encoded, prompts, frames, languages, options)
    results = []
    for job, language, result in zip(group, languages, generated, strict=True):
        audio_frames = min(job.chunk.shape[-1], frames)
        # Word times need the window's encoder output alone; only finals that ask pay for it.
        encoded_alone = functools.partial(engine.encode, [job.chunk], frames)
        first = engine.window_result(result, language, job.options, audio_frames, encoded_alone)
        results.append(
            engine.finish_window(
                job.chunk, frames, job.options.language, job.options.prompt, job.options, first
            )
        )
    return results

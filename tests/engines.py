"""Engines that wrap the real one to inject faults: gates the test opens, a poisoned session."""

from __future__ import annotations

import asyncio

from stt_worker.engines.base import Audio, DecodeOptions, Engine, Transcript


class GatedEngine(Engine):
    """The real engine behind gates the test opens: warm-up and each decode wait for them."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.info = inner.info
        self.parallelism = inner.parallelism
        self.warm_gate = asyncio.Event()
        self.decode_gate = asyncio.Event()
        self.decoding = asyncio.Event()

    async def warmup(self) -> None:
        await self.warm_gate.wait()

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        self.decoding.set()
        await self.decode_gate.wait()
        return await self.inner.transcribe(audio, options)


class PoisonedEngine(Engine):
    """The real engine, except that it raises a library-style exception (not an EngineError)
    for the audio of sessions that asked for `language` == POISON: one bad utterance."""

    # Well formed (the protocol takes 2-3 lowercase letters) but no Whisper language.
    POISON = "zzq"

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.info = inner.info
        self.parallelism = inner.parallelism
        self.raised = 0

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        if options.language == self.POISON:
            self.raised += 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return await self.inner.transcribe(audio, options)

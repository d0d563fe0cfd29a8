"""`TurnCheckEngine`: any engine, plus Smart Turn on the audio of the jobs that ask for it.

A turn check (`DecodeOptions.turn_probability`) needs Smart Turn's verdict on its audio and,
unless that verdict alone holds the turn, the words. Smart Turn runs first (about 35 ms on
its own thread): below `hold_below` the speaker is mid-turn whatever the words, so the
decode is skipped and the check answers with no text. The worker's scheduler has it hear
each check (`screen`) in a slot and queues a decode only for a pause that sounds like an end;
`transcribe` does both in one call for any other caller. Speech pauses at nearly every word
gap, and a decode of the whole utterance at each one costs more than the worker has under
load (at 16 live sessions the checks alone took it past capacity); only the pauses that
sound like an end pay for a decode. Every other job passes straight through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16
from stt_worker.engines.base import Audio, DecodeOptions, Engine, EngineInfo, Transcript
from stt_worker.engines.smart_turn import SmartTurn, load_smart_turn

logger = logging.getLogger(__name__)


class TurnCheckEngine(Engine):
    """Wraps `inner`; with `smart_turn` (turn mode), Smart Turn is loaded by `load` (on its
    thread, at start); without, every job passes straight through."""

    def __init__(self, inner: Engine, smart_turn: bool, hold_below: float = 0.0) -> None:
        self.inner = inner
        self._wanted = smart_turn
        self._hold_below = hold_below
        self._smart_turn: SmartTurn | None = None
        # One thread: one Smart Turn at a time, each on one core (see `SmartTurn`).
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="smart-turn"
        )

    @property
    def info(self) -> EngineInfo:  # type: ignore[override]
        return self.inner.info

    @property
    def parallelism(self) -> int:  # type: ignore[override]
        return self.inner.parallelism

    @property
    def healthy(self) -> bool:
        return self.inner.healthy

    @property
    def batch_engine(self) -> Engine | None:
        # Jobs that ask for no turn probability pass straight through: the inner engine's.
        return self.inner.batch_engine

    async def load(self) -> None:
        """Load Smart Turn and run it once, so the first check pays no start-up cost."""
        if not self._wanted:
            return
        loop = asyncio.get_running_loop()
        smart_turn = await loop.run_in_executor(self._executor, load_smart_turn)
        await loop.run_in_executor(
            self._executor, smart_turn.probability, np.zeros(16_000, np.int16)
        )
        self._smart_turn = smart_turn

    @property
    def screens(self) -> bool:
        """Smart Turn is loaded: the scheduler has it hear checks (`screen`) first."""
        return self._smart_turn is not None

    async def screen(self, pcm: Sequence[Pcm16]) -> tuple[float | None, Transcript | None]:
        """Smart Turn's probability for a check's int16 frames, on its own thread, and the
        check's answer when that alone holds the turn (no decode then)."""
        loop = asyncio.get_running_loop()
        turn_prob = await loop.run_in_executor(self._executor, self._probability, pcm)
        if turn_prob is not None and turn_prob < self._hold_below:
            # Mid-turn by its voice: `TurnRule` holds on Smart Turn alone, and a check
            # without text never becomes a final (`Listener.turn_checked`).
            audio_s = sum(frame.size for frame in pcm) / SAMPLE_RATE_HZ
            return turn_prob, Transcript("", audio_s=audio_s, turn_prob=turn_prob)
        return turn_prob, None

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        if not options.turn_probability or self._smart_turn is None:
            return await self.inner.transcribe(audio, options)
        pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
        turn_prob, held = await self.screen((pcm,))
        if held is not None:
            return held
        transcript = await self.inner.transcribe(audio, options)
        return dataclasses.replace(transcript, turn_prob=turn_prob)

    def _probability(self, pcm: Sequence[Pcm16]) -> float | None:
        assert self._smart_turn is not None
        try:
            return self._smart_turn.probability(np.concatenate(pcm))
        except Exception:  # the words alone then decide (`TurnRule` without Smart Turn)
            logger.exception("Smart Turn failed; this turn check goes by its words")
            return None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

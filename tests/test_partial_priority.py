"""Partials decoded on a second copy of the model whose threads run at a lower CPU priority
(`engines/ct2_replicas`), on the real bundled tiny.en and the real kernel's thread table."""

from __future__ import annotations

import os
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

from stt_worker.config import load_settings
from stt_worker.engines.base import DecodeOptions
from stt_worker.engines.ct2_replicas import Replicas, in_niced_thread
from stt_worker.engines.faster_whisper import FasterWhisperEngine
from tests.helpers import SPEECH_DIR

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux threads")


def threads() -> dict[int, tuple[int, int]]:
    """This process's live threads: id -> (nice value, CPU clock ticks used)."""
    found = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # ended meanwhile
            continue
        found[int(task.name)] = (int(fields[16]), int(fields[11]) + int(fields[12]))
    return found


def jfk() -> np.ndarray:
    with wave.open(str(SPEECH_DIR / "jfk.wav")) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_partials_run_on_nicer_threads_and_finals_never_do() -> None:
    before = set(threads())
    engine = FasterWhisperEngine(
        load_settings(
            whisper_device="cpu",
            max_concurrent_inferences=2,
            whisper_cpu_threads=1,
            whisper_partial_nice=10,
        )
    )
    try:
        assert engine.background_slots == 1
        audio = jfk()

        def ticks(nicer: bool) -> int:
            new = {t: v for t, v in threads().items() if t not in before}
            return sum(cpu for nice, cpu in new.values() if (nice == own_nice() + 10) == nicer)

        assert ticks(nicer=True) < 10  # the nicer copy's threads exist, and have idled
        assert {nice for t, (nice, _) in threads().items() if t not in before} == {
            own_nice(),
            own_nice() + 10,
        }
        used = ticks(nicer=True)
        final = engine.transcribe_blocking(audio, DecodeOptions())
        assert ticks(nicer=True) - used <= 2  # a final ran on the foreground copy
        used = ticks(nicer=True)
        partial = engine.transcribe_blocking(audio, DecodeOptions(background=True))
        assert ticks(nicer=True) - used >= 5  # an 11 s decode: tens of ticks, there
        assert partial.text == final.text and "ask not" in final.text.lower()
    finally:
        engine.close()


@pytest.mark.parametrize(("slots", "nice"), [(2, 0), (1, 10)], ids=["setting-off", "one-slot"])
def test_one_copy_and_one_priority_when_off_or_with_one_slot(slots: int, nice: int) -> None:
    before = set(threads())
    engine = FasterWhisperEngine(
        load_settings(
            whisper_device="cpu", max_concurrent_inferences=slots, whisper_partial_nice=nice
        )
    )
    try:
        assert engine.background_slots == 0
        new = {nice for t, (nice, _) in threads().items() if t not in before}
        assert new == {own_nice()}
        assert engine.info.extra["partial_nice"] == "0"
    finally:
        engine.close()


def test_a_background_call_takes_the_nicer_copy_only_while_no_other_call_holds_it() -> None:
    replicas = Replicas(lambda threads: object(), slots=2, background_nice=10)
    assert replicas.split and replicas.foreground is not replicas.background
    with replicas.hold(background=True) as first:
        assert first is replicas.background and replicas.current is first
        with replicas.hold(background=False) as nested:  # a batch decoding one job alone
            assert nested is first
        seen: list[object] = []

        def second() -> None:
            with replicas.hold(background=True) as model:
                seen.append(model)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
        assert seen == [replicas.foreground]
    with replicas.hold(background=False) as final:
        assert final is replicas.foreground
    with replicas.hold(background=True) as again:
        assert again is replicas.background


def test_the_niced_thread_lends_its_nice_value_to_the_threads_it_starts() -> None:
    def start_one() -> int:
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(own_nice()))
        thread.start()
        thread.join()
        return seen[0]

    assert in_niced_thread(3, start_one) == own_nice() + 3
    assert own_nice() == os.getpriority(os.PRIO_PROCESS, 0)  # the caller's is unchanged
    with pytest.raises(ZeroDivisionError):
        in_niced_thread(1, lambda: 1 // 0)

"""CPU priority for the decodes that can wait: a second copy of the model for partials.

On a shared CPU every runnable thread gets an equal share, whatever it decodes. A worker
keeps one slot busy with partials (their cadence follows what the engine serves), so where
workers share cores (several pods on a node, the chaos bench's 3 workers on 2 cores) each
one's partials take a share from every other one's finals: measured on this 2-core machine,
24 sessions on 3 workers, a final's decode took 660 ms against 325 ms on one worker with the
same load.

CTranslate2 runs each call on a worker thread of the model object, not on the caller's, and
has no per-call priority. Linux keeps a nice value per thread, which a new thread inherits
from the thread that starts it, and which an unprivileged process may raise but never lower
again. So the model is loaded twice: the foreground copy (a worker thread per slot, at the
process's own nice value) and the background copy (one worker thread, started from a thread
whose nice value was raised first). Foreground calls (finals, probes, turn checks) always
take the foreground copy: a second final beside a first must not run at the partials'
priority (tried: it then lost more than the partials gave). A background call (a partial)
takes the background copy, or the foreground one while another partial holds it. A thread
at nice 10 weighs about a tenth of one at 0 in the kernel's fair scheduler: partials run on
what finals, the audio path and other processes leave.

The price is memory: a warmed engine holds 541 MB instead of 334 with tiny.en, 705 instead
of 419 with base (the copy's weights, and every worker thread's buffers for each window
size). Opt-in (`WHISPER_PARTIAL_NICE`): it helps workers that share cores
(bench/results/shared_cores.md) but not one worker with the cores to itself, near its
capacity. With one slot, on a GPU, or at 0 there is one copy and one priority.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

Model = TypeVar("Model")


class Replicas(Generic[Model]):
    """The model's copies and how many more calls each has room for."""

    def __init__(self, load: Callable[[int], Model], slots: int, background_nice: int) -> None:
        """`load(threads)` loads a copy with `threads` CTranslate2 worker threads."""
        self.split = background_nice > 0
        # A foreground call in the background slot (a speculation) must not queue inside
        # CTranslate2 behind the others: one more worker thread.
        self.foreground = load(slots + 1 if self.split else slots)
        self.background = (
            in_niced_thread(background_nice, lambda: load(1)) if self.split else self.foreground
        )
        self._background_free = self.split
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def current(self) -> Model:
        """The copy this thread holds (`hold`), else the foreground one."""
        model: Model | None = getattr(self._local, "model", None)
        return self.foreground if model is None else model

    @contextlib.contextmanager
    def hold(self, background: bool) -> Iterator[Model]:
        """The copy for one call on this thread: a background call takes the background copy
        when no other call holds it; within a call (a batch decoding one job alone), the
        call's copy."""
        held: Model | None = getattr(self._local, "model", None)
        if held is not None:
            yield held
            return
        with self._lock:
            taken = background and self._background_free
            self._background_free &= not taken
        model = self.background if taken else self.foreground
        self._local.model = model
        try:
            yield model
        finally:
            self._local.model = None
            if taken:
                with self._lock:
                    self._background_free = True

    def each(self) -> list[Model]:
        """Every distinct copy (to unload them)."""
        return [self.foreground, self.background] if self.split else [self.foreground]


def in_niced_thread(nice: int, make: Callable[[], Model]) -> Model:
    """`make()` run on a new thread whose nice value is raised by `nice` first, so that the
    threads it starts inherit that value. Raising needs no privilege; an error is raised
    here, on the caller's thread."""
    box: list[Model] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
            box.append(make())
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="engine-niced-load")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]

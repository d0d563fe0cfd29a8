"""`runtime/shed_runs.py` alone: a run of learned shapes is one match with its messages and
bytes, never through a short payload holding "end"; patterns are compiled within one budget
for every subject, and only for the newest `MAX_SUBJECTS` subjects."""

from __future__ import annotations

import itertools

import pytest

from stt_worker.runtime import shed_runs
from stt_worker.runtime.shed_runs import MAX_SUBJECTS, Runs

SUBJECT = b"ai.voice.stream.flood"


def message(size: int, sid: bytes = b"1", fill: bytes = b"\xc1") -> tuple[bytes, bytes]:
    line = b"MSG %s %s %d" % (SUBJECT, sid, size)
    return line, line + b"\r\n" + fill * size + b"\r\n"


def learned(sizes: list[int], sids: tuple[bytes, ...] = (b"1",)) -> Runs:
    runs = Runs()
    for size, sid in itertools.product(sizes, sids):
        line, _ = message(size, sid)
        runs.learn(SUBJECT, line, size, size <= 32)
    return runs


def test_a_run_of_mixed_shapes_and_sids_is_one_match_with_its_counts():
    runs = learned([40, 41, 7, 150], sids=(b"1", b"12"))  # "1" begins "12": no mix-up
    shapes = [(40, b"1"), (7, b"12"), (150, b"1"), (41, b"12"), (40, b"12")] * 30
    wire = b"".join(message(size, sid)[1] for size, sid in shapes)
    tail = message(99)[1]  # a size never learned ends the run
    end, messages, nbytes = runs.match(SUBJECT, wire + tail, 0)
    assert (end, messages, nbytes) == (len(wire), len(shapes), len(wire))
    assert runs.match(SUBJECT, wire + tail, end) == (end, 0, 0)


def test_a_short_payload_with_end_in_it_is_never_inside_a_run():
    runs = learned([10, 40])
    before = message(40)[1] * 5 + message(10)[1] * 3
    held = b"MSG %s 1 10\r\nxxxx\xa3endxx\r\n" % SUBJECT  # short: may be an `end`
    after = b"MSG %s 1 40\r\n%s\r\n" % (SUBJECT, b"end" * 13 + b"e")  # long: never one
    end, messages, _ = runs.match(SUBJECT, before + held + after, 0)
    assert (end, messages) == (len(before), 8)
    assert runs.match(SUBJECT, after * 3, 0)[1] == 3


def test_compiles_share_one_budget_and_only_the_newest_subjects_have_patterns(
    monkeypatch: pytest.MonkeyPatch,
):
    clock = itertools.count(step=1.0)  # each reading of the clock is a second later
    monkeypatch.setattr(shed_runs.time, "monotonic", lambda: next(clock))
    runs = Runs()
    subjects = [b"%s-%d" % (SUBJECT, n) for n in range(MAX_SUBJECTS + 4)]
    for subject in subjects:
        line = b"MSG %s 1 40" % subject
        runs.learn(subject, line, 40, False)
    kept = subjects[4:]  # the four oldest made room
    assert [runs.match(s, b"", 0) for s in subjects[:4]] == [(0, 0, 0)] * 4
    assert runs.compiles == 0
    for subject in kept:  # a compile (1 s by the clock) shuts every subject out for 10 s
        runs.match(subject, b"", 0)
    assert runs.compiles == 2  # at the 1st and the 11th look
    for _ in range(40):
        for subject in kept:
            runs.match(subject, b"", 0)
    # Each compile is followed by ten times its time without one, whichever subject asks.
    assert runs.compiles == len(kept)
    wire = b"".join(b"MSG %s 1 40\r\n%s\r\n" % (kept[-1], b"\xc1" * 40) for _ in range(9))
    assert runs.match(kept[-1], wire, 0) == (len(wire), 9, len(wire))

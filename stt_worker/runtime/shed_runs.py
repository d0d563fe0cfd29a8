"""Runs of a shed subject's messages matched in C: the parser's fast path through a flood.

A flood repeats a few message shapes (`MSG <subject> <sid> <size>`), not always one: a
`state_change` flood alternates two sizes, garbage takes a hundred and more. `Runs` learns a
held subject's shapes and compiles one regular expression that matches a whole run of them
back to back, so that a run costs one match and one count in C, no Python step per message
(~130 ns a message for a hundred sizes, against ~700 stepping through them one by one).
Plain ``MSG`` lines without a reply subject only (no headers, so no handover marker); a
payload short enough to be an `end` matches only without the bytes "end" in it, so an `end`
is never in a run: it is left to the parser, to be looked at.

A run's messages are counted by their control lines (CRLF, then the line up to its size):
exact unless a payload in it holds its own subject's control line, which can only raise the
count of the flood that sent it. Its bytes are the run's bytes on the wire.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

# Sizes one subject's pattern holds at most: a flood of more distinct sizes has its others
# stepped through one by one (compiling grows with the count: ~3 ms for 170 sizes).
MAX_SIZES = 256
# Subscriptions (sids) per subject at most, each a control-line prefix of its own.
MAX_PREFIXES = 4
# Subjects with a pattern at most (the newest kept): a flood over more session ids has the
# others stepped through one by one.
MAX_SUBJECTS = 16
# After a compile, none (of any subject) until this many times as long as it took has
# passed: compiling takes at most a tenth of the parser's time however many subjects and
# sizes a flood shows (a first read of a hundred new sizes would otherwise compile a
# hundred times).
RECOMPILE_WAIT = 10.0


@dataclass(slots=True)
class _Shapes:
    prefixes: set[bytes] = field(default_factory=set)
    sizes: dict[int, bool] = field(default_factory=dict)  # size: whether it may be an `end`
    run: re.Pattern[bytes] | None = None
    lines: tuple[bytes, ...] = ()  # what begins each message after a run's first: CRLF, prefix
    shortest: int = 0  # the bytes of the shortest message: fewer left, no run to match
    alike: int = 0  # one shape only: its bytes, so a run is counted without a scan
    stale: bool = False


class Runs:
    """Per held subject, its learned shapes and the pattern of a run of them."""

    def __init__(self) -> None:
        self._subjects: dict[bytes, _Shapes] = {}
        self._compilable_at = float("-inf")  # one budget for every subject
        self.compiles = 0

    def learn(self, subject: bytes, line: bytes, size: int, may_end: bool) -> None:
        """`line` (a control line without CRLF) begins a shed message of `size` bytes, one
        that `may_end` when short enough to be an `end`: a shape for `subject`'s runs."""
        # "MSG <subject> <sid> <size>": with a reply subject one prefix would begin another.
        if not line.startswith(b"MSG ") or line.count(b" ") != 3 or size <= 0:
            return
        prefix = line.rpartition(b" ")[0]
        shapes = self._subjects.get(subject)
        if shapes is None:
            if len(self._subjects) >= MAX_SUBJECTS:
                del self._subjects[next(iter(self._subjects))]
            shapes = self._subjects[subject] = _Shapes()
        if prefix not in shapes.prefixes:
            if len(shapes.prefixes) >= MAX_PREFIXES:
                return
            shapes.prefixes.add(prefix)
            shapes.stale = True
        if size not in shapes.sizes and len(shapes.sizes) < MAX_SIZES:
            shapes.sizes[size] = may_end
            shapes.stale = True

    def match(self, subject: bytes, buf: bytes, pos: int) -> tuple[int, int, int]:
        """The run of `subject`'s learned shapes at `pos` in `buf`, whole messages only:
        where it ends, its messages and their bytes on the wire (`pos`, 0, 0 if none)."""
        shapes = self._subjects.get(subject)
        if shapes is None:
            return pos, 0, 0
        if shapes.stale and (now := time.monotonic()) >= self._compilable_at:
            _compile(shapes)
            self.compiles += 1
            done = time.monotonic()
            self._compilable_at = done + RECOMPILE_WAIT * (done - now)
        # A large payload not all in `buf` would cost the pattern a scan to the end.
        if shapes.run is None or len(buf) - pos < shapes.shortest:
            return pos, 0, 0
        found = shapes.run.match(buf, pos)
        if found is None:
            return pos, 0, 0
        end = found.end()
        if shapes.alike:
            return end, (end - pos) // shapes.alike, end - pos
        count = buf.count
        return end, 1 + sum(count(line, pos, end) for line in shapes.lines), end - pos


def _compile(shapes: _Shapes) -> None:
    """The pattern of a run: messages back to back, each a control line of one of the
    prefixes and one of the sizes, then that many bytes. The sizes are a trie on their
    digits, so a message tries at most eleven branches a digit."""
    prefixes, sizes = sorted(shapes.prefixes), sorted(shapes.sizes)
    lines = b"(?:" + b"|".join(re.escape(p) for p in prefixes) + b") "
    payloads = _trie(b"", [b"%d" % size for size in sizes], shapes.sizes)
    shapes.run = re.compile(b"(?:" + lines + payloads + b"\r\n)++", re.DOTALL)
    shapes.lines = tuple(b"\r\n" + prefix + b" " for prefix in prefixes)
    lengths = {len(p) + len(b" %d\r\n\r\n" % s) + s for p in prefixes for s in sizes}
    shapes.shortest = min(lengths)
    shapes.alike = lengths.pop() if len(lengths) == 1 else 0
    shapes.stale = False


def _trie(done: bytes, tails: list[bytes], may_end: dict[int, bool]) -> bytes:
    """The digits still to match (`tails`) after `done`, then CRLF and the payload."""
    branches = []
    if b"" in tails:
        size = int(done)
        # Byte by byte, none starting "end": ~15 ns a byte, for payloads of 32 bytes at most.
        payload = rb"(?:(?!end).){%d}" if may_end[size] else rb".{%d}"
        branches.append(rb"\r\n" + payload % size)
    for digit in sorted({tail[:1] for tail in tails if tail}):
        rest = [tail[1:] for tail in tails if tail[:1] == digit]
        branches.append(digit + _trie(done + digit, rest, may_end))
    return branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"

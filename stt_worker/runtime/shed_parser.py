"""nats-py's protocol parser with shedding built in: a shed subject's messages are skipped by
offset, before the client makes bytes, a message object or a task of them.

Why not nats-py's own parser: per message it matches the control line at the buffer's start,
trims the buffer, copies the payload and awaits the client's `_process_msg`, which builds a
`Msg`. At a flood's rate (hundreds of thousands a second, or hundreds of MB/s of maximal
chunks) that per-message work is what the worker's one event loop spends its time on, and
the honest sessions' messages wait behind it (bench/results/neighbours.md). Here a run of a
held subject's messages in shapes seen before is one regular-expression match
(`shed_runs.Runs`), a message outside one a dictionary lookup of its control line; a large
payload is dropped as it arrives, never buffered; the buffer is trimmed once per read, not
per message. Everything else (honest messages, PING, INFO, ...)
goes on as nats-py handles it. `python -m bench.shed_parser` measures it against nats-py's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from nats.errors import ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE, AWAITING_MSG_PAYLOAD, Parser

from stt_worker.core.handover import MARKER_HEADER
from stt_worker.runtime.nats_parser import HMSG_AT, MSG_AT
from stt_worker.runtime.shed_runs import Runs

if TYPE_CHECKING:
    from stt_worker.runtime.shedding import Shedder

_CRLF = b"\r\n"
_MARKER = MARKER_HEADER.encode()
# A held message with headers and at most this many bytes may be a marker: looked at.
_MARKER_BYTES = 256
# Control lines of shed messages remembered for the fast path (a flood repeats a few; a
# garbage flood over 16 session ids, some 3,200: ~150 bytes each).
_MAX_SHED_LINES = 8192
# Messages taken one by one after runs were looked for in vain, before the next look: twice
# as many after each look in vain, up to this many.
_MAX_STEPS_AFTER_MISS = 64


class ShedParser(Parser):
    """Drop-in for the client's `_ps`: `parse` is fed each read of the socket, in order."""

    def __init__(self, nc: Any, shedder: Shedder) -> None:
        self._shedder = shedder
        self._epoch = 0
        # A shed message's control line (no CRLF): its subject, payload size and whether
        # the payload may be an `end` (looked at, never skipped blind).
        self._shed_lines: dict[bytes, tuple[bytes, int, bool]] = {}
        self._runs = Runs()  # per shed subject, runs of its messages matched in C
        self._misses = self._pause = 0  # looks for a run in vain lately, and their pause
        super().__init__(nc)

    def reset(self) -> None:
        super().reset()
        self._epoch += 1  # tells a `parse` under way across an await that it is stale
        # Bytes still to drop of a shed payload that ran past the last read.
        self._skip = 0

    @classmethod
    def replacing(cls, old: Parser, shedder: Shedder) -> ShedParser:
        """A parser that takes over where `old` stands (mid-message included)."""
        new = cls(old.nc, shedder)
        new.buf, new.state, new.needed = old.buf, old.state, old.needed
        # nats-py's own argument has no "held": a payload it began is never a shed one.
        new.header_needed, new.msg_arg = old.header_needed, {"held": False, **old.msg_arg}
        return new

    def dropping(self) -> int:
        """Bytes still to come of a shed payload: a transport may drop them unread
        (`shed_transport.ShedTransport`)."""
        return self._skip

    def dropped(self, nbytes: int) -> None:
        """`nbytes` of them were dropped before `parse` saw them."""
        self._skip -= nbytes

    async def parse(self, data: bytes = b"") -> None:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
        if self.state == AWAITING_MSG_PAYLOAD and len(self.buf) + len(data) < self.needed + 2:
            self.buf += data  # a large payload still arriving: no walk over it yet
            return
        # Walked as bytes, so that a control line sliced off is a key for `_shed_lines`.
        buf = bytes(self.buf) + data if self.buf else data
        self.buf = bytearray()
        epoch = self._epoch
        pos = await self._walk(buf, time.monotonic(), epoch)
        if self._epoch != epoch:
            return
        if pos < len(buf):
            self.buf += memoryview(buf)[pos:]
        else:
            self._skip = pos - len(buf)

    async def _walk(self, buf: bytes, now: float, epoch: int) -> int:
        """Take in the messages in `buf`: where the first one not complete in it starts (or
        past its end by what is left of a shed payload)."""
        pos, shed_lines, shedder = 0, self._shed_lines, self._shedder
        while pos < len(buf) and self._epoch == epoch:
            if self.state == AWAITING_MSG_PAYLOAD:
                end = pos + self.needed + len(_CRLF)
                if len(buf) < end:
                    break
                await self._payload(buf, pos)
                pos = end
                continue
            eol = buf.find(_CRLF, pos)
            if eol < 0:
                break  # a line split across reads
            line = buf[pos:eol]
            shed = shed_lines.get(line)
            if shed is not None:
                if not shedder.holds(shed[0], now):
                    pos = eol + len(_CRLF)
                    pos += await self._control(line, now, probe=True)
                    continue
                run_end = self._skip_run(buf, pos, shed[0])
                if run_end != pos:
                    pos = run_end
                    continue
            pos = eol + len(_CRLF)
            pos += await self._control(line, now)
        return pos

    def _skip_run(self, buf: bytes, pos: int, subject: bytes) -> int:
        """A flood's fast path: the messages of held `subject` back to back from `pos` whose
        control lines were seen shed before, skipped and counted at once; where the run
        ends (past `buf` by what is left of a payload). A payload that may be an `end` ends
        the run, to be looked at whole."""
        # The loop a flood's messages outside runs go through: locals, `find` and the lookup
        # (measured ~25% faster than asking the shedder per message).
        messages = nbytes = 0
        shed_lines, find, length, runs = self._shed_lines, buf.find, len(buf), self._runs
        while True:
            # Runs of learned shapes in C (`shed_runs`); what they leave, one by one. After
            # a look in vain (no run of two), more messages go one by one before the next,
            # up to `_MAX_STEPS_AFTER_MISS` (floods of subjects interleaved make runs of one).
            if self._pause:
                self._pause -= 1
            else:
                pos, many, many_bytes = runs.match(subject, buf, pos)
                messages += many
                nbytes += many_bytes
                if many > 1:
                    self._misses = 0
                else:  # a run of one is no better than a step
                    self._misses = min(2 * self._misses or 1, _MAX_STEPS_AFTER_MISS)
                    self._pause = self._misses
            if (eol := find(_CRLF, pos)) < 0:
                break
            line = buf[pos:eol]
            shed = shed_lines.get(line)
            if shed is None or shed[0] != subject:
                break
            start, size = eol + 2, shed[1]
            if shed[2] and (start + size > length or _looked_at(buf, start, start + size) >= 0):
                break
            messages += 1
            nbytes += start + size + 2 - pos  # its bytes on the wire, as a run's
            pos = start + size + 2
        if messages:
            self._shedder.count(subject, nbytes, messages)
        return pos

    async def _control(self, line: bytes, now: float, *, probe: bool = False) -> int:
        """Take in a control line (without its CRLF): the bytes to skip when it begins a
        message that is shed; a `probe` (the hold just ended) goes to admission."""
        found = MSG_AT.match(line + _CRLF) or HMSG_AT.match(line + _CRLF)
        if found is None:
            await self._other(bytearray(line + _CRLF))
            return 0
        subject, sid, _, reply, *sizes = found.groups()
        needed = int(sizes[-1])
        held = not probe and self._shedder.holds(subject, now)
        if held:
            if len(self._shed_lines) >= _MAX_SHED_LINES:
                self._shed_lines.clear()
            small = self._shedder.maybe_end(needed) or (len(sizes) == 2 and needed <= _MARKER_BYTES)
            self._shed_lines[line] = (subject, needed, small)
            self._runs.learn(subject, line, needed, small)
            if not small:
                self._shedder.count(subject, len(line) + needed + 4)
                return needed + len(_CRLF)
        if not sid.isdigit():
            # As nats-py says it: the client reconnects, where a ValueError would end its reads.
            raise ProtocolError("nats: malformed MSG")
        self.msg_arg = {"subject": subject, "sid": int(sid), "reply": reply or b"", "held": held}
        self.msg_arg["wire"] = len(line) + needed + 4  # its bytes on the wire, if shed
        self.needed, self.header_needed = needed, int(sizes[0]) if len(sizes) == 2 else 0
        self.state = AWAITING_MSG_PAYLOAD
        return 0

    async def _payload(self, buf: bytes, pos: int) -> None:
        """Hand the message at `pos` (its payload complete in `buf`) to the client."""
        arg, headers, needed = self.msg_arg, self.header_needed, self.needed
        self.state, self.header_needed = AWAITING_CONTROL_LINE, 0
        hdr = buf[pos : pos + headers] if headers else None
        payload = buf[pos + headers : pos + needed]
        if arg["held"] and not self._shedder.is_end(payload) and not _is_marker(hdr):
            self._shedder.count(arg["subject"], arg["wire"])
            return
        await self.nc._process_msg(arg["sid"], arg["subject"], arg["reply"], payload, hdr)

    async def _other(self, line: bytearray) -> None:
        """PING, PONG, INFO, +OK, -ERR (or a bad line): nats-py's parser handles it alone."""
        self.buf = line
        await super().parse()
        self.buf = bytearray()


def _looked_at(buf: bytes, start: int, end: int) -> int:
    """Where in `buf[start:end]` a held message may be one never shed (an `end`, a marker of
    `core/handover.py`), or -1."""
    end_at = buf.find(b"end", start, end)
    marker_at = buf.find(_MARKER, start, end)
    if end_at < 0 or 0 <= marker_at < end_at:
        return marker_at
    return end_at


def _is_marker(headers: bytes | None) -> bool:
    return headers is not None and _MARKER in headers

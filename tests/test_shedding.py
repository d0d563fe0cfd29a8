"""Shedding in the NATS client's protocol parser (`runtime/shedding.py`, `shed_parser.py`),
driven with the wire protocol as nats-server writes it: a shed subject's messages are
skipped for the hold (large payloads too, across reads), `end` always passes, other subjects
and protocol lines pass whole and in order, and the first message after the hold goes
through again (its followers held until it is admitted)."""

from __future__ import annotations

import asyncio
import random

import msgpack
import pytest
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from stt_worker.runtime import nats_parser
from stt_worker.runtime.shedding import Shedder
from stt_worker.runtime.telemetry.metrics import Metrics

FLOODER = "ai.voice.stream.flood"
HONEST = "ai.voice.stream.honest"


class Reader:
    """What the parser hands the client: `_process_msg` per MSG, `_process_ping` per PING."""

    def __init__(self) -> None:
        self.processed: list[tuple[bytes, bytes, bytes | None]] = []
        self.pings = 0
        self._ps = Parser(self)

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:
        self.processed.append((subject, data, headers))

    async def _process_ping(self) -> None:
        self.pings += 1

    @property
    def subjects(self) -> list[bytes]:
        return [subject for subject, _, _ in self.processed]


def wire(subject: str, message: dict | bytes, headers: bytes = b"") -> bytes:
    payload = message if isinstance(message, bytes) else msgpack.packb(message)
    if headers:
        size = len(headers) + len(payload)
        line = b"HMSG %s 1 %d %d\r\n" % (subject.encode(), len(headers), size)
        return line + headers + payload + b"\r\n"
    return b"MSG %s 1 %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)


def installed(hold_s: float = 0.2) -> tuple[Reader, Shedder, Metrics]:
    reader = Reader()
    metrics = Metrics()
    shedder = Shedder(metrics, hold_s=hold_s)
    shedder.install(reader)  # type: ignore[arg-type]
    return reader, shedder, metrics


async def feed(reader: Reader, data: bytes, step: int) -> None:
    """`data` in reads of `step` bytes, as the socket may cut it anywhere."""
    for start in range(0, len(data), step):
        await reader._ps.parse(data[start : start + step])


async def test_a_shed_subject_is_dropped_in_the_reader_for_the_hold_and_end_passes():
    reader, shedder, metrics = installed()
    payload = msgpack.packb({"type": "state_change", "state": "responding"})
    state = wire(FLOODER, payload)
    await reader._ps.parse(state)
    shedder.shed(FLOODER)
    await reader._ps.parse(state * 100 + wire(HONEST, {"type": "start"}) + state * 100)
    await reader._ps.parse(wire(FLOODER, {"type": "end"}))
    assert reader.subjects == [FLOODER.encode(), HONEST.encode(), FLOODER.encode()]
    assert shedder.shed_count == 200
    assert metrics.registry.get_sample_value("stt_shed_messages_total") == 200
    assert shedder.take(FLOODER) == (200, 200 * len(state))  # bytes on the wire
    # The flood meter's count is apart from the notice's, and taken every tick.
    assert shedder.arrivals() == [(FLOODER, 200 * len(state))]
    assert shedder.arrivals() == []
    await asyncio.sleep(0.25)  # the hold is over: the next one goes to admission again...
    await reader._ps.parse(state * 50)
    assert reader.subjects[-1] == FLOODER.encode() and len(reader.processed) == 4
    assert shedder.shed_count == 249  # ... and the rest wait shed for its verdict
    shedder.release(FLOODER)  # admitted: the hold ends
    await reader._ps.parse(state * 2)
    assert len(reader.processed) == 6 and shedder.shed_count == 249


async def test_large_shed_payloads_are_skipped_across_reads_and_the_rest_arrives_whole():
    reader, shedder, _ = installed(hold_s=60)
    shedder.shed(FLOODER)
    chunk = {"type": "audio_chunk", "audio": b"\x01" * 256_000}
    honest = {"type": "audio_chunk", "audio": bytes(range(256)) * 100}
    traced_end = wire(HONEST, {"type": "end"}, headers=b"NATS/1.0\r\nTrace: t1\r\n\r\n")
    end = msgpack.packb({"type": "end"})
    # Short payloads may be an `end`: looked at (garbage with "end" in it too), the `end` kept.
    short = [wire(FLOODER, b"\xc1" * len(end)), wire(FLOODER, b"\xa3end".ljust(len(end)))]
    garbage = [wire(FLOODER, b"\xc1" * 40), wire(FLOODER, b"\xc1" * 3), *short * 3]
    garbage += [wire(FLOODER, end), *short]
    shed = wire(FLOODER, chunk)
    parts = [shed * 3, wire(HONEST, honest), b"PING\r\n", shed, traced_end, *garbage]
    stream = b"".join([*parts, wire("a.\x0bb", b"x")])
    for step in (1, 7, 1000, 32768, len(stream)):
        reader.processed.clear()
        await feed(reader, stream, step)
        assert [(s, len(d)) for s, d, _ in reader.processed] == [
            (HONEST.encode(), len(msgpack.packb(honest))),
            (HONEST.encode(), len(end)),
            (FLOODER.encode(), len(end)),
            (b"a.\x0bb", 1),  # a subject nats-py took apart (nats_parser.py) comes through
        ], step
        assert msgpack.unpackb(reader.processed[0][1]) == honest
        assert reader.processed[1][2] == b"NATS/1.0\r\nTrace: t1\r\n\r\n"
    assert reader.pings == 5
    # Per pass: four 256 KB chunks and the 40-byte garbage skipped, the 3-byte one and the
    # eight like an `end` (short enough to be one) looked at and shed.
    assert shedder.shed_count == 5 * 14
    assert reader._ps.buf == bytearray() and not reader._ps._skip


@pytest.mark.parametrize("subject", [FLOODER, "ai.voice.stream.weekend"])
async def test_runs_of_alike_messages_are_counted_exactly_and_an_end_among_them_passes(
    subject: str,
):
    # Runs of one message shape are skipped in one match (`_repeats`): the counts must be
    # what a message-by-message walk gives, however the reads cut them, and an `end` in a
    # run of short payloads (any of which may be one) still reaches the worker, also when
    # the subject itself has "end" in it.
    reader, shedder, _ = installed(hold_s=60)
    short, state = b"\xc1" * 10, msgpack.packb({"type": "state_change", "state": "listening"})
    end = msgpack.packb({"type": "end"})
    runs = [wire(subject, short) * 40, wire(subject, end), wire(subject, short) * 25]
    runs += [wire(subject, state) * 300, wire(HONEST, {"type": "start"}), wire(subject, state)]
    stream = b"".join(runs)
    await reader._ps.parse(wire(subject, state))
    shedder.shed(subject)
    for step in (1, 13, 4096, len(stream)):
        reader.processed.clear()
        shedder.take(subject)
        await feed(reader, stream, step)
        assert [(s, d) for s, d, _ in reader.processed] == [
            (subject.encode(), end),
            (HONEST.encode(), msgpack.packb({"type": "start"})),
        ], step
        shed = 65 * len(wire(subject, short)) + 301 * len(wire(subject, state))  # on the wire
        assert shedder.take(subject) == (65 + 301, shed), step
    assert reader._ps.buf == bytearray() and not reader._ps._skip


@pytest.mark.parametrize("seed", [1, 2])
async def test_runs_of_mixed_shapes_are_counted_exactly_and_no_end_is_skipped(seed: int):
    # A flood of many sizes (`shed_runs`: one pattern for a run of any learned shape): the
    # counts are exact, and an `end`, or a short payload with "end" in it, is never inside
    # a run, wherever it falls and however the reads cut the stream.
    rng = random.Random(seed)
    reader, shedder, _ = installed(hold_s=60)
    end = msgpack.packb({"type": "end"})
    payloads = [rng.randbytes(rng.randint(1, 199)).replace(b"end", b"EnD") for _ in range(3000)]
    payloads[rng.randrange(3000)] = b"\x01end\x02"  # looked at, shed: not an `end`
    at = sorted(rng.sample(range(3000), 3))
    for index in at:
        payloads[index] = end
    stream = b"".join(wire(FLOODER, payload) for payload in payloads)
    await reader._ps.parse(wire(FLOODER, b"\xc1" * 40))
    shedder.shed(FLOODER)
    shed = [wire(FLOODER, p) for p in payloads if p != end]
    for step in (4096, 65536, 262144, 7, len(stream)):
        reader.processed.clear()
        shedder.take(FLOODER)
        await feed(reader, stream, step)
        assert [d for _, d, _ in reader.processed] == [end] * 3, step
        assert shedder.take(FLOODER) == (len(shed), sum(map(len, shed))), step
    assert reader._ps.buf == bytearray() and not reader._ps._skip


async def test_a_handover_marker_on_a_shed_subject_is_never_skipped():
    # A marker (core/handover.py) cuts a session's messages between two connections: one
    # skipped would leave its session's move unfinished, so it passes like an `end`.
    reader, shedder, _ = installed(hold_s=60)
    state = wire(FLOODER, {"type": "state_change", "state": "listening"})
    marker = wire(FLOODER, b"", headers=b"NATS/1.0\r\nStt-Handover: w:3\r\n\r\n")
    forged = wire(FLOODER, b"x" * 300, headers=b"NATS/1.0\r\nStt-Handover: w:4\r\n\r\n")
    await reader._ps.parse(state)
    shedder.shed(FLOODER)
    for step in (1, 9, 100_000):
        reader.processed.clear()
        await feed(reader, state * 50 + marker + state * 50 + forged + state, step)
        assert [(s, h) for s, _, h in reader.processed] == [
            (FLOODER.encode(), b"NATS/1.0\r\nStt-Handover: w:3\r\n\r\n")
        ], step  # a large one is no marker: shed as its size says


@pytest.mark.parametrize("cut", ["control line", "payload"])
async def test_nats_py_parser_is_taken_over_mid_message(cut: str):
    reader = Reader()
    honest = wire(HONEST, {"type": "start", "sample_rate": 16000})
    at = 30 if cut == "control line" else honest.index(b"\r\n") + 5
    await reader._ps.parse(honest[:at])
    Shedder(Metrics()).install(reader)  # type: ignore[arg-type]
    await reader._ps.parse(honest[at:] + honest)
    assert reader.subjects == [HONEST.encode()] * 2


async def test_a_malformed_sid_is_a_protocol_error_so_the_client_reconnects():
    reader = Reader()
    Shedder(Metrics()).install(reader)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        await reader._ps.parse(b"MSG ai.voice.stream.x 1x 2\r\nhi\r\n")


def test_the_hardened_patterns_are_in_place_for_the_parser():
    assert nats_parser.harden()


async def test_floods_of_many_subjects_interleaved_are_counted_exactly_per_subject():
    # More subjects than get a pattern (`shed_runs.MAX_SUBJECTS`), two subscriptions of one
    # ("1" begins "12"), runs of one message: what each is told it lost is still exact.
    rng = random.Random(5)
    reader, shedder, _ = installed(hold_s=60)
    subjects = [f"{FLOODER}-{n}" for n in range(20)]
    end = msgpack.packb({"type": "end"})
    stream, shed = [], {s: [0, 0] for s in subjects}
    for index in range(6000):
        subject = rng.choice(subjects)
        payload = end if index in (100, 4000) else rng.randbytes(rng.randint(1, 199))
        payload = payload if payload == end else payload.replace(b"end", b"EnD")
        sid = b"12" if subject == subjects[0] and index % 2 else b"1"
        line = b"MSG %s %s %d\r\n" % (subject.encode(), sid, len(payload))
        stream.append(line + payload + b"\r\n")
        if payload != end:
            shed[subject][0] += 1
            shed[subject][1] += len(stream[-1])
    for subject in subjects:
        await reader._ps.parse(wire(subject, b"\xc1" * 40))
        shedder.shed(subject)
        shedder.take(subject)
    await feed(reader, b"".join(stream), 65536)
    assert [d for _, d, _ in reader.processed[20:]] == [end, end]
    assert {s: list(shedder.take(s)) for s in subjects} == shed

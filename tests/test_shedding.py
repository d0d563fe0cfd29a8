"""Shedding in the NATS client's reader (`runtime/shedding.py`), driven through nats-py's own
protocol parser: a shed subject's messages are dropped unread for the hold, `end` always
passes, other subjects pass, and the first message after the hold goes through again."""

from __future__ import annotations

import asyncio

import msgpack
from nats.protocol.parser import Parser

from stt_worker.runtime.shedding import Shedder
from stt_worker.runtime.telemetry.metrics import Metrics

FLOODER = "ai.voice.stream.flood"
HONEST = "ai.voice.stream.honest"


class Reader:
    """What the parser hands the client: `_process_msg` per MSG (records the subjects)."""

    def __init__(self) -> None:
        self.processed: list[bytes] = []

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:
        self.processed.append(subject)


def wire(subject: str, message: dict) -> bytes:
    payload = msgpack.packb(message)
    return b"MSG %s 1 %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)


async def test_a_shed_subject_is_dropped_in_the_reader_for_the_hold_and_end_passes():
    reader = Reader()
    metrics = Metrics()
    shedder = Shedder(metrics, hold_s=0.2)
    shedder.install(reader)  # type: ignore[arg-type]
    parser = Parser(reader)
    state = wire(FLOODER, {"type": "state_change", "state": "responding"})
    await parser.parse(state)
    shedder.shed(FLOODER)
    await parser.parse(state * 100 + wire(HONEST, {"type": "start"}) + state * 100)
    await parser.parse(wire(FLOODER, {"type": "end"}))
    assert reader.processed == [FLOODER.encode(), HONEST.encode(), FLOODER.encode()]
    assert shedder.shed_count == 200
    assert metrics.registry.get_sample_value("stt_shed_messages_total") == 200
    await asyncio.sleep(0.25)  # the hold is over: the next one goes to admission again
    await parser.parse(state)
    assert reader.processed[-1] == FLOODER.encode() and len(reader.processed) == 4

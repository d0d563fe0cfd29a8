"""Fuzzing through the real worker: hypothesis publishes hostile and malformed input to a
real nats-server while a healthy session streams real speech beside it.

Each case is one payload on one subject. After it the test publishes a sentinel (a message
of an unknown type named for the case): the worker handles a subscription's messages in
order, so everything it answers to the payload arrives before the sentinel's error, and no
case waits on a timeout. Hypothesis runs in a thread and hands each case to the event loop
that runs the worker.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import ErrorCode, check_session_id, decode_client_message
from stt_worker.runtime.publisher import stream_file
from tests.helpers import SPEECH_DIR, Inbox, manifest_text
from tests.strategies import msgpack_values, typed_maps
from tests.test_worker import WER_BOUND, final_text
from tests.textnorm import wer

PREFIX = "ai.voice.transcription"
MAX_CHUNK_BYTES = 2048  # small, so that too-large chunks are cheap to generate
MAX_ID_CHARS = 128
STABLE_CODES = {code.value for code in ErrorCode} - {ErrorCode.INTERNAL_ERROR}
EXAMPLES = 1000  # per strategy; 3,000 cases through the worker in this module

# Session-id tokens NATS accepts in a subject (no space, tab, CR, LF or `.`), odd ones
# included: `*`, `>`, control (\x0b and \x0c too: stt_worker/runtime/nats_parser.py) and non-ASCII
# characters, and ids far past the length bound.
_token_chars = st.characters(codec="utf-8", exclude_characters=" \t\r\n.", min_codepoint=1)
session_ids = (
    st.none()  # a plain fresh id
    | st.text(_token_chars, min_size=1, max_size=40)
    | st.sampled_from(["*", ">", "a*", ">b", "x" * (MAX_ID_CHARS + 1)])
    | st.integers(MAX_ID_CHARS + 1, 4000).map(lambda n: "L" * n)
)

_pcm = st.binary(max_size=MAX_CHUNK_BYTES + 64)
near_valid = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("start")},
        optional={
            "sample_rate": st.integers(-1, 400_000) | st.sampled_from([7999, 8000, 192_000]),
            "channels": st.integers(-1, 10),
            "state": st.sampled_from(["listening", "responding", "LISTENING", ""]),
            "speaker_id": st.text(max_size=300) | st.integers(-(2**63), 2**64 - 1) | st.none(),
            "language": st.text(max_size=5) | st.sampled_from(["en", "de", "haw", "EN"]),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("chunk")},
        optional={
            "audio": _pcm,
            "audio_b64": _pcm.map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=40),
            "seq": st.integers(-(2**63), 2**63 - 1),
            "timestamp": st.floats(),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("playback")},
        optional={
            "audio": _pcm,
            "audio_b64": _pcm.map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=40),
            "sample_rate": st.integers(-1, 400_000) | st.none(),
            "channels": st.integers(-1, 10) | st.none(),
        },
    ),
    st.fixed_dictionaries({"type": st.just("state_change")}, optional={"state": msgpack_values}),
    st.just({"type": "end"}),
).map(lambda message: msgpack.packb(message, use_bin_type=True))

PAYLOADS: dict[str, st.SearchStrategy[bytes]] = {
    "raw_bytes": st.binary(max_size=256),
    "typed_maps": typed_maps.map(lambda message: msgpack.packb(message, use_bin_type=True)),
    "near_valid": near_valid,
}


@dataclass
class Router:
    """Every message the worker publishes, queued by subject."""

    queues: defaultdict[str, asyncio.Queue[dict]]

    @classmethod
    async def open(cls, nc: Client) -> Router:
        router = cls(defaultdict(asyncio.Queue))

        async def on_message(msg) -> None:
            router.queues[msg.subject].put_nowait(msgpack.unpackb(msg.data, raw=False))

        await nc.subscribe(f"{PREFIX}.>", cb=on_message)
        await nc.subscribe(PREFIX, cb=on_message)  # errors for ids unfit for a subject
        await nc.flush()
        return router

    async def until(self, subject: str, last: Callable[[dict], bool]) -> list[dict]:
        """Messages on `subject` up to and including the first that `last` accepts."""
        received: list[dict] = []
        async with asyncio.timeout(10):
            while not received or not last(received[-1]):
                received.append(await self.queues[subject].get())
        return received

    async def take(self, subject: str, count: int) -> list[dict]:
        async with asyncio.timeout(10):
            return [await self.queues[subject].get() for _ in range(count)]


async def probe(nc: Client, router: Router, case: int, raw_id: str | None, payload: bytes) -> None:
    session = f"fz-{case}" if raw_id is None else raw_id
    if raw_id is not None and _valid_id(raw_id):
        session = f"{raw_id}_{case}"  # unique, so no earlier case's session answers here
    sentinel = f"sentinel-{case}"
    subject = f"ai.voice.stream.{session}"
    await nc.publish(subject, payload)
    await nc.publish(subject, msgpack.packb({"type": sentinel}))
    if not _valid_id(session):
        # Not used as a subject: both the payload and the sentinel are refused on the prefix.
        answers = await router.take(PREFIX, 2)
        assert [m["code"] for m in answers] == ["invalid_session_id"] * 2, answers
        assert all(len(m["session_id"]) <= MAX_ID_CHARS for m in answers)
        return
    answers = await router.until(f"{PREFIX}.{session}", lambda m: sentinel in m.get("message", ""))
    await nc.publish(subject, msgpack.packb({"type": "end"}))  # close what the case opened
    *replies, last = answers
    assert last["code"] == "unknown_type"
    assert all(m["type"] == "error" and m["session_id"] == session for m in replies), replies
    codes = [m["code"] for m in replies]
    assert set(codes) <= STABLE_CODES and len(codes) <= 1, codes
    try:
        decode_client_message(payload)
    except ProtocolError as exc:
        assert codes == [exc.code], (codes, exc.code)


def _valid_id(session: str) -> bool:
    try:
        check_session_id(session, MAX_ID_CHARS)
    except ProtocolError:
        return False
    return True


async def healthy_sessions(nc: Client, done: asyncio.Event) -> int:
    """Real speech, session after session, for as long as the fuzzing runs; each checked."""
    clip = "lj_LJ001-0006.wav"
    for count in itertools.count(1):
        session = f"healthy-{count}"
        inbox = await Inbox.open(nc, session)
        await stream_file(nc, session, SPEECH_DIR / clip, speed=2.0)
        messages = await inbox.until_closed(within_s=60)
        assert wer(manifest_text(clip), final_text(messages)) <= WER_BOUND, messages
        if done.is_set():
            return count
    raise AssertionError("unreachable")


# The worker draws trace ids from `random` on the loop thread while hypothesis generates in
# its own thread; hypothesis sees the global generator move and warns.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize("kind", list(PAYLOADS))
async def test_fuzzed_input_gets_stable_errors_and_spares_a_healthy_session(
    make_worker, nc, caplog, kind
):
    # Every case expects its own replies: the error-reply limit (tests/test_bounds.py) is
    # set far above what the fuzzing sends.
    worker = await make_worker(
        max_chunk_bytes=MAX_CHUNK_BYTES,
        max_session_id_chars=MAX_ID_CHARS,
        error_reply_burst=1_000_000,
        error_replies_per_s=1e6,
        error_replies_overall_per_s=1e6,
    )
    router = await Router.open(nc)
    loop = asyncio.get_running_loop()
    cases = itertools.count()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(raw_id=session_ids, payload=PAYLOADS[kind])
    def fuzz(raw_id: str | None, payload: bytes) -> None:
        future = asyncio.run_coroutine_threadsafe(
            probe(nc, router, next(cases), raw_id, payload), loop
        )
        future.result(30)

    done = asyncio.Event()
    healthy = asyncio.create_task(healthy_sessions(nc, done))
    with caplog.at_level(logging.WARNING, logger="stt_worker"):
        try:
            await asyncio.to_thread(fuzz)
        finally:
            done.set()
        assert await asyncio.wait_for(healthy, 120) >= 1
    assert next(cases) >= EXAMPLES
    assert not [r for r in caplog.records if "unexpected failure" in r.getMessage()]
    assert worker._nc is not None and worker._nc.stats["reconnects"] == 0

"""Subject and identity safety: what a message may put into a subject, and what it may not.

The session id is the last token of the subject the audio came on. The worker checks it
before anything else; an id it refuses is never put into a subject (its error goes to the
bare prefix). Every subject the worker publishes to is watched here through a wildcard
subscription on the whole server.
"""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from stt_worker.runtime.publisher import stream_file
from tests.helpers import SPEECH_DIR, Inbox, manifest_text
from tests.test_worker import WER_BOUND, final_text, sid
from tests.textnorm import wer

PREFIX = "ai.voice.transcription"
CLIP = "ls_1089-134691-0000.wav"
ODD_IDS = [
    "*",  # nats-server delivers these as literal tokens on a publish: checked, not trusted
    ">",
    "a*b",
    "caf\u00e9",
    "tab\x01ctl",
    "x" * 129,
    "L" * 4000,  # past the 4 KiB protocol line once in an output subject: never echoed
    "vt\x0bff\x0c",  # nats-py took \x0b and \x0c for separators (stt_worker/runtime/nats_parser.py)
]


class Watch:
    """Every subject published to on the server, except the test's own audio."""

    def __init__(self) -> None:
        self.subjects: set[str] = set()
        self._closed: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(self, msg) -> None:
        if msg.subject.startswith("ai.voice.stream."):
            return
        self.subjects.add(msg.subject)
        if msgpack.unpackb(msg.data).get("type") == "session_closed":
            self._closed.put_nowait(msg.subject)

    async def until_closed(self, session: str) -> None:
        """Until this watch, too, has seen `session` close: it then saw all before it."""
        async with asyncio.timeout(30):
            while await self._closed.get() != f"{PREFIX}.{session}":
                pass


@pytest.fixture
async def watch(nc) -> Watch:
    watching = Watch()
    await nc.subscribe(">", cb=watching.on_message)
    await nc.flush()
    return watching


@pytest.mark.parametrize("session_id", ODD_IDS, ids=lambda s: repr(s[:12]))
async def test_odd_session_ids_are_refused_on_the_bare_prefix(worker, nc, watch, session_id):
    refusals = await nc.subscribe(PREFIX)
    good = sid()
    good_inbox = await Inbox.open(nc, good)
    await nc.publish(f"ai.voice.stream.{session_id}", msgpack.packb({"type": "start"}))
    error = msgpack.unpackb((await refusals.next_msg(timeout=10)).data)
    assert error["code"] == "invalid_session_id"
    assert error["session_id"] == session_id[:128]
    # The worker's connection survived, and sessions beside it go on.
    await stream_file(nc, good, SPEECH_DIR / CLIP, speed=0)
    messages = await good_inbox.until_closed(within_s=60)
    assert wer(manifest_text(CLIP), final_text(messages)) <= WER_BOUND
    assert worker._nc.stats["reconnects"] == 0
    await watch.until_closed(good)
    assert watch.subjects == {PREFIX, f"{PREFIX}.{good}"}


async def test_the_longest_id_of_every_allowed_character_works(worker, nc):
    session = ("Az09_-:=@+" * 13)[:128]
    inbox = await Inbox.open(nc, session)
    await stream_file(nc, session, SPEECH_DIR / CLIP, speed=0)
    messages = await inbox.until_closed(within_s=60)
    assert all(m["session_id"] == session for m in messages)
    assert wer(manifest_text(CLIP), final_text(messages)) <= WER_BOUND


@pytest.mark.parametrize(
    "start",
    [
        {"speaker_id": "s" * 257},
        {"language": "../../../../etc/passwd"},
        {"language": "en.>"},
        {"language": "english"},
    ],
    ids=["long_speaker", "path_language", "subject_language", "word_language"],
)
async def test_fields_that_could_reach_a_path_or_subject_are_refused(worker, nc, start):
    session = sid()
    inbox = await Inbox.open(nc, session)
    await nc.publish(f"ai.voice.stream.{session}", msgpack.packb({"type": "start", **start}))
    error = await inbox.until(lambda m: m.get("type") == "error")
    assert error["code"] == "invalid_field"


def test_a_language_tag_is_taken_down_to_what_whisper_knows():
    from stt_worker.core.protocol import Start, decode_client_message, whisper_language

    for tag in ("en-US", "EN", "pt_BR", "zh-Hant-TW"):
        start = decode_client_message(msgpack.packb({"type": "start", "language": tag}))
        assert isinstance(start, Start)
    assert [whisper_language(t) for t in ("en-US", "EN", "pt_BR", None)] == ["en", "en", "pt", None]


async def test_message_fields_never_choose_a_subject(worker, nc, watch):
    """Subject-like and path-like values in every field: they are echoed as data at most."""
    session = sid()
    inbox = await Inbox.open(nc, session)
    hostile = "ai.voice.transcription.victim.>"
    start = {
        "type": "start",
        "session_id": "victim",  # ignored: the subject decides
        "speaker_id": "../../$SYS.>",
        "language": "en",
    }
    subject = f"ai.voice.stream.{session}"
    await nc.publish(subject, msgpack.packb(start))
    await nc.publish(subject, msgpack.packb({"type": "chunk", "audio": b"\0" * 640, "x": hostile}))
    await nc.publish(subject, msgpack.packb({"type": "end", "reply_to": hostile}))
    messages = await inbox.until_closed()
    assert messages[-1]["speaker_id"] == "../../$SYS.>"
    await watch.until_closed(session)
    assert watch.subjects == {f"{PREFIX}.{session}"}


def test_ordinary_publisher_ids_are_accepted_whatever_their_punctuation():
    from stt_worker.core.protocol import check_session_id

    for session_id in ("user#42/turn~3", "a(b)c!d$e%f&g'h", "uuid-1234_x:y=z@w+v", "[x]{y}|z"):
        check_session_id(session_id, 128)  # raises ProtocolError when refused

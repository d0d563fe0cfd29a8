"""`start`'s per-session options: decoding, each option's check and bound, and what a
session does with them (sans-I/O)."""

from __future__ import annotations

import msgpack
import msgspec
import numpy as np
import pytest

from stt_worker.core.jobs import JobKind, Publish, Transcribe
from stt_worker.core.options import MAX_PROMPT_BYTES, Capabilities, session_options
from stt_worker.core.protocol import (
    Start,
    Transcription,
    Word,
    decode_client_message,
    decode_server_message,
    encode_server_message,
)
from stt_worker.core.session import Session, SessionConfig, frames_of
from stt_worker.core.vad import FRAME_SAMPLES

BASE = SessionConfig()
ANY_MODEL = Capabilities(multilingual=None, smart_turn=True)


def options(**fields: object) -> tuple[SessionConfig, list[str]]:
    start = decode_client_message(msgpack.packb({"type": "start", **fields}))
    assert isinstance(start, Start)
    config, refused = session_options(start, BASE, ANY_MODEL)
    assert {error.code for error in refused} <= {"invalid_field"}
    return config, [error.message for error in refused]


def test_a_start_without_options_keeps_the_workers_config():
    config, refused = options()
    assert config is BASE and refused == []


def test_every_option_is_laid_over_the_config():
    config, refused = options(
        prompt="  Kubernetes, NATS, Whisper  ",
        task="translate",
        partials=False,
        word_timestamps=True,
        endpoint_mode="adaptive",
        endpoint_silence_ms=700,
        endpoint_min_silence_ms=200,
        endpoint_max_silence_ms=1500,
        turn_max_ms=900,
        barge_in_mode="words",
        interrupt_min_speech_ms=300,
        barge_in_probe_ms=100,
        turn_events=True,
    )
    assert refused == [] and config.turn_events
    assert (config.prompt, config.task) == ("Kubernetes, NATS, Whisper", "translate")
    assert (config.partials, config.word_timestamps) == (False, True)
    assert (config.endpoint_mode, config.endpoint_silence_ms) == ("adaptive", 700)
    assert (config.endpoint_min_ms, config.endpoint_max_ms, config.turn_max_ms) == (200, 1500, 900)
    assert (config.enable_interrupt_detection, config.barge_in_words) == (True, True)
    assert (config.interrupt_min_speech_ms, config.probe_step_ms) == (300, 100)


def test_barge_in_off_turns_interrupt_detection_off():
    config, _ = options(barge_in_mode="off")
    assert config.barge_in_policy() is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", 42),
        ("prompt", "x" * (MAX_PROMPT_BYTES + 1)),
        ("prompt", "\u00e9" * (MAX_PROMPT_BYTES // 2 + 1)),  # two bytes each
        ("task", "summarise"),
        ("partials", "yes"),
        ("partials", 1),
        ("word_timestamps", 0),
        ("endpoint_mode", "smart"),
        ("endpoint_silence_ms", "fast"),
        ("endpoint_silence_ms", 59),
        ("endpoint_silence_ms", 5001),
        ("endpoint_silence_ms", 500.5),
        ("endpoint_silence_ms", True),
        ("endpoint_min_silence_ms", -1),
        ("endpoint_max_silence_ms", 10**12),
        ("turn_max_ms", [1000]),
        ("barge_in_mode", "shout"),
        ("interrupt_min_speech_ms", 19),
        ("barge_in_probe_ms", 3001),
        ("turn_events", "on"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field_and_the_rest_still_apply(field, value):
    # A valid option beside the bad one still applies.
    valid = {"partials": False} if field == "word_timestamps" else {"word_timestamps": True}
    config, refused = options(**{field: value}, **valid)
    assert len(refused) == 1
    assert f"{field!r}" in refused[0]
    kept = _CONFIG_FIELD.get(field, field)
    assert getattr(config, kept) == getattr(BASE, kept)
    ((name, wanted),) = valid.items()
    assert getattr(config, name) == wanted


_CONFIG_FIELD = {
    "endpoint_min_silence_ms": "endpoint_min_ms",
    "endpoint_max_silence_ms": "endpoint_max_ms",
    "barge_in_probe_ms": "probe_step_ms",
    "barge_in_mode": "barge_in_words",
}


def test_the_prompt_bound_is_in_bytes_and_fits_whispers_224_tokens():
    _, refused = options(prompt="x" * MAX_PROMPT_BYTES)
    assert refused == []
    # Every UTF-8 byte is at most one token of Whisper's byte-level BPE, plus the leading space.
    assert MAX_PROMPT_BYTES + 1 <= 224


def test_a_huge_or_nested_value_is_refused_briefly():
    _, refused = options(prompt={"a": ["b" * 100_000]})
    assert len(refused) == 1 and len(refused[0]) < 400


def test_translate_needs_a_multilingual_model():
    start = Start(task="translate")
    _, refused = session_options(start, BASE, Capabilities(multilingual=False))
    assert len(refused) == 1 and "English-only" in refused[0].message
    config, refused = session_options(start, BASE, Capabilities(multilingual=True))
    assert refused == [] and config.task == "translate"


def test_turn_mode_needs_smart_turn_loaded():
    start = Start(endpoint_mode="turn")
    _, refused = session_options(start, BASE, Capabilities(smart_turn=False))
    assert len(refused) == 1 and "STT_ENDPOINT_MODE=turn" in refused[0].message


# ---------------------------------------------------------------- the session


def speech(seconds: float, session: Session, now: float = 0.0) -> list:
    frames = int(seconds * 1000) // 20
    samples = np.full(frames * FRAME_SAMPLES, 1000, dtype=np.int16)
    return session.audio(frames_of(samples, [True] * frames), now=now)


def silence(seconds: float, session: Session, now: float = 0.0) -> list:
    frames = int(seconds * 1000) // 20
    samples = np.zeros(frames * FRAME_SAMPLES, dtype=np.int16)
    return session.audio(frames_of(samples, [False] * frames), now=now)


def jobs(actions: list) -> list:
    return [action.job for action in actions if isinstance(action, Transcribe)]


def test_partials_off_asks_for_no_partial_but_still_the_final():
    session = Session("s", SessionConfig(partials=False), now=0.0)
    asked = jobs(speech(2.0, session) + silence(1.0, session))
    assert [job.kind for job in asked] == [JobKind.FINAL]


def test_jobs_carry_the_sessions_prompt_task_and_word_timestamps():
    config = SessionConfig(prompt="NATS", task="translate", word_timestamps=True, context_chars=50)
    session = Session("s", config, now=0.0)
    (final,) = [j for j in jobs(speech(1.0, session) + silence(1.0, session)) if j.is_final]
    assert (final.prompt, final.task, final.word_timestamps) == ("NATS", "translate", True)
    session.result(final, "hello there", now=1.0, language="en", inference_s=0.1)
    later = jobs(speech(1.0, session, 2.0) + silence(1.0, session, 3.0))
    assert later[-1].prompt == "NATS hello there"  # the session's prompt, then its finals


def test_final_words_are_moved_into_the_sessions_audio():
    session = Session("s", SessionConfig(word_timestamps=True), now=0.0)
    silence(3.0, session)
    (final,) = [j for j in jobs(speech(1.0, session) + silence(1.0, session)) if j.is_final]
    assert final.audio_start_s > 2.5  # the pre-roll before the speech at 3 s
    words = (Word(" Hi", 0.3, 0.6, 0.9), Word(" there.", 0.6, 0.9, None))
    (published,) = session.result(
        final, "Hi there.", now=5.0, language="en", inference_s=0.1, words=words
    )
    assert isinstance(published, Publish)
    shifted = published.message.words
    assert [w.start_s for w in shifted] == [
        round(final.audio_start_s + 0.3, 3),
        round(final.audio_start_s + 0.6, 3),
    ]
    assert [w.probability for w in shifted] == [0.9, None]


def test_words_are_absent_on_the_wire_unless_set():
    plain = Transcription("s", "hi", 0, False, True, 0.0, None, True, "listening")
    assert "words" not in msgpack.unpackb(encode_server_message(plain))
    timed = msgspec.structs.replace(plain, words=[Word(" hi", 1.0, 1.2, 0.8)])
    assert msgpack.unpackb(encode_server_message(timed))["words"] == [
        {"word": " hi", "start_s": 1.0, "end_s": 1.2, "probability": 0.8}
    ]
    assert decode_server_message(encode_server_message(timed)) == timed


def test_the_publisher_leaves_out_exactly_the_options():
    from stt_worker.core.options import OPTION_NAMES
    from stt_worker.core.protocol import START_OPTIONS, Start, encode_client_message

    assert set(START_OPTIONS) == set(OPTION_NAMES)
    plain = msgpack.unpackb(encode_client_message(Start(sample_rate=48_000)))
    assert not set(plain) & set(START_OPTIONS) and plain["sample_rate"] == 48_000
    asked = msgpack.unpackb(encode_client_message(Start(word_timestamps=True)))
    assert asked["word_timestamps"] is True and "prompt" not in asked

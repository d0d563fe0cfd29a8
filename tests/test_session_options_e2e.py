"""Per-session `start` options end to end: a real nats-server, a real worker, tiny.en."""

from __future__ import annotations

import msgpack

from stt_worker.runtime.publisher import publish_pcm, read_wav
from tests.helpers import SPEECH_DIR, Inbox, manifest_text
from tests.test_worker import final_text, finals, sid
from tests.textnorm import wer

# Alignment works in 20 ms encoder steps; a word may start in the utterance's pre-roll.
SLACK_S = 0.05


async def _run(nc, start: dict, clip: str) -> list[dict]:
    session = sid()
    inbox = await Inbox.open(nc, session)
    await nc.publish(f"ai.voice.stream.{session}", msgpack.packb({"type": "start", **start}))
    samples, rate = read_wav(SPEECH_DIR / clip)
    await publish_pcm(nc, session, samples, sample_rate_hz=rate, speed=2.0, send_start=False)
    return await inbox.until_closed(within_s=120)


async def test_word_timestamps_time_each_final_word_in_the_session(worker, nc):
    messages = await _run(nc, {"word_timestamps": True}, "conv_2utt_1p5s.wav")
    results = finals(messages)
    assert len(results) == 2, final_text(messages)  # two utterances, 1.5 s apart
    for final in results:
        words = final["words"]
        assert [w["word"].strip() for w in words] == final["transcript"].split()
        starts = [w["start_s"] for w in words]
        assert starts == sorted(starts)
        for word in words:
            assert final["audio_start_s"] - SLACK_S <= word["start_s"] <= word["end_s"]
            assert word["end_s"] <= final["audio_end_s"] + SLACK_S
            assert 0.0 < word["probability"] <= 1.0
    # Times are in the session's audio: the second utterance's words follow the first's.
    assert results[1]["words"][0]["start_s"] >= results[0]["words"][-1]["end_s"]
    assert all("words" not in m for m in messages if m.get("is_partial"))


async def test_finals_carry_no_words_unless_asked(worker, nc):
    messages = await _run(nc, {}, "conv_2utt_1p5s.wav")
    assert finals(messages)
    assert all("words" not in m for m in finals(messages))


async def test_bad_options_are_refused_one_by_one_and_the_session_goes_on(worker, nc):
    start = {"task": "translate", "endpoint_silence_ms": "fast", "partials": False}
    messages = await _run(nc, start, "ls_1089-134686-0000.wav")
    errors = [m for m in messages if m.get("type") == "error"]
    assert {e["code"] for e in errors} == {"invalid_field"}
    assert len(errors) == 2
    assert "'task'" in errors[0]["message"] and "English-only" in errors[0]["message"]
    assert "'endpoint_silence_ms'" in errors[1]["message"]
    # The valid option held (no partials); the refused ones fell back to the defaults.
    assert not [m for m in messages if m.get("is_partial")]
    text = final_text(messages)
    assert wer(manifest_text("ls_1089-134686-0000.wav"), text) <= 0.2, text

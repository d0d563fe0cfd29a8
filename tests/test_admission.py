"""Per-session admission with plain calls: the token bucket, the budgets by kind of message,
and the one-a-second refusal notice (`core/admission.py`)."""

from __future__ import annotations

import dataclasses

import pytest

from stt_worker.core.admission import (
    FLOOD_SECONDS,
    Admission,
    RateLimits,
    RefusalNotice,
    TokenBucket,
    Traffic,
    audio_seconds,
)
from stt_worker.core.protocol import Chunk, End, Playback, Start, StateChange

LIMITS = RateLimits(max_audio_speed=2.0, audio_burst_s=10.0, max_control_per_s=5.0)


def test_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=2.0, capacity=10.0, now=0.0)
    assert all(bucket.take(1.0, now=0.0) for _ in range(10))
    assert not bucket.take(1.0, now=0.0)
    assert not bucket.take(1.0, now=0.4)  # 0.8 refilled
    assert bucket.take(1.0, now=0.5)
    assert bucket.take(2.0, now=1.5)


def test_bucket_refill_stops_at_capacity_and_ignores_a_clock_stepping_back():
    bucket = TokenBucket(rate=1.0, capacity=3.0, now=100.0)
    assert bucket.take(3.0, now=100.0)
    assert not bucket.take(1.0, now=50.0)  # earlier publish time: nothing refilled
    assert bucket.full(now=1000.0)
    assert bucket.take(3.0, now=1000.0)
    assert not bucket.take(0.5, now=1000.0)


def test_an_amount_over_capacity_passes_on_a_full_bucket_and_leaves_debt():
    bucket = TokenBucket(rate=1.0, capacity=2.0, now=0.0)
    assert bucket.take(5.0, now=0.0)
    assert not bucket.take(0.1, now=2.0)  # still 1 s in debt
    assert bucket.take(1.0, now=4.0)


def test_real_time_audio_is_never_refused():
    admission = Admission(LIMITS, now=0.0)
    # An hour of 20 ms chunks at real time.
    assert all(admission.admit(Traffic.AUDIO, 0.02, now=i * 0.02) for i in range(180_000))


@pytest.mark.parametrize("speed", [1.9, 2.0])
def test_audio_up_to_the_speed_limit_passes(speed: float):
    admission = Admission(LIMITS, now=0.0)
    assert all(admission.admit(Traffic.AUDIO, 1.0, now=i / speed) for i in range(600))


def _at_50x(admission: Admission, chunks: int) -> list[bool]:
    """20 ms chunks sent at 50x real time from t = 0: which were admitted."""
    return [admission.admit(Traffic.AUDIO, 0.02, now=i * 0.02 / 50) for i in range(chunks)]


def test_audio_at_50x_passes_its_burst_then_twice_real_time():
    admission = Admission(dataclasses.replace(LIMITS, flood_factor=0), now=0.0)
    passed = sum(_at_50x(admission, 50_000))
    wall_s = 50_000 * 0.02 / 50
    assert passed * 0.02 == pytest.approx(10.0 + 2.0 * wall_s, abs=0.05)


def test_a_flood_gets_its_burst_and_pace_for_three_seconds_then_no_audio():
    admission = Admission(LIMITS, now=0.0)
    verdicts = _at_50x(admission, 50_000)  # 20 s of wall time, 50 s of audio a second
    assert sum(verdicts) * 0.02 == pytest.approx(10.0 + 2.0 * FLOOD_SECONDS, abs=0.05)
    from_fourth_s = FLOOD_SECONDS * 50 * 50  # chunks sent before t = 3 s
    assert not any(verdicts[from_fourth_s:])
    assert any(verdicts[from_fourth_s - 100 : from_fourth_s])


def test_a_flood_that_slows_to_real_time_is_heard_again_after_one_calm_second():
    admission = Admission(LIMITS, now=0.0)
    _at_50x(admission, 50 * 50 * 4)  # flooding from t = 3 s, sent until t = 4 s
    # Real time from t = 4 s: the second 4-5 counts no more; 20 ms chunks from then.
    heard = [admission.admit(Traffic.AUDIO, 0.02, now=4.0 + i * 0.02) for i in range(150)]
    assert not any(heard[:50])  # 4-5 s: the seconds 1-3 were all over the limit
    assert all(heard[50:])  # 5-7 s: the second 4-5 brought 1 s of audio


def test_a_backlog_sent_at_once_after_a_stall_is_not_a_flood():
    admission = Admission(LIMITS, now=0.0)
    backlog = [admission.admit(Traffic.AUDIO, 0.02, now=0.5) for _ in range(1_500)]  # 30 s
    assert sum(backlog) * 0.02 == pytest.approx(10.0, abs=0.03)  # the burst; the rest refused
    live = [admission.admit(Traffic.AUDIO, 0.02, now=1.0 + i * 0.02) for i in range(1_000)]
    assert all(live)  # then real time, every chunk, for 20 s


def test_three_times_real_time_keeps_twice_real_time_below_the_flood_limit():
    admission = Admission(LIMITS, now=0.0)
    sent = [admission.admit(Traffic.AUDIO, 0.03, now=i * 0.01) for i in range(3_000)]  # 30 s
    assert sum(sent) * 0.03 == pytest.approx(10.0 + 2.0 * 30.0, abs=0.1)


def test_bytes_shed_unread_count_towards_a_flood_in_the_sessions_format():
    admission = Admission(LIMITS, now=0.0)
    assert admission.check(Start(sample_rate=48_000, channels=2), now=0.0) is None
    for second in range(FLOOD_SECONDS):
        admission.shed(48_000 * 2 * 2 * 5, now=second + 0.5)  # 5 s of audio a second: over 4
    chunk = Chunk(audio=bytes(1_920))  # 10 ms at 48 kHz stereo
    assert admission.check(chunk, now=FLOOD_SECONDS + 0.1) == (Traffic.FLOOD, 0.01)
    assert not admission.idle(now=FLOOD_SECONDS + 0.2)  # forgetting it would end the flood
    # 4 s of audio a second is not over the limit.
    calm = Admission(LIMITS, now=0.0)
    for second in range(FLOOD_SECONDS):
        calm.shed(16_000 * 2 * 4, now=second + 0.5)
    assert calm.admit(Traffic.AUDIO, 0.02, now=FLOOD_SECONDS + 0.1)


def test_playback_and_control_have_their_own_budgets():
    admission = Admission(LIMITS, now=0.0)
    assert admission.admit(Traffic.AUDIO, 10.0, now=0.0)
    assert not admission.admit(Traffic.AUDIO, 0.02, now=0.0)
    assert admission.admit(Traffic.PLAYBACK, 10.0, now=0.0)
    controls = [admission.admit(Traffic.CONTROL, 0.0, now=0.0) for _ in range(8)]
    assert controls == [True] * 5 + [False] * 3
    assert admission.admit(Traffic.CONTROL, 0.0, now=0.2)


def test_speed_zero_turns_the_limits_off():
    admission = Admission(RateLimits(max_audio_speed=0, max_control_per_s=0), now=0.0)
    assert all(admission.admit(Traffic.AUDIO, 8.0, now=0.0) for _ in range(100))
    assert all(admission.admit(Traffic.CONTROL, 0.0, now=0.0) for _ in range(100))


def test_notice_goes_out_at_once_then_at_most_once_a_second_with_the_sum():
    notice = RefusalNotice(interval_s=1.0)
    first = notice.refused(Traffic.AUDIO, 0.5, now=10.0)
    assert first is not None and first.messages == {Traffic.AUDIO: 1} and first.audio_s == 0.5
    assert [notice.refused(Traffic.AUDIO, 0.5, now=10.0 + i / 10) for i in range(9)] == [None] * 9
    assert notice.refused(Traffic.CONTROL, 0.0, now=10.95) is None
    later = notice.due(now=11.0)
    assert later is not None
    assert later.messages == {Traffic.AUDIO: 9, Traffic.CONTROL: 1}
    assert later.audio_s == pytest.approx(4.5)
    assert notice.due(now=20.0) is None  # nothing new
    assert notice.quiet(now=20.0)


def test_refusals_describe_how_much_and_the_limits():
    notice = RefusalNotice(interval_s=1.0)
    report = notice.refused(Traffic.AUDIO, 1.25, now=0.0)
    assert report is not None
    text = report.describe(LIMITS)
    assert "1 messages refused (1 audio; 1.25 s of audio)" in text
    assert "at most 2x after a 10 s burst" in text and "STT_MAX_AUDIO_SPEED" in text
    assert "after 3 s in a row past 4x, no audio is taken" in text and "STT_FLOOD_FACTOR" in text
    assert "STT_FLOOD_FACTOR" not in report.describe(dataclasses.replace(LIMITS, flood_factor=0))


def test_admission_is_idle_once_its_budgets_refill_and_it_has_told_all():
    admission = Admission(LIMITS, now=0.0)
    assert admission.idle(now=0.0)
    admission.admit(Traffic.AUDIO, 4.0, now=0.0)
    assert not admission.idle(now=1.0)
    assert admission.idle(now=2.0)
    admission.notice.refused(Traffic.CONTROL, 0.0, now=2.0)
    assert not admission.idle(now=2.5)
    assert admission.idle(now=3.0)


def test_check_times_chunks_in_the_format_of_the_latest_start():
    admission = Admission(LIMITS, now=0.0)
    one_s_at_8k = Chunk(audio=bytes(16_000))  # 1 s at 8 kHz mono, 0.5 s at 16 kHz
    assert admission.check(Start(sample_rate=8_000), now=0.0) is None
    assert all(admission.check(one_s_at_8k, now=0.0) is None for _ in range(10))
    assert admission.check(one_s_at_8k, now=0.0) == (Traffic.AUDIO, 1.0)
    assert admission.check(End(), now=0.0) is None
    assert admission.check(Playback(audio=bytes(32_000), sample_rate=16_000), now=0.0) is None
    assert audio_seconds(Chunk(audio_b64="AAAA" * 4000), 16_000, 1) == 0.375


def test_check_refuses_a_state_change_flood_past_its_rate():
    admission = Admission(LIMITS, now=0.0)
    verdicts = [admission.check(StateChange(state="responding"), now=0.0) for _ in range(1000)]
    assert verdicts.count(None) == 5
    assert verdicts[-1] == (Traffic.CONTROL, 0.0)


def test_refusals_add_what_the_runtime_dropped_unread():
    notice = RefusalNotice(interval_s=1.0)
    report = notice.refused(Traffic.CONTROL, 0.0, now=0.0)
    assert report is not None
    assert "; 500 more (17500 bytes) dropped unread." in report.describe(LIMITS, 500, 17_500)


def test_a_notice_held_back_by_its_interval_is_told_later_with_what_was_shed():
    notice = RefusalNotice(interval_s=1.0)
    assert notice.refused(Traffic.AUDIO, 0.02, now=0.0) is not None  # the first, at once
    assert notice.refused(Traffic.AUDIO, 0.02, now=0.1) is None
    notice.shed(40, 3_000)
    assert notice.untold and notice.due(now=0.5) is None
    report = notice.due(now=1.0)
    assert report is not None
    assert "1 messages refused (1 audio; 0.02 s of audio); 40 more (3000 bytes) dropped" in (
        report.describe(LIMITS)
    )
    assert not notice.untold


def test_a_notice_of_shed_messages_alone_says_so():
    notice = RefusalNotice(interval_s=1.0)
    notice.shed(5, 100)
    report = notice.due(now=0.0)
    assert report is not None
    assert report.describe(LIMITS).startswith("too fast: 5 (100 bytes) dropped unread.")

"""The error-reply limiter on its own: plain calls, a made-up clock."""

from __future__ import annotations

import pytest

from stt_worker.core.replies import HeldBack, Reply, ReplyLimiter


def limiter(**overrides: float) -> ReplyLimiter:
    settings = {"per_s": 1.0, "burst": 3, "overall_per_s": 100.0, "overall_burst": 100}
    settings.update(overrides)
    return ReplyLimiter(max_keys=int(settings.pop("max_keys", 1000)), **settings)  # type: ignore[arg-type]


def test_a_burst_is_answered_then_one_a_second_with_the_sum_held_back():
    replies = limiter()
    answered = [replies.allow("s", now=0.0) for _ in range(10)]
    assert answered[:3] == [Reply(0)] * 3
    assert answered[3:] == [None] * 7
    assert replies.allow("s", now=0.5) is None  # half a token: not yet
    assert replies.allow("s", now=1.0) == Reply(held_back=8)
    assert replies.allow("s", now=1.0) is None
    assert replies.allow("s", now=2.0) == Reply(held_back=1)


def test_keys_are_limited_apart():
    replies = limiter()
    for _ in range(5):
        replies.allow("noisy", now=0.0)
    assert replies.allow("quiet", now=0.0) == Reply(0)


def test_a_flood_over_many_keys_is_bounded_by_the_overall_bucket():
    replies = limiter(overall_per_s=10.0, overall_burst=20)
    sent = sum(replies.allow(f"k{index}", now=0.0) is not None for index in range(1000))
    assert sent == 20
    # A second later, ten more tokens for everyone.
    sent = sum(replies.allow(f"k{index}", now=1.0) is not None for index in range(1000))
    assert sent == 10


def test_held_back_replies_sum_into_the_key_whose_turn_came():
    replies = limiter(overall_per_s=1.0, overall_burst=1)
    assert replies.allow("a", now=0.0) == Reply(0)
    assert replies.allow("b", now=0.0) is None  # the worker's budget is spent
    assert replies.allow("b", now=1.0) == Reply(held_back=1)


def test_the_table_of_keys_is_bounded():
    replies = limiter(max_keys=50)
    for index in range(10_000):
        replies.allow(f"k{index}", now=index * 0.001)
    assert replies.keys == 50


def test_a_clock_going_back_never_adds_tokens():
    replies = limiter(burst=1)
    assert replies.allow("s", now=10.0) == Reply(0)
    assert replies.allow("s", now=5.0) is None
    assert replies.allow("s", now=10.5) is None
    assert replies.allow("s", now=11.0) == Reply(2)


@pytest.mark.parametrize("bad", [{"per_s": 0.0}, {"burst": 0}, {"max_keys": 0}])
def test_settings_that_would_never_reply_are_refused(bad):
    with pytest.raises(ValueError):
        limiter(**bad)


def test_held_back_rejections_are_due_once_the_key_may_be_answered_again():
    replies = limiter()
    for _ in range(10):
        replies.allow("s", now=0.0, code="unknown_type")
    assert replies.overdue(now=0.5) == []  # no token yet
    assert replies.overdue(now=1.0) == [HeldBack("s", 7, "unknown_type")]
    assert replies.overdue(now=5.0) == []  # told once
    assert replies.allow("s", now=5.0) == Reply(held_back=0)


def test_a_forgotten_key_is_never_due():
    replies = limiter(max_keys=1, burst=1)
    replies.allow("a", now=0.0)
    replies.allow("a", now=0.0)  # held back
    replies.allow("b", now=0.0)  # "a" forgotten with its count (the metrics have it)
    assert replies.overdue(now=10.0) == []

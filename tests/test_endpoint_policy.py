"""The endpoint policies on their own: pause lengths and turn-check texts in, events out."""

from __future__ import annotations

import pytest

from stt_worker.core.endpoint import AdaptiveEndpoint, FixedEndpoint, TurnEndpoint, TurnRule
from stt_worker.core.phases import Event, Phase
from stt_worker.core.session_config import SessionConfig

FIXED = FixedEndpoint(silence_frames=20)
ADAPTIVE = AdaptiveEndpoint(
    silence_frames=20, min_frames=10, max_frames=30, finished_prob=0.75, unfinished_prob=0.5
)


def test_the_fixed_rule_ends_at_its_silence_whatever_the_phase():
    for phase in (Phase.SPEAKING, Phase.HOLDING, Phase.CANDIDATE):
        assert not FIXED.ends(19, phase)
        assert FIXED.ends(20, phase) and FIXED.ends(21, phase)


def test_the_fixed_rule_asks_for_no_turn_check():
    assert [FIXED.on_frame(run) for run in range(40)] == [None] * 40
    assert FIXED.judge("He could wait no longer.", 0.99) is Event.TURN_UNDECIDED


def test_the_adaptive_rule_checks_once_per_pause_at_its_minimum():
    events = [ADAPTIVE.on_frame(run) for run in range(40)]
    assert events[0] is Event.SPEECH_RESUMED  # a voiced frame: the next pause is new
    assert events[10] is Event.CHECK_DUE
    assert [e for i, e in enumerate(events) if i not in (0, 10)] == [None] * 38


def test_the_adaptive_rule_waits_longer_only_while_holding():
    for phase in (Phase.SPEAKING, Phase.CHECKING, Phase.CANDIDATE, Phase.PROBING):
        assert not ADAPTIVE.ends(19, phase) and ADAPTIVE.ends(20, phase)
    assert not ADAPTIVE.ends(29, Phase.HOLDING)
    assert ADAPTIVE.ends(30, Phase.HOLDING)


@pytest.mark.parametrize(
    ("text", "end_prob", "event"),
    [
        ("He could wait no longer.", 0.9, Event.TURN_OVER),
        ("He could wait no longer.", 0.75, Event.TURN_OVER),  # the bound is inclusive
        ("He could wait no longer.", 0.6, Event.TURN_UNDECIDED),
        ("He could wait no longer.", 0.5, Event.TURN_UNDECIDED),
        ("For a full hour he had paced up and down waiting.", 0.3, Event.TURN_HOLDS),
        ("And so my fellow Americans,", 0.95, Event.TURN_HOLDS),  # a comma: mid-phrase
        ("For a full hour he had paced up and", 0.95, Event.TURN_HOLDS),
        ("He could wait no longer.", None, Event.TURN_OVER),  # no score: punctuation
        ("has never been", None, Event.TURN_HOLDS),
        ("", 0.9, Event.TURN_UNDECIDED),  # no words to judge
    ],
)
def test_the_adaptive_rule_judges_a_turn_check(text: str, end_prob: float | None, event: Event):
    assert ADAPTIVE.judge(text, end_prob) is event


def test_the_probabilities_are_the_configured_ones():
    strict = AdaptiveEndpoint(
        silence_frames=20, min_frames=10, max_frames=30, finished_prob=0.95, unfinished_prob=0.9
    )
    assert strict.judge("He could wait no longer.", 0.92) is Event.TURN_UNDECIDED
    assert strict.judge("He could wait no longer.", 0.85) is Event.TURN_HOLDS
    assert ADAPTIVE.judge("He could wait no longer.", 0.92) is Event.TURN_OVER
    assert ADAPTIVE.judge("He could wait no longer.", 0.85) is Event.TURN_OVER


def test_the_settings_choose_the_rule_and_its_lengths_in_frames():
    fixed = SessionConfig(endpoint_silence_ms=410).endpoint_policy()
    assert isinstance(fixed, FixedEndpoint) and fixed.silence_frames == 20
    adaptive = SessionConfig(
        endpoint_mode="adaptive",
        endpoint_silence_ms=500,
        endpoint_min_ms=300,
        endpoint_max_ms=1000,
        endpoint_finished_prob=0.8,
        endpoint_unfinished_prob=0.4,
    ).endpoint_policy()
    assert isinstance(adaptive, AdaptiveEndpoint)
    assert (adaptive.silence_frames, adaptive.min_frames, adaptive.max_frames) == (25, 15, 50)
    assert (adaptive.finished_prob, adaptive.unfinished_prob) == (0.8, 0.4)
    # A length under one frame still waits one frame.
    assert SessionConfig(endpoint_silence_ms=5).endpoint_policy().ends(1, Phase.SPEAKING)


RULE = TurnRule(over_prob=0.5, hold_prob=0.3, end_veto_prob=0.5)
TURN = TurnEndpoint(
    silence_frames=20, check_frames=4, recheck_frames=(15,), max_frames=40, rule=RULE
)


@pytest.mark.parametrize(
    ("text", "end_prob", "turn_prob", "event"),
    [
        # Smart Turn decides once the words allow an end.
        ("He could wait no longer.", 0.9, 0.95, Event.TURN_OVER),
        ("He could wait no longer.", 0.9, 0.1, Event.TURN_HOLDS),
        ("He could wait no longer.", 0.9, 0.4, Event.TURN_UNDECIDED),
        # The words keep the turn open whatever the audio model hears.
        ("For a full hour he had paced up and", 0.9, 0.99, Event.TURN_HOLDS),
        ("Stuff it into you,", 0.9, 0.99, Event.TURN_HOLDS),
        ("For a full hour he had paced.", 0.31, 0.93, Event.TURN_HOLDS),  # the decoder's veto
        ("", None, 0.99, Event.TURN_UNDECIDED),  # no words to end the turn with
        # Without Smart Turn (it failed): the adaptive mode's thresholds on the decoder's.
        ("He could wait no longer.", 0.9, None, Event.TURN_OVER),
        ("He could wait no longer.", 0.6, None, Event.TURN_UNDECIDED),
        ("He could wait no longer.", 0.3, None, Event.TURN_HOLDS),
    ],
)
def test_the_turn_rule_fuses_words_decoder_and_smart_turn(text, end_prob, turn_prob, event):
    assert RULE.judge(text, end_prob, turn_prob) is event
    assert TURN.judge(text, end_prob, turn_prob) is event


def test_the_turn_rule_thresholds_move_its_verdicts():
    eager = TurnRule(over_prob=0.3, hold_prob=0.1, end_veto_prob=0.2)
    assert eager.judge("He could wait no longer.", 0.4, 0.35) is Event.TURN_OVER
    assert RULE.judge("He could wait no longer.", 0.4, 0.35) is Event.TURN_HOLDS


def test_the_turn_endpoint_checks_early_and_again_and_lets_a_check_decide():
    checked_at, events = 0, []
    for run in range(50):  # each check asked as it comes due, as the `Listener` does
        events.append(TURN.on_frame(run, checked_at))
        if events[-1] is Event.CHECK_DUE:
            checked_at = TURN.check_point(run)
    assert events[0] is Event.SPEECH_RESUMED
    assert [run for run, e in enumerate(events) if e is Event.CHECK_DUE] == [4, 15]
    once = TurnEndpoint(silence_frames=20, check_frames=4, max_frames=40, rule=RULE)
    assert [run for run in range(50) if once.on_frame(run) is Event.CHECK_DUE] == [4]
    # A pending check or a holding turn waits up to the long pause; otherwise the fixed one.
    for phase in (Phase.CHECKING, Phase.HOLDING):
        assert not TURN.ends(39, phase) and TURN.ends(40, phase)
    assert not TURN.ends(19, Phase.SPEAKING) and TURN.ends(20, Phase.SPEAKING)


def test_a_recheck_whose_point_passed_is_due_until_asked_and_hears_its_own_point():
    # The first check (at 4) still decoded at 15: the recheck stays due from then on, frame
    # after frame, until one is asked; the fixed points are asked once.
    late = [run for run in range(5, 30) if TURN.on_frame(run, checked_at=4) is Event.CHECK_DUE]
    assert late == list(range(15, 30))
    assert [run for run in range(1, 30) if TURN.on_frame(run, 15) is Event.CHECK_DUE] == [4]
    # However late it is asked, a check hears the pause to its own point.
    assert [TURN.check_point(run) for run in (4, 9, 15, 22)] == [4, 4, 15, 15]
    adaptive = SessionConfig(endpoint_mode="adaptive").endpoint_policy()
    assert adaptive.check_point(22) == 22


def test_turn_mode_settings_choose_the_turn_endpoint():
    config = SessionConfig(
        endpoint_mode="turn", endpoint_silence_ms=500, turn_check_ms=80, turn_max_ms=1200
    )
    policy = config.endpoint_policy()
    assert isinstance(policy, TurnEndpoint)
    # A recheck at 200 ms by default.
    assert (policy.check_frames, policy.recheck_frames, policy.max_frames) == (4, (10,), 60)
    assert policy.silence_frames == 25 and policy.rule == TurnRule()
    rechecked = SessionConfig(endpoint_mode="turn", turn_recheck_ms=400).endpoint_policy()
    assert isinstance(rechecked, TurnEndpoint) and rechecked.recheck_frames == (20,)
    once = SessionConfig(endpoint_mode="turn", turn_recheck_ms=0).endpoint_policy()
    assert isinstance(once, TurnEndpoint) and once.recheck_frames == ()


def test_a_recheck_needs_words_the_decoder_is_surer_end_there():
    # Late in a pause Smart Turn hears a clause end as an end: the stricter veto holds it.
    clause = ("For a full hour he had paced up.", 0.63, 0.96)
    assert TURN.judge(*clause, pause_s=0.08) is Event.TURN_OVER
    assert TURN.judge(*clause, pause_s=0.3) is Event.TURN_HOLDS
    sentence = ("He could wait no longer.", 0.9, 0.96)
    assert TURN.judge(*sentence, pause_s=0.3) is Event.TURN_OVER

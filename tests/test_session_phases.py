"""The phase table walked through a `Session`: every transition it lists is taken by feeding
frames, control events and engine answers, and a pair it does not list changes nothing.

Each scenario names the transitions it takes; a recording copy of the table notes each
listed transition the code looks up, so a transition the code stopped using, or one it
takes without the table, fails here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from stt_worker.core import phases
from stt_worker.core.errors import EngineError
from stt_worker.core.jobs import JobKind
from stt_worker.core.phases import (
    OPEN_UTTERANCE,
    TRANSITIONS,
    UNCONFIRMED,
    USER_TURN,
    Event,
    Phase,
    advance,
)
from stt_worker.core.protocol import Interrupt, Transcription
from tests.test_session import (
    ADAPTIVE,
    WORDS,
    feed,
    jobs,
    new_session,
    probes,
    published,
    turn_checks,
)

Transition = tuple[Phase, Event]
SCENARIOS: list[tuple[Callable[[], None], tuple[Transition, ...]]] = []

# In frames (tests/test_session.py's CONFIG): onset 3, endpoint 10, barge-in 10 voiced,
# length bound 150. WORDS: word-mode barge-in, a probe step of 5. CHECKED: adaptive
# endpoint, a turn check after 10 frames of pause, the fixed endpoint at 20, a held turn at 30.
CHECKED = dataclasses.replace(ADAPTIVE, endpoint_silence_ms=400)
BOTH = dataclasses.replace(CHECKED, barge_in_words=True, probe_step_ms=100)
OVER = "...." + "s" * 12  # speech over the assistant, enough for a first probe


def walks(*transitions: Transition) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(scenario: Callable[[], None]) -> Callable[[], None]:
        SCENARIOS.append((scenario, transitions))
        return scenario

    return register


def answer(session, job, text: str, end_prob: float | None = None):
    return session.result(job, text, now=1.0, language=None, inference_s=0.1, end_prob=end_prob)


# ---------------------------------------------------------------- the conversation and life


@walks(
    (Phase.WAITING, Event.SPEECH_BEGAN),
    (Phase.SPEAKING, Event.ENDED),
    (Phase.FINAL_OUT, Event.FINAL_RETURNED),
    (Phase.OPEN, Event.END),
    (Phase.CLOSING, Event.FINALS_SETTLED),
)
def an_utterance_then_the_end():
    session = new_session()
    (final,) = jobs(feed(session, "s" * 10 + "." * 10), final=True)
    assert session.end(now=1.0) == [] and session.closing == "end" and not session.closed
    assert published(answer(session, final, "Hello."), Transcription)
    assert session.closed and session.finals.pending == 0


@walks(
    (Phase.LISTENING, Event.TO_RESPONDING),
    (Phase.RESPONDING, Event.TO_LISTENING),
)
def the_turn_changes_hands():
    session = new_session()
    session.change_state("responding", now=1.0)
    assert session.state == "responding"
    session.change_state("listening", now=2.0)
    assert session.state == "listening"


# ---------------------------------------------------------------- barge-in, voice mode


@walks(
    (Phase.WAITING, Event.SPEECH_BEGAN_OVER_ASSISTANT),
    (Phase.CANDIDATE, Event.BARGE_IN),
    (Phase.RESPONDING, Event.BARGE_IN),
)
def speech_over_the_assistant_interrupts():
    session = new_session(state="responding")
    assert published(feed(session, "...." + "s" * 30), Interrupt)
    assert session.state == "listening"


@walks((Phase.CANDIDATE, Event.DROPPED))
def a_short_noise_over_the_assistant_is_dropped():
    session = new_session(state="responding")
    assert feed(session, "...." + "sssss" + "." * 20) == []
    assert not session.in_utterance and session.state == "responding"


@walks((Phase.CANDIDATE, Event.TO_LISTENING))
def a_candidate_is_the_users_once_the_assistant_stops():
    session = new_session(state="responding")
    feed(session, "...." + "sssss")
    session.change_state("listening", now=1.0)
    (final,) = jobs(feed(session, "." * 10), final=True)
    assert final.kind is JobKind.FINAL


# ---------------------------------------------------------------- barge-in, word mode


@walks(
    (Phase.CANDIDATE, Event.PROBE_DUE),
    (Phase.PROBING, Event.PROBE_ANSWERED),
    (Phase.PROBING, Event.BARGE_IN),
)
def probes_until_one_hears_real_words():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, OVER))
    assert answer(session, probe, "Yeah.") == []
    (again,) = probes(feed(session, "s" * 5))
    assert published(answer(session, again, "Tell me"), Interrupt)


@walks((Phase.CANDIDATE, Event.ENDED))
def an_unconfirmed_candidate_is_transcribed():
    session = new_session(WORDS, state="responding")
    actions = feed(session, "...." + "sssss" + "." * 10)  # too short to probe
    (final,) = jobs(actions)
    assert final.kind is JobKind.CANDIDATE_FINAL


@walks((Phase.CANDIDATE, Event.PAUSE_BEGAN))
def a_pause_makes_the_last_word_whole_and_is_probed():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, OVER))
    answer(session, probe, "Run.")
    (paused,) = probes(feed(session, "...."))
    assert paused.trailing_silence_s == pytest.approx(0.08)


@walks(
    (Phase.PROBING, Event.PAUSE_BEGAN),
    (Phase.PROBING_PAUSED, Event.PROBE_ANSWERED),
)
def a_pause_while_a_probe_decodes_is_probed_when_it_answers():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, OVER))
    assert probes(feed(session, "....")) == []
    (again,) = probes(answer(session, probe, "Sto"))
    assert again.trailing_silence_s == pytest.approx(0.08)


@walks((Phase.PROBING_PAUSED, Event.BARGE_IN))
def a_probe_answering_in_a_pause_interrupts():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, OVER))
    feed(session, "....")
    assert published(answer(session, probe, "Stop."), Interrupt)


@walks((Phase.PROBING, Event.ENDED), (Phase.PROBING_PAUSED, Event.ENDED))
def a_candidate_ends_while_its_probe_decodes():
    session = new_session(WORDS, state="responding")
    feed(session, OVER)
    (final,) = jobs(session.end(now=1.0), final=True)
    assert final.kind is JobKind.CANDIDATE_FINAL
    session = new_session(WORDS, state="responding")
    (final,) = jobs(feed(session, OVER + "." * 10), final=True)  # pause: 4 frames, then 10
    assert final.kind is JobKind.CANDIDATE_FINAL


@walks((Phase.PROBING, Event.ASIDE_FAILED), (Phase.PROBING_PAUSED, Event.ASIDE_FAILED))
def a_failed_probe_leaves_the_next_step_to_probe_again():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, OVER))
    assert session.failed(probe, EngineError("boom"), now=1.0) == []
    assert probes(feed(session, "s" * 5))
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, OVER))
    feed(session, "....")
    session.failed(probe, EngineError("boom"), now=1.0)
    assert probes(feed(session, "sss"))  # a candidate again: the next step probes


@walks((Phase.PROBING, Event.PROBE_MOOT), (Phase.PROBING_PAUSED, Event.PROBE_MOOT))
def a_probe_answering_after_a_late_barge_in_is_moot():
    for pause in ("", "...."):
        session = new_session(WORDS, state="responding")
        (earlier,) = jobs(feed(session, OVER + "." * 10), final=True)
        (probe,) = probes(feed(session, "s" * 12 + pause))  # the next candidate
        # The earlier candidate's final holds real words: a late barge-in.
        assert published(answer(session, earlier, "Stop talking."), Interrupt)
        assert session.state == "listening"
        assert answer(session, probe, "Stop") == []  # the assistant no longer talks


@walks((Phase.PROBING, Event.TO_LISTENING), (Phase.PROBING_PAUSED, Event.TO_LISTENING))
def a_probed_candidate_is_the_users_once_the_assistant_stops():
    for pause in ("", "...."):
        session = new_session(WORDS, state="responding")
        (probe,) = probes(feed(session, OVER + pause))
        session.change_state("listening", now=1.0)
        assert answer(session, probe, "Stop") == []
        (final,) = jobs(feed(session, "." * 10), final=True)
        assert final.kind is JobKind.FINAL


# ---------------------------------------------------------------- adaptive end of turn


@walks((Phase.SPEAKING, Event.CHECK_DUE), (Phase.CHECKING, Event.TURN_OVER))
def a_finished_sentence_ends_the_turn_at_the_check():
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    out = answer(session, check, "He could wait no longer.", end_prob=0.9)
    assert published(out, Transcription)[0].is_final and not session.in_utterance


@walks(
    (Phase.CHECKING, Event.TURN_HOLDS),
    (Phase.HOLDING, Event.ENDED_IN_CHECKED_PAUSE),
)
def a_phrase_ending_mid_way_holds_the_turn_longer():
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    answer(session, check, "For a full hour he had paced up and")
    assert jobs(feed(session, "." * 19), final=True) == []
    assert jobs(feed(session, "."), final=True)


@walks((Phase.HOLDING, Event.CHECK_DUE))
def turn_mode_checks_a_held_pause_again():
    config = dataclasses.replace(
        CHECKED, endpoint_mode="turn", turn_check_ms=80, turn_recheck_ms=300, turn_max_ms=600
    )
    session = new_session(config)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 4))
    session.result(check, "I went.", now=1.0, language=None, inference_s=0.1, turn_prob=0.05)
    assert turn_checks(feed(session, "." * 11))


@walks((Phase.HOLDING, Event.SPEECH_RESUMED))
def speech_after_a_held_pause_is_judged_afresh():
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    answer(session, check, "I went to the")
    feed(session, "s")
    assert jobs(feed(session, "." * 20), final=True)  # the fixed endpoint again


@walks(
    (Phase.CHECKING, Event.TURN_UNDECIDED),
    (Phase.SPEAKING, Event.ENDED_IN_CHECKED_PAUSE),
)
def an_undecided_check_leaves_the_fixed_endpoint():
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    assert answer(session, check, "He could wait no longer.", end_prob=0.6) == []
    assert jobs(feed(session, "." * 10), final=True)


@walks((Phase.CHECKING, Event.CHECK_MOOT))
def speech_during_the_check_makes_it_moot():
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    feed(session, "sss")
    assert answer(session, check, "He could.") == [] and session.in_utterance


@walks(
    (Phase.CHECKING, Event.ENDED_IN_CHECKED_PAUSE),
    (Phase.RACING_CHECK, Event.CHECK_WON),
    (Phase.ANSWERED_BY_CHECK, Event.FINAL_RETURNED),
    (Phase.RACING_CHECK, Event.FINAL_RETURNED),
    (Phase.RACING_CHECK, Event.ASIDE_FAILED),
)
def a_check_races_the_fixed_endpoints_final():
    for ending in ("check first", "final first", "check fails"):
        session = new_session(CHECKED)
        (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
        (final,) = jobs(feed(session, "." * 10), final=True)
        if ending == "check fails":
            session.failed(check, EngineError("boom"), now=1.0)
            assert published(answer(session, final, "Text."), Transcription)
            continue
        first, second = (check, final) if ending == "check first" else (final, check)
        assert published(answer(session, first, "Text."), Transcription)
        assert answer(session, second, "Text.") == [] and session.finals.pending == 0


@walks((Phase.CHECKING, Event.ASIDE_FAILED))
def a_failed_check_leaves_the_next_pause_to_be_checked():
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    session.failed(check, EngineError("boom"), now=1.0)
    assert turn_checks(feed(session, "s" + "." * 10))


@walks((Phase.CHECKING, Event.ENDED), (Phase.HOLDING, Event.ENDED))
def the_end_of_the_stream_while_checking_or_holding():
    session = new_session(CHECKED)
    feed(session, "s" * 30 + "." * 10)
    assert jobs(session.end(now=1.0), final=True)
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    answer(session, check, "I went to the")
    assert jobs(session.end(now=1.0), final=True)


@walks(
    (Phase.SPEAKING, Event.TURN_OVER),
    (Phase.SPEAKING, Event.TURN_HOLDS),
    (Phase.HOLDING, Event.TURN_OVER),
)
def a_failed_probe_from_before_the_turn_clears_the_check_it_overlaps():
    """A candidate's probe is out when the assistant stops; the user's pause is checked;
    then the probe fails, which takes the utterance out of `CHECKING` while the check still
    decodes. Its answer is judged all the same."""
    for text, over in (("He could wait no longer.", True), ("I went to the", False)):
        session = new_session(BOTH, state="responding")
        (probe,) = probes(feed(session, OVER))
        session.change_state("listening", now=1.0)
        (check,) = turn_checks(feed(session, "." * 10))
        session.failed(probe, EngineError("boom"), now=1.0)
        assert bool(published(answer(session, check, text), Transcription)) is over
    # With a second check out by then, the first is taken for it.
    session = new_session(BOTH, state="responding")
    (probe,) = probes(feed(session, OVER))
    session.change_state("listening", now=1.0)
    (first,) = turn_checks(feed(session, "." * 10))
    session.failed(probe, EngineError("boom"), now=1.0)
    (second,) = turn_checks(feed(session, "sss" + "." * 10))
    assert answer(session, first, "I went to the") == []
    assert published(answer(session, second, "He could wait no longer."), Transcription)


# ---------------------------------------------------------------- the length cut


@walks(
    (Phase.CANDIDATE, Event.CUT),
    (Phase.PROBING, Event.CUT),
    (Phase.PROBING_PAUSED, Event.CUT),
)
def long_speech_over_the_assistant_is_cut_and_the_rest_is_the_users():
    cases = [
        (dataclasses.replace(WORDS, interrupt_min_speech_ms=5000), "responding", "s" * 160),
        (WORDS, "responding", "s" * 160),  # its first probe never answers
        (WORDS, "responding", OVER + "....." + "s" * 150),
    ]
    for config, state, pattern in cases:
        session = new_session(config, state=state)
        (head,) = jobs(feed(session, pattern), final=True)
        assert head.kind is JobKind.FINAL and head.end_reason == "size"
        assert session.in_utterance


@walks((Phase.CHECKING, Event.CUT), (Phase.HOLDING, Event.CUT))
def a_pause_at_the_length_bound_is_cut_while_checked():
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 135 + "." * 10))
    (head,) = jobs(feed(session, "." * 5), final=True)
    assert head.end_reason == "size"
    assert answer(session, check, "He could wait no longer.") == []  # its speech has ended
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 125 + "." * 10))
    answer(session, check, "I went to the")
    (head,) = jobs(feed(session, "." * 15), final=True)
    assert head.end_reason == "size"


@walks(
    (Phase.SPEAKING, Event.DROPPED),
    (Phase.CHECKING, Event.DROPPED),
    (Phase.HOLDING, Event.DROPPED),
)
def the_unvoiced_rest_of_a_cut_ends_untranscribed():
    session = new_session()
    (head,) = jobs(feed(session, "s" * 145 + "." * 15), final=True)  # cut mid-pause
    assert head.end_reason == "size" and not session.in_utterance
    for holds in (False, True):
        session = new_session(CHECKED)
        actions = feed(session, "s" * 145 + "." * 12)
        (check,) = turn_checks(actions)  # of the rest, which holds no speech
        assert not check.has_voice_activity
        if holds:
            answer(session, check, "and so,")
        actions = feed(session, "." * 30)
        assert jobs(actions, final=True) == [] and not session.in_utterance


# ---------------------------------------------------------------- the walk


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> set[Transition]:
    """The listed transitions the code looks up (and so takes) from here on."""

    class Recording(dict[Transition, Phase]):
        def __init__(self, table: dict[Transition, Phase]) -> None:
            super().__init__(table)
            self.seen: set[Transition] = set()

        def get(self, key, default=None):  # type: ignore[override]
            if key in self:
                self.seen.add(key)
            return super().get(key, default)

    recording = Recording(TRANSITIONS)
    monkeypatch.setattr(phases, "TRANSITIONS", recording)
    return recording.seen


@pytest.mark.parametrize(
    ("scenario", "transitions"), SCENARIOS, ids=[s.__name__ for s, _ in SCENARIOS]
)
def test_each_scenario_takes_its_transitions(scenario, transitions, taken):
    scenario()
    assert set(transitions) <= taken


def test_the_scenarios_walk_the_whole_table():
    walked = {transition for _, transitions in SCENARIOS for transition in transitions}
    assert walked == set(TRANSITIONS)


def test_a_pair_the_table_does_not_list_changes_nothing():
    for phase in Phase:
        for event in Event:
            if (phase, event) not in TRANSITIONS:
                assert advance(phase, event) is phase


def test_no_event_moves_a_phase_from_one_machine_to_another():
    machines = [
        {Phase.LISTENING, Phase.RESPONDING},
        {Phase.OPEN, Phase.CLOSING, Phase.CLOSED},
        {Phase.WAITING, *OPEN_UTTERANCE, Phase.FINAL_OUT, Phase.RACING_CHECK},
    ]
    machines[2] |= {Phase.ANSWERED_BY_CHECK, Phase.DONE}
    assert set().union(*machines) == set(Phase)
    for (phase, _event), target in TRANSITIONS.items():
        assert target is not phase, "a listed pair must change the phase"
        assert any(phase in machine and target in machine for machine in machines)


def test_every_open_utterance_can_end_and_be_cut():
    for phase in OPEN_UTTERANCE:
        assert advance(phase, Event.ENDED) is Phase.FINAL_OUT
        assert advance(phase, Event.CUT) is Phase.SPEAKING
    for phase in UNCONFIRMED:
        assert advance(phase, Event.BARGE_IN) in USER_TURN


def test_unlisted_events_do_nothing_in_a_session():
    # More speech while a probe decodes: no second probe.
    session = new_session(WORDS, state="responding")
    probes(feed(session, OVER))
    assert probes(feed(session, "s" * 10)) == []
    # A second pause while a check decodes: no second check, and the moot check holds
    # nothing up: the fixed endpoint ends the turn.
    session = new_session(CHECKED)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    assert turn_checks(feed(session, "sss" + "." * 12)) == []
    assert answer(session, check, "He could wait no longer.") == []
    assert jobs(feed(session, "." * 8), final=True)
    # The same state again, and `end` twice.
    session = new_session()
    assert session.change_state("listening", now=1.0) == [] and session.state == "listening"
    feed(session, "s" * 10)
    assert jobs(session.end(now=1.0), final=True)
    assert session.end(now=2.0) == [] and session.closing == "end"

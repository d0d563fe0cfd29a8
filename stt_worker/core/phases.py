"""The session's phases and the events that move them, in one table (`TRANSITIONS`).

Three things about a session change as events arrive, each with its own phases:

- the conversation: whose turn it is, `LISTENING` or `RESPONDING` (the wire's `state`);
- the session's life: `OPEN`, `CLOSING` once `end` came, `CLOSED` once its last final is
  published;
- each utterance, from before its first frame (`WAITING`) to its final's answer (`DONE`).
  Its main paths:

      WAITING         --SPEECH_BEGAN-->                  SPEAKING
                      --SPEECH_BEGAN_OVER_ASSISTANT-->   CANDIDATE
    heard over the assistant (word mode probes it):
      CANDIDATE       --PROBE_DUE, PAUSE_BEGAN-->        PROBING
      PROBING         --PAUSE_BEGAN-->                   PROBING_PAUSED
                      --PROBE_ANSWERED-->                CANDIDATE
      PROBING_PAUSED  --PROBE_ANSWERED-->                PROBING (probed again)
      any of these    --BARGE_IN, TO_LISTENING-->        SPEAKING
    the user's turn (adaptive endpoint):
      SPEAKING        --CHECK_DUE-->                     CHECKING
      CHECKING        --TURN_OVER-->                     FINAL_OUT
                      --TURN_HOLDS-->                    HOLDING
                      --TURN_UNDECIDED, CHECK_MOOT-->    SPEAKING
      HOLDING         --SPEECH_RESUMED-->                SPEAKING
                      --CHECK_DUE-->                     CHECKING (turn mode's second check)
    its end:
      any open phase  --ENDED-->                         FINAL_OUT --FINAL_RETURNED--> DONE
      CHECKING        --ENDED_IN_CHECKED_PAUSE-->        RACING_CHECK
      RACING_CHECK    --CHECK_WON-->                     ANSWERED_BY_CHECK
                      --FINAL_RETURNED-->                DONE

Speech heard while the assistant talks is a *candidate* until the barge-in policy
(`barge_in.py`) confirms it; the user's utterance ends when the endpoint policy
(`endpoint.py`) says so. A policy names the event, this table gives the new phase, and the
`Listener` (`listener.py`) does what entering it means: a probe for `PROBING`, a turn check
for `CHECKING`, a final for `FINAL_OUT`.

Silence is counted, not a phase: each rule measures the pause against its own length (a
partial waits after 60 ms, a probe's last word is whole after 80 ms, the turn check comes
after `endpoint_min_ms`). Counters and audio stay data on the utterance.

A pair absent from the table leaves the phase unchanged: that event means nothing there
(more speech while a probe is out, a second pause while a turn check is out).
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    # The conversation; the values are the wire's `state`.
    LISTENING = "listening"
    RESPONDING = "responding"

    # The session's life.
    OPEN = "open"
    CLOSING = "closing"  # `end` came: its finals are awaited
    CLOSED = "closed"  # `session_closed` is published

    # An utterance: not yet begun; frames wait in the pre-roll.
    WAITING = "waiting"
    # The user's turn: speech, or a pause the endpoint has not judged yet.
    SPEAKING = "speaking"
    # Adaptive endpoint: a turn check of this pause is decoding.
    CHECKING = "checking"
    # The turn check heard a phrase end mid-way ("... and"): the pause may run longer.
    HOLDING = "holding"
    # Heard over the assistant, not (yet) a barge-in.
    CANDIDATE = "candidate"
    # Word mode: a probe of the candidate's speech is decoding.
    PROBING = "probing"
    # ... and a pause began since, so its last word is whole: probe again when it answers.
    PROBING_PAUSED = "probing_paused"
    # Ended: its final is decoding.
    FINAL_OUT = "final_out"
    # Ended by the fixed endpoint while the turn check of the same pause still decodes:
    # whichever answers first is the final.
    RACING_CHECK = "racing_check"
    # The turn check won the race: its text was published as the final; the final's own
    # decode is dropped when it comes.
    ANSWERED_BY_CHECK = "answered_by_check"
    # Its final is published (or failed), or it ended with nothing to transcribe.
    DONE = "done"


class Event(enum.Enum):
    # The client's `state_change`, and a confirmed barge-in.
    TO_LISTENING = "to_listening"
    TO_RESPONDING = "to_responding"
    BARGE_IN = "barge_in"

    # The client's `end` (or a timeout), and the last final answered after it.
    END = "end"
    FINALS_SETTLED = "finals_settled"

    # Speech onset (or, without VAD, the first frame): while listening, or over the assistant.
    SPEECH_BEGAN = "speech_began"
    SPEECH_BEGAN_OVER_ASSISTANT = "speech_began_over_assistant"

    # Barge-in policy, word mode: enough (more) speech to probe; a pause long enough to make
    # the last word whole; a probe answered without taking the turn; a probe answered once
    # the candidate no longer competes with the assistant.
    PROBE_DUE = "probe_due"
    PAUSE_BEGAN = "pause_began"
    PROBE_ANSWERED = "probe_answered"
    PROBE_MOOT = "probe_moot"
    # A probe or a turn check of this speech failed: the next step or pause asks again.
    ASIDE_FAILED = "aside_failed"

    # Endpoint policy: a voiced frame; a pause as long as `endpoint_min_ms`; the turn
    # check's answer (speech came since it, or its verdict on the words).
    SPEECH_RESUMED = "speech_resumed"
    CHECK_DUE = "check_due"
    CHECK_MOOT = "check_moot"
    TURN_OVER = "turn_over"
    TURN_HOLDS = "turn_holds"
    TURN_UNDECIDED = "turn_undecided"

    # The end of an utterance: cut at the length bound (the rest goes on as a new one);
    # ended (its final is asked for); ended by the endpoint with no speech since the last
    # turn check; ended with nothing to transcribe (silence, noise, unconfirmed speech in
    # voice mode).
    CUT = "cut"
    ENDED = "ended"
    ENDED_IN_CHECKED_PAUSE = "ended_in_checked_pause"
    DROPPED = "dropped"

    # After the end: the final's own decode answered (or failed); the turn check racing it
    # answered first.
    FINAL_RETURNED = "final_returned"
    CHECK_WON = "check_won"


UNCONFIRMED = frozenset({Phase.CANDIDATE, Phase.PROBING, Phase.PROBING_PAUSED})
USER_TURN = frozenset({Phase.SPEAKING, Phase.CHECKING, Phase.HOLDING})
OPEN_UTTERANCE = UNCONFIRMED | USER_TURN
# Ended, with a final still to come: durable mode may not acknowledge its audio yet.
AWAITING_FINAL = frozenset({Phase.FINAL_OUT, Phase.RACING_CHECK})


def _each(phases: frozenset[Phase], event: Event, target: Phase) -> dict:
    return {(phase, event): target for phase in phases}


TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    # ---- the conversation
    (Phase.LISTENING, Event.TO_RESPONDING): Phase.RESPONDING,
    (Phase.RESPONDING, Event.TO_LISTENING): Phase.LISTENING,
    (Phase.RESPONDING, Event.BARGE_IN): Phase.LISTENING,
    # ---- the session's life
    (Phase.OPEN, Event.END): Phase.CLOSING,
    (Phase.CLOSING, Event.FINALS_SETTLED): Phase.CLOSED,
    # ---- an utterance begins
    (Phase.WAITING, Event.SPEECH_BEGAN): Phase.SPEAKING,
    (Phase.WAITING, Event.SPEECH_BEGAN_OVER_ASSISTANT): Phase.CANDIDATE,
    # ---- barge-in
    (Phase.CANDIDATE, Event.PROBE_DUE): Phase.PROBING,
    (Phase.CANDIDATE, Event.PAUSE_BEGAN): Phase.PROBING,
    (Phase.PROBING, Event.PAUSE_BEGAN): Phase.PROBING_PAUSED,
    (Phase.PROBING, Event.PROBE_ANSWERED): Phase.CANDIDATE,
    (Phase.PROBING_PAUSED, Event.PROBE_ANSWERED): Phase.PROBING,
    (Phase.PROBING, Event.PROBE_MOOT): Phase.CANDIDATE,
    (Phase.PROBING_PAUSED, Event.PROBE_MOOT): Phase.CANDIDATE,
    (Phase.PROBING, Event.ASIDE_FAILED): Phase.CANDIDATE,
    (Phase.PROBING_PAUSED, Event.ASIDE_FAILED): Phase.CANDIDATE,
    **_each(UNCONFIRMED, Event.BARGE_IN, Phase.SPEAKING),
    **_each(UNCONFIRMED, Event.TO_LISTENING, Phase.SPEAKING),
    # ---- adaptive end of turn
    (Phase.SPEAKING, Event.CHECK_DUE): Phase.CHECKING,
    (Phase.CHECKING, Event.CHECK_MOOT): Phase.SPEAKING,
    (Phase.CHECKING, Event.TURN_UNDECIDED): Phase.SPEAKING,
    (Phase.CHECKING, Event.ASIDE_FAILED): Phase.SPEAKING,
    (Phase.HOLDING, Event.SPEECH_RESUMED): Phase.SPEAKING,
    # Turn mode checks a pause that held once more, later in it.
    (Phase.HOLDING, Event.CHECK_DUE): Phase.CHECKING,
    # A failed probe from before a `TO_LISTENING` also clears `CHECKING` while the check
    # still decodes: its answer is judged in whatever phase it finds.
    (Phase.SPEAKING, Event.TURN_HOLDS): Phase.HOLDING,
    (Phase.CHECKING, Event.TURN_HOLDS): Phase.HOLDING,
    **_each(USER_TURN, Event.TURN_OVER, Phase.FINAL_OUT),
    # ---- an utterance ends
    # A length cut leaves both halves the user's, even speech heard over the assistant.
    **_each(OPEN_UTTERANCE - {Phase.SPEAKING}, Event.CUT, Phase.SPEAKING),
    **_each(OPEN_UTTERANCE, Event.ENDED, Phase.FINAL_OUT),
    (Phase.SPEAKING, Event.ENDED_IN_CHECKED_PAUSE): Phase.FINAL_OUT,
    (Phase.HOLDING, Event.ENDED_IN_CHECKED_PAUSE): Phase.FINAL_OUT,
    (Phase.CHECKING, Event.ENDED_IN_CHECKED_PAUSE): Phase.RACING_CHECK,
    **_each(USER_TURN | {Phase.CANDIDATE}, Event.DROPPED, Phase.DONE),
    # ---- its final
    (Phase.FINAL_OUT, Event.FINAL_RETURNED): Phase.DONE,
    (Phase.RACING_CHECK, Event.FINAL_RETURNED): Phase.DONE,
    (Phase.RACING_CHECK, Event.CHECK_WON): Phase.ANSWERED_BY_CHECK,
    (Phase.RACING_CHECK, Event.ASIDE_FAILED): Phase.FINAL_OUT,
    (Phase.ANSWERED_BY_CHECK, Event.FINAL_RETURNED): Phase.DONE,
}


def advance(phase: Phase, event: Event) -> Phase:
    """The phase after `event`; an event the table does not list for `phase` changes nothing."""
    return TRANSITIONS.get((phase, event), phase)

"""When an utterance is over: the fixed, adaptive and turn-model endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from stt_worker.config.fields import Group, setting


class EndOfTurnFields(BaseModel):
    """The fields of `Group.END_OF_TURN`, one of the bases of `Settings`."""

    endpoint_silence_ms: int = setting(
        500,
        "STT_ENDPOINT_SILENCE_MS",
        group=Group.END_OF_TURN,
        description="Trailing silence that ends an utterance; in `adaptive` mode, the wait "
        "when the end probability falls between the two thresholds.",
        ge=60,
    )
    endpoint_mode: Literal["fixed", "adaptive", "turn"] = setting(
        "fixed",
        "STT_ENDPOINT_MODE",
        group=Group.END_OF_TURN,
        description="`turn`: at `STT_TURN_CHECK_MS` of pause, transcribe and ask Smart Turn "
        "v3.2 (the audio end-of-turn model) whether the turn is complete; end there with "
        "that text, or wait up to `STT_TURN_MAX_MS` when it is not. "
        "`fixed`: the turn ends after `STT_ENDPOINT_SILENCE_MS` of silence. "
        "`adaptive`: transcribe at `STT_ENDPOINT_MIN_SILENCE_MS` and end there after a "
        "finished sentence, wait up to `STT_ENDPOINT_MAX_SILENCE_MS` after an unfinished "
        "phrase.",
    )
    endpoint_speculate_ms: int = setting(
        200,
        "STT_ENDPOINT_SPECULATE_MS",
        group=Group.END_OF_TURN,
        description="Fixed mode: this far into a pause the speech so far is decoded as its "
        "final would be (in the partials' line, shown as a partial); if the pause then ends "
        "the utterance with no speech since, that text is the final, with no decode waited "
        "for. 0 = off; ignored unless below `STT_ENDPOINT_SILENCE_MS`.",
        ge=0,
    )
    turn_events: bool = setting(
        False,
        "STT_TURN_EVENTS",
        group=Group.END_OF_TURN,
        description="Sessions publish `eager_end_of_turn` when the speculation early in a "
        "pause has the final's words (`STT_ENDPOINT_SPECULATE_MS`), and `turn_resumed` when "
        "speech comes back after one, so an assistant can start its answer early and cancel "
        "it. The default of the `turn_events` start option; off because a consumer written "
        "for the seed protocol may take any message that is not a partial for a final.",
    )
    endpoint_min_silence_ms: int = setting(
        300,
        "STT_ENDPOINT_MIN_SILENCE_MS",
        group=Group.END_OF_TURN,
        description="Adaptive mode: the pause that triggers a turn check.",
        ge=60,
    )
    endpoint_max_silence_ms: int = setting(
        1000,
        "STT_ENDPOINT_MAX_SILENCE_MS",
        group=Group.END_OF_TURN,
        description="Adaptive mode: the wait after an unfinished phrase.",
        ge=60,
    )
    endpoint_finished_prob: float = setting(
        0.75,
        "STT_ENDPOINT_FINISHED_PROB",
        group=Group.END_OF_TURN,
        description="Adaptive mode: at or above this decoder probability that the words end "
        "at the pause, the turn ends at the short pause.",
        ge=0,
        le=1,
    )
    endpoint_unfinished_prob: float = setting(
        0.5,
        "STT_ENDPOINT_UNFINISHED_PROB",
        group=Group.END_OF_TURN,
        description="Adaptive mode: below this probability (or after a continuation word, a "
        "comma or an ellipsis) the turn waits the long pause.",
        ge=0,
        le=1,
    )
    turn_check_ms: int = setting(
        80,
        "STT_TURN_CHECK_MS",
        group=Group.END_OF_TURN,
        description="Turn mode: the pause that triggers a turn check (its text and Smart "
        "Turn's verdict).",
        ge=20,
    )
    turn_recheck_ms: int = setting(
        200,
        "STT_TURN_RECHECK_MS",
        group=Group.END_OF_TURN,
        description="Turn mode: when the first check held the turn open, the pause that "
        "checks again (Smart Turn first, a decode only if it hears an end), with the "
        "stricter `STT_TURN_RECHECK_VETO_PROB`; 0 = no recheck.",
        ge=0,
    )
    turn_max_ms: int = setting(
        1000,
        "STT_TURN_MAX_MS",
        group=Group.END_OF_TURN,
        description="Turn mode: the longest pause while the turn holds (or a check is still "
        "decoding); after an undecided check `STT_ENDPOINT_SILENCE_MS` applies.",
        ge=60,
    )
    turn_over_prob: float = setting(
        0.9,
        "STT_TURN_OVER_PROB",
        group=Group.END_OF_TURN,
        description="Turn mode: at or above this Smart Turn probability the turn ends at the "
        "check (unless the words end mid-phrase or the decoder vetoes).",
        ge=0,
        le=1,
    )
    turn_hold_prob: float = setting(
        0.9,
        "STT_TURN_HOLD_PROB",
        group=Group.END_OF_TURN,
        description="Turn mode: below this Smart Turn probability the turn holds "
        "(`STT_TURN_MAX_MS`); in between, `STT_ENDPOINT_SILENCE_MS` decides.",
        ge=0,
        le=1,
    )
    turn_end_veto_prob: float = setting(
        0.5,
        "STT_TURN_END_VETO_PROB",
        group=Group.END_OF_TURN,
        description="Turn mode: below this decoder end probability the turn holds whatever "
        "Smart Turn says.",
        ge=0,
        le=1,
    )
    turn_recheck_veto_prob: float = setting(
        0.85,
        "STT_TURN_RECHECK_VETO_PROB",
        group=Group.END_OF_TURN,
        description="Turn mode: the decoder veto at a recheck; later in a pause Smart Turn "
        "hears most clause ends as the end of the turn, so the words must be surer.",
        ge=0,
        le=1,
    )

"""The pause set's two halves: thresholds are tuned on one and judged on the other.

The unit is an utterance (the noisy LJ clip goes with its clean copy, so no sentence is
heard in both halves). Speaker by speaker (LibriSpeech 1089, then LJ Speech, then the extra
LJ clips of `bench.lj_extra` when the set has them), the units that end a sentence first
(only their ends' latency counts), each kind with the most word gaps first, every unit goes
to the half with fewer sentence ends so far, then fewer gaps (then the held-out one): both
halves get every speaker, as many ends that count and about as many inserted pauses. The
rule is fixed before any rule is scored, so no threshold chose its own test sentences.
Dealing is in order and each unit's half depends only on the units before it, so the extra
clips, dealt last, leave the shared sentences' halves as they were, and their own sentence
ends alternate between the halves from where the shared ones left off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

HELD_OUT = "held-out"
TUNE = "tune"
NOISY_PREFIX = "noisy10db_"


def utterance(name: str) -> str:
    """The utterance a sentence clip speaks: the noisy copy's is its clean one's."""
    return name.removeprefix(NOISY_PREFIX)


def speaker(name: str) -> str:
    """`ls` (LibriSpeech speaker 1089), `lj` (LJ Speech) or `ljx` (`bench.lj_extra`)."""
    return utterance(name).split("_", 1)[0]


def halves(
    gaps: Mapping[str, int],
    complete: Mapping[str, bool],
    speakers: Sequence[str] = ("ls", "lj", "ljx"),
) -> dict[str, str]:
    """Each sentence's half, from its number of usable word gaps (sentence name -> gaps) and
    whether its text ends a sentence."""
    units: dict[str, int] = {}
    for name, count in gaps.items():
        units[utterance(name)] = units.get(utterance(name), 0) + count
    ends = {utterance(name): done for name, done in complete.items()}
    order = [
        unit
        for who in speakers
        for unit in sorted(units, key=lambda u: (not ends[u], -units[u], u))
        if speaker(unit) == who
    ]
    assert len(order) == len(units), f"a sentence of no known speaker: {sorted(units)}"
    dealt: dict[str, str] = {}
    load = {HELD_OUT: [0, 0], TUNE: [0, 0]}  # sentence ends, gaps
    for unit in order:
        half = min((HELD_OUT, TUNE), key=lambda h: load[h])
        dealt[unit] = half
        load[half][0] += ends[unit]
        load[half][1] += units[unit]
    return {name: dealt[utterance(name)] for name in gaps}

"""How `bench.chaos` scores a disrupted run against the calm run of the same audio, from the
consumer's side: only what the worker published and when it arrived.

The calm run is the truth: its sessions never move, so each of its finals names the audio it
covers. A session that moves mid-run is renumbered on (`utterance_id`, `sequence`) but its
`audio_*_s` count from the audio its new owner heard, so the disrupted run's finals are
matched to the calm run's by their words instead: each session's words of both runs are
aligned (a longest common subsequence, `aligned`), and each calm utterance learns which
disrupted finals hold its words.

- lost: a calm utterance with words of which fewer than half are in the disrupted run, and
  no final in its place;
- reworded: a calm utterance whose words did not come, but a final did in its place (between
  the finals holding the utterances before and after it) with words that align with nothing
  of the calm run: the same speech cut into an utterance a little differently (a moved
  session's VAD starts afresh at its new owner) and so decoded differently, not lost. Such a
  final may repeat what the session said earlier (each session loops the same clips, which
  decode differently at different places even in the calm run) and is then no duplicate;
- duplicate: a disrupted final whose `utterance_id` the session already had, or one (of at
  least three words) whose words mostly align with nothing of the calm run but repeat what
  another final of the session said (the alignment takes one of two twins), unless it is
  a reworded utterance's final;
- latency: end of speech (the calm final's audio, the worker's own VAD) -> the last final
  holding its words, for the calm utterances that ended on silence; a drain cuts an
  utterance in two and it counts when its rest is out.
"""

from __future__ import annotations

import difflib
import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.loadgen import LoadRun, SessionPlan
from stt_worker.core.protocol import Transcription
from stt_worker.core.vad import FRAME_MS
from stt_worker.evaluation.clips import trailing_silence_frames
from stt_worker.evaluation.textnorm import normalise

MATCHED_ENOUGH = 0.5  # of an utterance's words, for it to count as heard
REPEAT_MIN_WORDS = 3  # a shorter final repeating words is ordinary speech, not a replay
REPEATED = 0.8  # of a final's words found, in order, in the session's other finals


@dataclass(frozen=True, slots=True)
class Heard:
    """One final as the consumer received it."""

    utterance_id: int
    words: tuple[str, ...]
    start_s: float
    end_s: float
    ended_by: str
    received_at: float  # time.time()


def finals(run: LoadRun) -> list[list[Heard]]:
    """Each session's finals in arrival order, by session number (ids differ by run)."""
    index = {plan.session_id: i for i, plan in enumerate(run.plans)}
    heard: list[list[Heard]] = [[] for _ in run.plans]
    for item in run.received:
        message = item.message
        if item.session_id in index and isinstance(message, Transcription) and message.is_final:
            heard[index[item.session_id]].append(
                Heard(
                    message.utterance_id,
                    words(message.transcript),
                    message.audio_start_s,
                    message.audio_end_s,
                    message.end_reason or "-",
                    item.received_at,
                )
            )
    return heard


def words(text: str) -> tuple[str, ...]:
    """The normalised words, each run of one word repeated kept once: a decoding loop
    ("p-p-p-p ...") at a cut must not outweigh the utterance's real words."""
    return tuple(w for w, _ in itertools.groupby(normalise(text).split()))


def speech_end_s(plan: SessionPlan, final: Heard) -> float:
    """Where the final's speech ended in its session's audio (its trailing silence off)."""
    assert plan.audio is not None
    silence = trailing_silence_frames(plan.audio, final.start_s, final.end_s)
    return final.end_s - silence * FRAME_MS / 1000


@dataclass(slots=True)
class Matching:
    """One session's disrupted finals matched to its calm ones by their words."""

    holders: list[set[int]]  # by calm final: the disrupted finals holding its words
    heard: list[bool]  # by calm final: most of its words arrived, or a reworded final
    repeated: list[int]  # the disrupted finals that repeat another, by index
    reworded: list[tuple[int, int]]  # (calm final, the disrupted final in its place)

    @property
    def lost(self) -> int:
        return self.heard.count(False)

    @property
    def duplicates(self) -> int:
        return len(self.repeated)


def aligned(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs of equal words of `a` and `b` along a longest common subsequence: the most
    words matched in order. Not difflib's longest block first: a session loops the same clips,
    and one word decoded differently early on (JFK's "s not" against "ask not") let its
    longest block match the disrupted run a whole loop out of step with the calm one, so a
    loop's worth of finals counted as lost and the next loop's as duplicates."""
    n, m = len(a), len(b)
    # longest[i][j]: the longest common subsequence of a[i:] and b[j:].
    longest = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below, word = longest[i], longest[i + 1], a[i]
        for j in range(m - 1, -1, -1):
            row[j] = below[j + 1] + 1 if word == b[j] else max(below[j], row[j + 1])
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j] and longest[i][j] == longest[i + 1][j + 1] + 1:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif longest[i + 1][j] >= longest[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def match(calm: Sequence[Heard], disrupted: Sequence[Heard]) -> Matching:
    calm_words = [(k, w) for k, final in enumerate(calm) for w in final.words]
    chaos_words = [(j, w) for j, final in enumerate(disrupted) for w in final.words]
    holders: list[set[int]] = [set() for _ in calm]
    matched_calm: dict[int, int] = defaultdict(int)
    matched_chaos: dict[int, int] = defaultdict(int)
    pairs = aligned([w for _, w in calm_words], [w for _, w in chaos_words])
    for a, b in pairs:
        k, j = calm_words[a][0], chaos_words[b][0]
        holders[k].add(j)
        matched_calm[k] += 1
        matched_chaos[j] += 1
    heard = [
        not final.words or matched_calm[k] / len(final.words) >= MATCHED_ENOUGH
        for k, final in enumerate(calm)
    ]
    by_id, by_words = _duplicates(disrupted, matched_chaos)
    unmatched = {
        j
        for j, final in enumerate(disrupted)
        if final.words and matched_chaos[j] / len(final.words) < MATCHED_ENOUGH
    } - set(by_id)
    reworded = _reworded(holders, heard, unmatched, len(disrupted))
    for k, j in reworded:
        heard[k] = True
        holders[k].add(j)
    in_place = {j for _, j in reworded}
    repeated = sorted(by_id + [j for j in by_words if j not in in_place])
    return Matching(holders, heard, repeated, reworded)


def _reworded(
    holders: list[set[int]], heard: list[bool], unmatched: set[int], count: int
) -> list[tuple[int, int]]:
    """Each unheard calm final paired with the first unmatched disrupted final (of `count`)
    that lies between the finals holding the heard calm utterances before and after it."""
    pairs: list[tuple[int, int]] = []
    free = sorted(unmatched)
    for k, ok in enumerate(heard):
        if ok:
            continue
        before = [j for i in range(k) if heard[i] for j in holders[i]]
        after = [j for i in range(k + 1, len(heard)) if heard[i] for j in holders[i]]
        low, high = max(before, default=-1), min(after, default=count)
        slot = next((j for j in free if low < j < high), None)
        if slot is not None:
            pairs.append((k, slot))
            free.remove(slot)
    return pairs


@dataclass(slots=True)
class SessionScore:
    lost: list[int] = field(default_factory=list)  # calm finals, by index
    duplicates: list[int] = field(default_factory=list)  # disrupted finals, by index
    reworded: list[tuple[int, int]] = field(default_factory=list)  # (calm, disrupted)
    # (end of speech, wall time; seconds to its final) of each endpointed calm utterance.
    calm_latency: list[tuple[float, float]] = field(default_factory=list)
    disrupted_latency: list[tuple[float, float]] = field(default_factory=list)


def score_session(
    calm: Sequence[Heard],
    disrupted: Sequence[Heard],
    calm_plan: SessionPlan,
    calm_run: LoadRun,
    disrupted_plan: SessionPlan,
    disrupted_run: LoadRun,
) -> SessionScore:
    """One session's lost and duplicate finals and its latencies in both runs."""
    matching = match(calm, disrupted)
    lost = [k for k, heard in enumerate(matching.heard) if not heard]
    score = SessionScore(lost=lost, duplicates=matching.repeated, reworded=matching.reworded)
    for k, final in enumerate(calm):
        if final.ended_by != "silence" or not final.words:
            continue
        end_s = speech_end_s(calm_plan, final)
        calm_sent = calm_run.send_time(calm_plan, end_s)
        chaos_sent = disrupted_run.send_time(disrupted_plan, end_s)
        if calm_sent is not None:
            score.calm_latency.append((calm_sent, final.received_at - calm_sent))
        if matching.heard[k] and chaos_sent is not None and matching.holders[k]:
            last = max(disrupted[j].received_at for j in matching.holders[k])
            score.disrupted_latency.append((chaos_sent, last - chaos_sent))
    return score


def _duplicates(disrupted: Sequence[Heard], matched: dict[int, int]) -> tuple[list[int], list[int]]:
    """The disrupted finals that repeat an `utterance_id`, and those that repeat words."""
    seen: set[int] = set()
    by_id: list[int] = []
    by_words: list[int] = []
    for j, final in enumerate(disrupted):
        said = final.words
        unmatched = len(said) >= REPEAT_MIN_WORDS and matched[j] / len(said) < MATCHED_ENOUGH
        if final.utterance_id in seen:
            by_id.append(j)
        elif unmatched:  # the alignment may have taken its twin instead
            others = [w for k, other in enumerate(disrupted) if k != j for w in other.words]
            twins = difflib.SequenceMatcher(None, others, list(said), autojunk=False)
            in_order = sum(block.size for block in twins.get_matching_blocks())
            if in_order / len(said) >= REPEATED:
                by_words.append(j)
        seen.add(final.utterance_id)
    return by_id, by_words

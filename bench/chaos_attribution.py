"""Where each lost and each duplicate final of `bench.chaos` came from: its session and
partition, the calm run's utterance (its audio span), the workers that held the partition's
lease around it, and the nearest thing done to a worker.

The partition is the server's own mapping, ``partition(N,1)`` of the session token: FNV-1a
(32 bits) of the token, modulo N (checked against a real nats-server in
`tests/test_chaos_bench.py`). Owners come from polling the lease bucket during the disrupted
run (`OwnerLog`), actions from the fleet (`Fleet.actions`), both in wall time.
"""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.chaos_score import Heard
from bench.loadgen import LoadRun, SessionPlan

# An utterance's owners are looked at from its first chunk until this long after its last:
# its final (or a replay's) comes within that unless something went wrong.
FINAL_WINDOW_S = 5.0
DUPLICATE_LOOKBACK_S = 10.0  # a duplicate's cause lies shortly before it arrived

_FNV_OFFSET, _FNV_PRIME = 0x811C9DC5, 0x01000193


def partition_of(token: str, partitions: int) -> int:
    """nats-server's ``partition(partitions, 1)`` of a subject whose first wildcard is `token`."""
    digest = _FNV_OFFSET
    for byte in token.encode():
        digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return digest % partitions


@dataclass(slots=True)
class OwnerLog:
    """Each partition's lease holder over time, as polled (a change is kept when seen)."""

    times: list[float] = field(default_factory=list)
    owners: list[dict[int, str]] = field(default_factory=list)

    def record(self, at: float, owners: dict[int, str]) -> None:
        if not self.owners or self.owners[-1] != owners:
            self.times.append(at)
            self.owners.append(owners)

    def owner_at(self, partition: int, at: float) -> str | None:
        index = bisect.bisect_right(self.times, at) - 1
        return self.owners[index].get(partition) if index >= 0 else None

    def held_by(self, partition: int, begin: float, end: float) -> list[str]:
        """The lease holders of `partition` from `begin` to `end` in order ("-": none)."""
        first = max(0, bisect.bisect_right(self.times, begin) - 1)
        last = bisect.bisect_right(self.times, end)
        seen: list[str] = []
        for owners in self.owners[first:last]:
            holder = owners.get(partition, "-")
            if not seen or seen[-1] != holder:
                seen.append(holder)
        return seen


def nearest(actions: Sequence[tuple[float, str]], at: float, origin: float) -> dict[str, Any]:
    """The fleet action closest to `at`, and how long after it `at` fell (negative: before)."""
    if not actions:
        return {"action": None, "offset_s": None, "at_s": None}
    when, what = min(actions, key=lambda action: abs(action[0] - at))
    return {"action": what, "offset_s": round(at - when, 1), "at_s": round(when - origin, 1)}


@dataclass(frozen=True, slots=True)
class Context:
    """The disrupted run and what went on around it."""

    run: LoadRun
    owners: OwnerLog
    actions: Sequence[tuple[float, str]]
    partitions: int

    def around(self, plan: SessionPlan, begin: float, end: float) -> dict[str, Any]:
        partition = partition_of(plan.session_id, self.partitions)
        held = self.owners.held_by(partition, begin, end)
        return {
            "partition": partition,
            "owner_before": self.owners.owner_at(partition, begin),
            "owner_after": self.owners.owner_at(partition, end),
            "owners": held,
            "nearest": nearest(self.actions, begin, self.run.started_at),
        }


def lost_entry(
    context: Context, session: int, calm: Heard, disrupted: Sequence[Heard]
) -> dict[str, Any]:
    """A calm utterance whose words the disrupted run lacks; timed where its audio was sent
    in the disrupted run (its partition is the disrupted session's: ids differ by run), with
    what the session's disrupted finals said meanwhile (a decoding that differs, or nothing)."""
    plan = context.run.plans[session]
    origin = context.run.started_at
    sent = context.run.send_time(plan, calm.start_s + 0.02) or origin
    done = (context.run.send_time(plan, calm.end_s) or sent) + FINAL_WINDOW_S
    return {
        "session": session,
        "utterance_id": calm.utterance_id,
        "calm_span_s": [round(calm.start_s, 2), round(calm.end_s, 2)],
        "sent_s": round(sent - origin, 1),
        "words": " ".join(calm.words),
        "heard_meanwhile": [
            f"{final.utterance_id}: {' '.join(final.words)}"
            for final in disrupted
            if sent <= final.received_at <= done
        ],
        **context.around(plan, sent, done),
    }


def duplicate_entry(
    context: Context, session: int, final: Heard, calm: Sequence[Heard]
) -> dict[str, Any]:
    """A disrupted final that repeats another; the calm utterance whose words it holds most of,
    timed where it arrived."""
    plan = context.run.plans[session]
    twin = max(calm, key=lambda other: _shared(other.words, final.words), default=None)
    return {
        "session": session,
        "utterance_id": final.utterance_id,
        "calm_utterance_id": None if twin is None else twin.utterance_id,
        "calm_span_s": None if twin is None else [round(twin.start_s, 2), round(twin.end_s, 2)],
        "received_s": round(final.received_at - context.run.started_at, 1),
        "words": " ".join(final.words),
        **context.around(plan, final.received_at - DUPLICATE_LOOKBACK_S, final.received_at),
    }


def _shared(a: Sequence[str], b: Sequence[str]) -> int:
    blocks = difflib.SequenceMatcher(None, list(a), list(b), autojunk=False)
    return sum(block.size for block in blocks.get_matching_blocks())


def table(result: dict[str, Any]) -> list[str]:
    """The .md lines naming each lost and duplicate final (none: no lines)."""
    rows = [("lost", e) for e in result["lost"]] + [("duplicate", e) for e in result["duplicates"]]
    if not rows:
        return []
    lines = [
        "| kind | session (partition) | utterance (calm span s) | at (s) | owners | nearest "
        "action | words |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, e in rows:
        span = e["calm_span_s"] or ["?", "?"]
        at = e.get("sent_s", e.get("received_s"))
        near = e["nearest"]
        action = f"{near['action']} ({near['offset_s']:+} s)" if near["action"] else "-"
        words = e["words"] if len(e["words"]) <= 48 else e["words"][:45] + "..."
        lines.append(
            f"| {kind} | {e['session']} ({e['partition']}) | {e['utterance_id']} "
            f"({span[0]}-{span[1]}) | {at} | {' -> '.join(e['owners'])} | {action} | {words} |"
        )
    return ["", *lines]

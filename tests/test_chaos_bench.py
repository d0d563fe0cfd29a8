"""The chaos benchmark's quick run (`python -m bench.chaos --quick`): real nats-server with
JetStream, real elastic worker processes, real speech; a worker killed and one drained and
replaced under live sessions, and no final lost or published twice."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import pytest

from bench.chaos import slow_lines, twins_of
from bench.chaos_attribution import OwnerLog, nearest, partition_of, table
from bench.chaos_score import Heard, match, words
from bench.loadgen import LoadRun, SessionPlan
from stt_worker.runtime.nats_server import NatsServer

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "lost_finals",
    "duplicate_finals",
    "wer_ratio",
    "p95_disrupted_s",
    "p95_calm_s",
    "slow_disrupted",
}


@pytest.mark.timeout(420)
def test_quick_chaos_run_loses_and_repeats_no_final(tmp_path: Path) -> None:
    path = tmp_path / "chaos.json"
    command = [sys.executable, "-m", "bench.chaos", "--quick", "--json", str(path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    data = json.loads(path.read_text())
    assert data.keys() >= KEYS
    assert [e["event"].split()[0] for e in data["events"]] == ["kill", "term"]
    assert all(e["rebalanced_s"] is not None for e in data["events"]), data["events"]
    # Speech went through both runs: there were utterances to lose.
    assert data["utterances"] >= 4 and data["finals_disrupted"] >= 4
    assert data["unclosed"] == {"calm": 0, "disrupted": 0}
    assert len(data["lost"]) == data["lost_finals"] == 0, data["lost"]
    assert len(data["duplicates"]) == data["duplicate_finals"] == 0, data["duplicates"]
    assert data["p95_calm_s"] is not None and data["wer_ratio"] is not None
    assert "| lost_finals | 0 |" in path.with_suffix(".md").read_text()


def heard(utterance_id: int, text: str) -> Heard:
    return Heard(utterance_id, words(text), 0.0, 1.0, "end", 0.0)


CALM = [heard(1, "he hoped there would be stew"), heard(2, "for dinner turnips and carrots")]


def test_a_session_looping_its_clips_stays_aligned_when_an_early_word_differs() -> None:
    # The shape of a real run: a session loops its clips, and the disrupted run decoded one
    # short phrase differently twice. Aligned by difflib's longest block first, the runs
    # slipped a whole loop out of step: a loop of finals lost, the next one duplicated.
    loop = [
        "and so my fellow americans", "s not", "what your country can do for you",
        "ask what you can do for your country", "he could wait no longer",
        "has never been surpassed",
    ]  # fmt: skip
    texts = loop * 3
    calm = [heard(k, text) for k, text in enumerate(texts, start=1)]
    changed = {1: "ask not", 7: "ask not"}
    disrupted = [heard(k + 1, changed.get(k, text)) for k, text in enumerate(texts)]
    matching = match(calm, disrupted)
    assert (matching.lost, matching.duplicates) == (0, 0)


def test_a_final_whose_words_never_came_is_lost_and_a_replayed_one_is_a_duplicate() -> None:
    assert match(CALM, CALM).lost == 0 and match(CALM, CALM).duplicates == 0
    # A drain cut the first utterance in two: nothing lost, nothing repeated.
    cut = [heard(1, "he hoped there"), heard(2, "would be stew"), heard(3, CALM[1].words[0])]
    assert match(CALM, [*cut, heard(4, "dinner turnips and carrots")]).lost == 0
    assert match(CALM, CALM[:1]).lost == 1
    replayed = [CALM[0], heard(2, "he hoped there would be stew"), heard(3, "for dinner turnips")]
    assert match(CALM, replayed).duplicates == 1
    renumbered = [CALM[0], heard(1, "for dinner turnips and carrots")]
    assert match(CALM, renumbered).duplicates == 1


def test_an_utterance_decoded_differently_in_its_place_is_reworded_not_lost_nor_repeated():
    """The same clip twice in a session, decoded two ways (Whisper's prompt differs): the
    disrupted run's second decoding repeats the first's words in the place of the calm run's
    other decoding. One utterance with other words, not a loss and a duplicate."""
    calm = [
        heard(1, "he is definitely counseled him"),
        heard(2, "for a full hour he had paced up and down"),
        heard(3, "stuff it into you his belly counseled him"),
        heard(4, "has never been surpassed"),
    ]
    disrupted = [*calm[:2], heard(3, "he is definitely counseled him"), calm[3]]
    matching = match(calm, disrupted)
    assert (matching.lost, matching.duplicates, matching.reworded) == (0, 0, [(2, 2)])
    # Nothing in its place: lost. The same words elsewhere: a duplicate still.
    gone = [*calm[:2], calm[3]]
    assert match(calm, gone).lost == 1 and match(calm, gone).reworded == []
    replayed = [*calm, heard(5, "he is definitely counseled him")]
    assert match(calm, replayed).duplicates == 1 and match(calm, replayed).reworded == []
    # A repeated utterance_id is a duplicate even in a lost utterance's place.
    renumbered = [*calm[:2], heard(2, "he is definitely counseled him"), calm[3]]
    assert match(calm, renumbered).duplicates == 1 and match(calm, renumbered).lost == 1


def test_a_decoding_loop_does_not_outweigh_the_words_of_its_utterance() -> None:
    looped = [heard(1, "he hoped there would be stew p-p-p-p-p-p-p-p-p-p-p-p-p-p-p-p")]
    assert match(looped, CALM[:1]).lost == 0


async def test_the_partition_named_for_a_session_is_the_one_the_server_maps_it_to(tmp_path):
    config = tmp_path / "nats.conf"
    config.write_text(
        'mappings { "ai.voice.stream.*": "ai.voice.partitioned.{{partition(12,1)}}'
        '.{{wildcard(1)}}" }\n'
    )
    sessions = [f"chaos-{uuid.uuid4().hex[:6]}-{i}" for i in range(40)]
    mapped: dict[str, int] = {}
    async with NatsServer(extra_args=("-c", str(config))) as server:
        nc = await nats.connect(server.url)
        try:

            async def note(msg) -> None:
                _, _, _, partition, session = msg.subject.split(".")
                mapped[session] = int(partition)

            await nc.subscribe("ai.voice.partitioned.>", cb=note)
            for session in sessions:
                await nc.publish(f"ai.voice.stream.{session}", b"")
            await nc.flush()
            for _ in range(50):
                if len(mapped) == len(sessions):
                    break
                await asyncio.sleep(0.05)
        finally:
            await nc.close()
    assert len(set(mapped.values())) > 6  # spread, so a constant answer would fail
    assert mapped == {session: partition_of(session, 12) for session in sessions}


def test_owners_and_the_nearest_action_around_a_time() -> None:
    owners = OwnerLog()
    owners.record(10.0, {0: "w0", 1: "w1"})
    owners.record(10.5, {0: "w0", 1: "w1"})  # no change: not kept
    owners.record(12.0, {1: "w1"})  # w0 killed, its lease expired
    owners.record(15.0, {0: "w2", 1: "w1"})
    assert owners.times == [10.0, 12.0, 15.0]
    assert owners.owner_at(0, 9.0) is None and owners.owner_at(0, 11.0) == "w0"
    assert owners.held_by(0, 11.0, 16.0) == ["w0", "-", "w2"]
    assert owners.held_by(1, 11.0, 16.0) == ["w1"]
    actions = [(11.0, "SIGKILL w0"), (14.0, "w2 ready")]
    assert nearest(actions, 11.5, origin=1.0) == {
        "action": "SIGKILL w0", "offset_s": 0.5, "at_s": 10.0,
    }  # fmt: skip
    assert nearest(actions, 13.0, origin=1.0)["offset_s"] == -1.0


def test_the_report_names_each_lost_and_duplicate_final() -> None:
    entry = {
        "session": 3, "partition": 7, "utterance_id": 12, "calm_span_s": [40.1, 43.2],
        "sent_s": 55.3, "words": "he hoped there would be stew", "owners": ["w0", "-", "w4"],
        "nearest": {"action": "SIGKILL w0", "offset_s": 0.4, "at_s": 54.9},
    }  # fmt: skip
    assert table({"lost": [], "duplicates": []}) == []
    (_, _, _, row) = table({"lost": [entry], "duplicates": []})
    assert row.startswith("| lost | 3 (7) | 12 (40.1-43.2) | 55.3 | w0 -> - -> w4 |")
    assert "SIGKILL w0 (+0.4 s)" in row


def test_the_report_counts_the_slow_disrupted_latencies_by_their_nearest_action() -> None:
    def slow(action: str, latency_s: float) -> dict:
        return {"latency_s": latency_s, "nearest": {"action": action, "offset_s": 1.0}}

    assert slow_lines([]) == []
    entries = [slow("SIGKILL w0", 6.1), slow("w3 ready", 2.7), slow("SIGKILL w0", 4.0)]
    line = slow_lines(entries)[-1]
    assert "over 2.5 s: 3 (worst 6.1 s)" in line
    assert "SIGKILL w0: 2, w3 ready: 1" in line


def test_each_disrupted_session_is_named_onto_its_calm_twins_partition() -> None:
    calm = LoadRun([SessionPlan(str(uuid.uuid4()), i, None) for i in range(24)], ticks=100)
    names = twins_of(calm)("chaos-ab12cd", 24)

    assert len(set(names)) == 24 and all(n.startswith("chaos-ab12cd-") for n in names)
    assert [partition_of(n, 12) for n in names] == [
        partition_of(plan.session_id, 12) for plan in calm.plans
    ]

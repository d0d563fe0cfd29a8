"""Stable partials: LocalAgreement over consecutive hypotheses of one utterance. No I/O.

Each partial re-decodes the utterance so far, so its last words are often guesses at a word
that is still being spoken. A word becomes *stable* once two consecutive hypotheses agree on
it and on every word before it (LocalAgreement-2, as in ufal/whisper_streaming). Stable
words never change in later partials: a later hypothesis that disagrees only changes the
unstable tail. Words are compared case- and punctuation-insensitively.

Two hypotheses a short step of audio apart often make the same guess at a word still being
spoken ("wood" for "woodcutters"): with partials asked for 200 ms apart instead of 300,
stable words changed later more often (`bench.turn_latency` at one session: 8.3% of them
against 4.9%). So a hypothesis may be held against the latest one at least `apart_s` of
audio earlier rather than the one just before it (4.9% against 4.9%).
"""

from __future__ import annotations

import collections
import difflib
import re
from dataclasses import dataclass

_KEY = re.compile(r"[^\w']+")
# A word of a partial: two letters or more (any script), or "I". Whisper writes single
# letters, digits and stray punctuation ("n", "3", ".") for a fraction of a word.
_WORD = re.compile(r"[^\W\d_]{2,}|\bI\b")


def _key(word: str) -> str:
    return _KEY.sub("", word.lower())


def partial_text(hypothesis: str) -> str:
    """What of a partial's hypothesis is worth publishing: nothing when it holds no word,
    and a phrase said back to back (the decoder looping on a short stretch of audio: "He
    could. He could. He could.") once. The final is decoded afresh and keeps its repeats."""
    if not _WORD.search(hypothesis):
        return ""
    words = hypothesis.split()
    keys = [_key(word) for word in words]
    for size in range(1, len(words) // 2 + 1):
        if len(words) % size == 0 and keys == keys[:size] * (len(words) // size):
            return " ".join(words[:size])
    return hypothesis


@dataclass(frozen=True, slots=True)
class Partial:
    """What to publish: the text, and how many of its leading characters are stable."""

    text: str
    stable_chars: int


class LocalAgreement:
    """Commits the longest common word prefix of a hypothesis and an earlier one."""

    def __init__(self) -> None:
        self._stable: list[str] = []
        # Earlier hypotheses as (the end of their audio, their words with the stable ones
        # as committed), newest last; none older than the latest one agreed with.
        self._earlier: collections.deque[tuple[float, list[str]]] = collections.deque()

    @property
    def stable_text(self) -> str:
        return " ".join(self._stable)

    def update(self, hypothesis: str, *, at_s: float = 0.0, apart_s: float = 0.0) -> Partial:
        """Take the hypothesis of the audio up to `at_s`, held against the latest earlier
        one of audio up to `at_s - apart_s` (none yet: nothing becomes stable)."""
        tail = self._after_stable(hypothesis.split())
        reference = self._reference(at_s - apart_s)
        previous_tail = [] if reference is None else self._after_stable(reference)
        agreed = 0
        for mine, theirs in zip(tail, previous_tail, strict=False):
            if _key(mine) != _key(theirs):
                break
            agreed += 1
        self._stable += tail[:agreed]
        self._earlier.append((at_s, self._stable + tail[agreed:]))
        stable = " ".join(self._stable)
        rest = " ".join(tail[agreed:])
        text = f"{stable} {rest}".strip() if stable else rest
        return Partial(text=text, stable_chars=len(stable))

    def _reference(self, by_s: float) -> list[str] | None:
        """The latest earlier hypothesis of audio up to `by_s`. Those before it are dropped:
        a later hypothesis ends later, so it would pick this one or a newer one."""
        found = None
        while self._earlier and self._earlier[0][0] <= by_s + 1e-6:  # sums of 20 ms frames
            found = self._earlier.popleft()
        if found is None:
            return None
        self._earlier.appendleft(found)
        return found[1]

    def _after_stable(self, words: list[str]) -> list[str]:
        """The hypothesis's words after the stable prefix, which stays as promised."""
        keys = [_key(word) for word in words]
        stable_keys = [_key(word) for word in self._stable]
        if keys[: len(stable_keys)] == stable_keys:
            return words[len(stable_keys) :]
        # The model revised a stable word ("stuff it" -> "stuffered"): align the two and
        # continue after the last stable word the hypothesis still has.
        blocks = difflib.SequenceMatcher(None, stable_keys, keys, autojunk=False)
        matched = [block for block in blocks.get_matching_blocks() if block.size]
        if not matched:
            return words[len(stable_keys) :]
        last = matched[-1]
        return words[last.b + last.size :]

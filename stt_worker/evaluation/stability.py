"""Partial stability: how many words shown in partials later change."""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import EndReason, ServerMessage, Transcription
from stt_worker.evaluation.results import Stability

_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019\u2026"
_WORD_BREAK = re.compile(r"[\s\-\u2010-\u2015]+")  # white space, hyphens and dashes


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """A transcription result as partial stability reads it. `stable_chars` is None for a
    result that carries none (the seed's); every `Transcription` read here carries one."""

    utterance_id: int
    transcript: str
    is_final: bool
    end_reason: EndReason | None = None
    stable_chars: int | None = None

    @classmethod
    def of(cls, message: Transcription) -> Hypothesis:
        return cls(
            message.utterance_id,
            message.transcript,
            message.is_final,
            message.end_reason,
            message.stable_chars,
        )


def display_words(text: str) -> list[str]:
    """Words as a reader sees them, ignoring case, punctuation and hyphens ("fat-mutton" is
    "fat mutton": Whisper hyphenates one decode and not the next).

    Not Whisper's normaliser: it rewrites across word boundaries ("twenty five" -> "25"), so
    a prefix of a text would not normalise to a prefix of its normalised form; and a switch
    from "ten" to "10" is a change the reader sees.
    """
    words = (word.strip(_PUNCTUATION).lower() for word in _WORD_BREAK.split(text))
    return [word for word in words if word]


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def _aligned(a: Sequence[str], b: Sequence[str]) -> int:
    """Words of `a` kept, in order, in `b` (difflib's matching blocks)."""
    blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    return sum(block.size for block in blocks)


def _stable_words(hypothesis: Hypothesis) -> list[str] | None:
    """The whole words within the hypothesis' `stable_chars` prefix; None if it has none."""
    if hypothesis.stable_chars is None:
        return None
    text = hypothesis.transcript
    prefix = text[: hypothesis.stable_chars]
    words = display_words(prefix)
    # A prefix ending inside a word promises only part of it: that word is not counted.
    cut_inside_word = 0 < len(prefix) < len(text) and (prefix[-1] + text[len(prefix)]).isalnum()
    if words and cut_inside_word:
        words.pop()
    return words


def partial_stability(
    messages: Iterable[ServerMessage | ProtocolError | Hypothesis],
) -> Stability:
    """How many words shown in partials were changed by the next hypothesis.

    `messages` are one session's output messages in arrival order: transcription results
    (`Transcription`, or already read as `Hypothesis`); others are skipped. For
    each utterance, every partial is compared with the next hypothesis of the same utterance
    (the next partial, else the final): its words beyond their longest common prefix with the
    next one's words (`display_words`) count as changed; a word the next hypothesis drops
    counts too. A partial with no later hypothesis (its final never came) is not counted.
    Rates are changed words / words shown, over all counted partials, so a word shown by
    three partials counts three times: it was on screen three times.

    Position-wise is strict: one substituted word also changes every word after it, as a
    reader of a re-rendered line sees. `words_edited` counts only the words a word alignment
    does not keep, to tell a flip-flop on one word from a rewrite.

    Words within a partial's `stable_chars` prefix (when the worker sends it) are a promise,
    so they are compared with *every* later hypothesis: a stable word that a word alignment
    does not find in any one of them counts as changed. Alignment, not position, because a
    later hypothesis may add a word before the stable ones ("engraved and in" -> "engraved
    in") without changing the words the promise covered after it. At a length cut
    (`end_reason` "size") the final is read together with the next utterance's final.
    """
    by_utterance: dict[int, list[Hypothesis]] = {}
    finished: set[int] = set()
    for message in messages:
        if isinstance(message, Transcription):
            message = Hypothesis.of(message)
        elif not isinstance(message, Hypothesis):
            continue
        utterance = message.utterance_id
        if utterance in finished:
            continue  # nothing after the final is shown as part of this utterance
        by_utterance.setdefault(utterance, []).append(message)
        if message.is_final:
            finished.add(utterance)
    total = Stability()
    utterances = list(by_utterance.values())
    for index, hypotheses in enumerate(utterances):
        following = utterances[index + 1] if index + 1 < len(utterances) else []
        total += _utterance_stability(hypotheses, _continuation(hypotheses, following))
    return total


def _continuation(hypotheses: Sequence[Hypothesis], following: Sequence[Hypothesis]) -> list[str]:
    """Words that a length cut moved into the next utterance: the next final's, when this
    utterance's final says it was cut at the size bound. Such words were not contradicted:
    the reader sees them again, in order, at the start of the next line."""
    if not hypotheses or hypotheses[-1].end_reason != "size":
        return []
    finals = [h for h in following if h.is_final]
    return display_words(finals[0].transcript) if finals else []


def _utterance_stability(
    hypotheses: Sequence[Hypothesis], continuation: Sequence[str] = ()
) -> Stability:
    words = [display_words(h.transcript) for h in hypotheses]
    if hypotheses and hypotheses[-1].is_final:
        # Only the stable-prefix promise looks across the cut; plain partial churn does not.
        promise_words = [*words[:-1], words[-1] + list(continuation)]
    else:
        promise_words = words
    partials = revised = shown = changed = edited = 0
    stable_partials = stable_shown = stable_changed = 0
    for index, hypothesis in enumerate(hypotheses[:-1]):
        if hypothesis.is_final:
            continue
        kept = _common_prefix(words[index], words[index + 1])
        partials += 1
        shown += len(words[index])
        changed += len(words[index]) - kept
        revised += kept < len(words[index])
        edited += len(words[index]) - _aligned(words[index], words[index + 1])
        stable = _stable_words(hypothesis)
        if stable is not None:
            kept = min(_aligned(stable, later) for later in promise_words[index + 1 :])
            stable_partials += 1
            stable_shown += len(stable)
            stable_changed += len(stable) - kept
    return Stability(
        partials, revised, shown, changed, edited, stable_partials, stable_shown, stable_changed
    )

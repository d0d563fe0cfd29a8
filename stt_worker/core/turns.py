"""Turn-taking rules on text: which short replies are backchannels, not interruptions."""

from __future__ import annotations

import re
from collections.abc import Iterable

# What listeners say to show they follow without taking the turn. "no", "wait", "stop" are
# deliberately absent: said over the assistant, they mean "stop talking".
DEFAULT_BACKCHANNELS = (
    "yeah",
    "yes",
    "yep",
    "yup",
    "uh-huh",
    "mm-hmm",
    "mhm",
    "hmm",
    "mm",
    "okay",
    "ok",
    "right",
    "sure",
    "alright",
    "i see",
    "got it",
    "oh",
    "ah",
    "uh",
    "um",
    "cool",
    "nice",
    "wow",
)

_NOT_LETTERS = re.compile(r"[^a-z' ]+")


def words_of(text: str) -> list[str]:
    """Lower-case words; hyphens and punctuation split or vanish ("Uh-huh." -> uh, huh)."""
    return _NOT_LETTERS.sub(" ", text.lower().replace("-", " ")).split()


class Backchannels:
    """Tells a backchannel ("Yeah.", "Mm-hmm, okay.") from words that take the turn."""

    def __init__(self, phrases: Iterable[str] = DEFAULT_BACKCHANNELS) -> None:
        self._words: set[str] = set()
        for phrase in phrases:
            parts = words_of(phrase)
            self._words.update(parts)
            self._words.add("".join(parts))  # Whisper writes "mhm" as well as "mm-hmm"

    def only(self, text: str) -> bool:
        """True when `text` has words and every one of them is a backchannel word."""
        words = words_of(text)
        return bool(words) and all(word in self._words for word in words)

    def takes_turn(self, text: str, *, last_word_whole: bool = True) -> bool:
        """True when `text` holds at least one word that is not a backchannel; without
        `last_word_whole` its last word (perhaps cut off mid-speech) is not judged."""
        words = words_of(text)
        if not last_word_whole:
            words = words[:-1]
        return any(word not in self._words for word in words)


# Fast conversational speech runs at about 3-4 words a second; Whisper decoding a probe
# with no words in it can write a whole sentence ("I'm not gonna be a good one." for 0.8 s
# holding one "stop").
MAX_WORDS_PER_S = 5.0


def more_words_than_said(text: str, audio_s: float) -> bool:
    """True when `text` holds more words than anyone says in `audio_s` seconds."""
    return len(words_of(text)) > MAX_WORDS_PER_S * audio_s + 1


# What people say to stop a talking assistant. Heard in a probe they interrupt at once, even
# as its last, perhaps unfinished word: waiting for a one-word command to be "whole" costs a
# pause and a second decode (about 300 ms), and a backchannel cut short is heard as "Ye",
# "Run" or "Mm", never as one of these.
DEFAULT_COMMANDS = (
    "stop",
    "wait",
    "no",
    "cancel",
    "pause",
    "hold on",
    "hang on",
    "enough",
    "quiet",
    "shut up",
    "excuse me",
)


class Commands:
    """Finds a command phrase ("stop", "hold on") among the words of a text."""

    def __init__(self, phrases: Iterable[str] = DEFAULT_COMMANDS) -> None:
        self._phrases = [tuple(words_of(phrase)) for phrase in phrases if words_of(phrase)]

    def said(self, text: str) -> bool:
        words = words_of(text)
        return any(
            tuple(words[i : i + len(phrase)]) == phrase
            for phrase in self._phrases
            for i in range(len(words) - len(phrase) + 1)
        )


# Words a sentence almost never ends on: a pause after one is mid-phrase. Pronouns and
# verbs are left out ("What time is it?", "I know you.").
CONTINUATIONS = frozenset(
    {
        "and",
        "or",
        "but",
        "so",
        "because",
        "um",
        "uh",
        "er",
        "erm",
        "the",
        "a",
        "an",
        "to",
        "of",
        "with",
        "for",
        "from",
        "by",
        "as",
        "than",
        "which",
        "whose",
        "if",
        "then",
        "my",
        "your",
        "our",
        "their",
        "very",
    }
)


UNFINISHED_MARKS = ("...", "\u2026", ",", "-", "\u2014")


def sounds_finished(text: str) -> bool | None:
    """Does `text` end like a finished sentence? True: a sentence mark after a word that
    can end one; False: a continuation word, a comma or dash, an ellipsis or no mark at
    all; None: no words to judge."""
    stripped = text.rstrip()
    if not words_of(stripped):
        return None
    if ends_mid_phrase(stripped):
        return False
    return stripped[-1] in ".?!"


def ends_mid_phrase(text: str) -> bool:
    """A continuation word last ("and", "the", "um"), or a trailing comma, dash or ellipsis."""
    stripped = text.rstrip()
    words = words_of(stripped)
    return bool(words) and (words[-1] in CONTINUATIONS or stripped.endswith(UNFINISHED_MARKS))


def turn_is_over(
    text: str, end_prob: float | None, *, finished_prob: float, unfinished_prob: float
) -> bool | None:
    """Has the speaker finished their turn at this pause? True: end it now; False: they are
    mid-phrase, wait longer; None: cannot tell (the fixed endpoint decides).

    A continuation word or a trailing comma, dash or ellipsis means mid-phrase whatever the
    decoder thinks. Otherwise the decoder's own probability that the text ends here
    (`Transcript.end_prob`) decides; tiny.en writes a full stop at most pauses, so
    punctuation alone is the fallback only for engines that cannot score it.
    """
    finished = sounds_finished(text)
    if finished is None:
        return None
    if end_prob is None:
        return finished
    if ends_mid_phrase(text):
        return False
    if end_prob >= finished_prob:
        return True
    if end_prob < unfinished_prob:
        return False
    return None

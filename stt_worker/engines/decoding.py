"""Whisper decoding limits and loop repair shared by the local engines (CTranslate2 and
PyTorch); free of either library, so each engine imports only its own."""

from __future__ import annotations

import re

from stt_worker.core.audio import SAMPLE_RATE_HZ

HOP_SAMPLES = 160
FRAMES_PER_S = SAMPLE_RATE_HZ // HOP_SAMPLES
WINDOW_FRAMES = 3000  # Whisper's 30 s window, the encoder's positional-embedding limit
MAX_LENGTH_TOKENS = 448  # Whisper decoder context, prompt included

# Fast speech is ~4-5 tokens/s; the cap stops a looping decoder early instead of at 448.
MAX_TOKENS_PER_S = 12
MIN_NEW_TOKENS = 32

# Longest phrase (in words) checked for decoding loops by `collapse_loops`.
LOOP_MAX_NGRAM = 16


def collapse_loops(text: str) -> str:
    """Collapse a word n-gram repeated in a row to one copy, dropping a cut-off last copy.

    Whisper sometimes re-reads a phrase until max_length. People rarely say a word four
    times running, or a five-word phrase twice, so those counts mark a loop.
    """
    words = text.split()
    keys = [_word_key(w) for w in words]
    changed = False
    for n in range(LOOP_MAX_NGRAM, 0, -1):
        needed = _loop_repeats(n)
        i = 0
        while i + n * needed <= len(words):
            gram = keys[i : i + n]
            repeats = 1
            while keys[i + repeats * n : i + (repeats + 1) * n] == gram:
                repeats += 1
            if repeats >= needed:
                end = i + repeats * n
                tail = keys[end:]
                # A loop stopped by max_length ends in a partial copy.
                if 0 < len(tail) < n and tail == gram[: len(tail)]:
                    end = len(words)
                del words[i + n : end], keys[i + n : end]
                changed = True
            i += 1
    return " ".join(words) if changed else text


def _loop_repeats(ngram_words: int) -> int:
    if ngram_words <= 2:
        return 4
    return 3 if ngram_words <= 4 else 2


def _word_key(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())

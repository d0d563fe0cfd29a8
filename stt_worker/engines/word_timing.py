"""Word times for a decoded window, from Whisper's cross-attention (CTranslate2's `align`).

Whisper's alignment heads attend to the audio each text token was read from; CTranslate2
runs dynamic time warping over them (`Whisper.align`). A token starts at the encoder position
where the warping path first reaches it, and a word spans from its first token's start to
the next word's. Punctuation that Whisper writes as a token of its own joins the word it
belongs to, so each timed word is a word of the text as published.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from stt_worker.core.protocol import Word
from stt_worker.engines.decoding import FRAMES_PER_S

if TYPE_CHECKING:  # the openai-whisper engine uses `timed_words` without CTranslate2
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

# Encoder positions per second: its first convolution has stride 2 over 100 mel frames/s.
POSITIONS_PER_S = FRAMES_PER_S // 2


@dataclass(slots=True)
class _Piece:
    text: str
    start_s: float
    end_s: float
    probs: list[float] = field(default_factory=list)


def align_words(
    model: ctranslate2.models.Whisper,
    tokenizer: Tokenizer,
    encoded: ctranslate2.StorageView,
    tokens: list[int],
    content_frames: int,
) -> tuple[Word, ...]:
    """The words of `tokens` (text tokens of one window) with their times in seconds from
    the window's start; `content_frames`: the window's mel frames that hold audio."""
    if not tokens:
        return ()
    result = model.align(encoded, tokenizer.sot_sequence, [tokens], content_frames)[0]
    path = np.asarray(result.alignments, dtype=np.int64).reshape(-1, 2)
    # The time at which the path first reaches each text token (the end-of-text one last).
    first = np.concatenate(([True], np.diff(path[:, 0]) != 0))
    starts_s = path[first, 1] / POSITIONS_PER_S
    probs = np.asarray(result.text_token_probs, dtype=np.float64)
    words, word_tokens = tokenizer.split_to_word_tokens([*tokens, tokenizer.eot])
    bounds = np.concatenate(([0], np.cumsum([len(group) for group in word_tokens[:-1]])))
    if len(starts_s) <= bounds[-1]:
        return ()  # the path missed tokens: no times rather than wrong ones
    limit_s = content_frames / FRAMES_PER_S
    return timed_words(
        (text, min(starts_s[i], limit_s), min(starts_s[j], limit_s), probs[i:j])
        for text, i, j in zip(words, bounds[:-1], bounds[1:], strict=False)
    )


def timed_words(pieces: Iterable[tuple[str, float, float, Iterable[float]]]) -> tuple[Word, ...]:
    """Whisper's word pieces (text, start, end, token probabilities) as the text's words:
    punctuation joined to its word, the probability the mean over the word's tokens."""
    joined = _joined(
        [_Piece(text, float(start), float(end), [*probs]) for text, start, end, probs in pieces]
    )
    return tuple(
        Word(piece.text, piece.start_s, piece.end_s, float(np.mean(piece.probs)))
        for piece in joined
        if piece.text.strip() and piece.probs
    )


def _joined(pieces: list[_Piece]) -> list[_Piece]:
    """Punctuation tokens joined to their word: closing marks (no space before) to the word
    before, opening marks (" ¿, a space before) to the word after."""
    joined: list[_Piece] = []
    opening: _Piece | None = None
    for piece in pieces:
        mark = _is_punctuation(piece.text.strip())
        if mark and joined and not piece.text.startswith(" "):
            joined[-1].text += piece.text
            joined[-1].probs += piece.probs
            continue
        if mark and opening is None:
            opening = piece
            continue
        if opening is not None:
            piece.text = opening.text + piece.text.lstrip()
            piece.probs = opening.probs + piece.probs
            opening = None
        joined.append(piece)
    if opening is not None:
        joined.append(opening)
    return joined


def _is_punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(char).startswith("P") for char in text)

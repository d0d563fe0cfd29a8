"""Word error rate for scoring transcripts, after Whisper's English text normaliser.

References mix LibriSpeech (upper case, no punctuation) and LJ Speech (spoken-form,
punctuated); Whisper writes digits, contractions and punctuation. `EnglishTextNormalizer`
(the normaliser of the Whisper paper) folds all of that so WER counts words only.
"""

from __future__ import annotations

from functools import cache

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer


@cache
def _normaliser() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    return _normaliser()(text)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of `hypothesis` against `reference`, after `normalise`."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return jiwer.wer(ref, hyp) if hyp else 1.0

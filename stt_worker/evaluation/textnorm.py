"""Text normalisation and word error rate for scoring transcripts against references.

References mix LibriSpeech (upper case, no punctuation) and LJ Speech (spoken form,
punctuated); Whisper writes digits, contractions and punctuation. `EnglishTextNormalizer`
(the normaliser of the Whisper paper) folds case, punctuation, numbers, contractions and
spelling variants so WER counts words only.

Scoring tools only: jiwer and whisper-normalizer come with the ``eval`` extra, so the worker
never imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer


@cache
def _normaliser() -> EnglishTextNormalizer:
    # Builds a large spelling table on construction: once per process.
    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    """`text` as Whisper's English normaliser writes it: lower case, no punctuation, digits."""
    return _normaliser()(text)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of `hypothesis` against `reference`, after `normalise`."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        # jiwer has no rate for an empty reference: any word is then entirely wrong.
        return 0.0 if not hyp else 1.0
    return jiwer.wer(ref, hyp) if hyp else 1.0


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """WER over all (reference, hypothesis) pairs together: errors / reference words.

    Not a mean of per-clip rates, which would weigh a 4-word clip like a 40-word one.
    """
    normalised = [(normalise(ref), normalise(hyp)) for ref, hyp in pairs]
    if not normalised:
        return 0.0
    references, hypotheses = zip(*normalised, strict=True)
    if not any(references):
        return 0.0 if not any(hypotheses) else 1.0
    return jiwer.wer(list(references), list(hypotheses))

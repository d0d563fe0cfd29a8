"""Word error rate for the tests: the evaluation harness's own scoring."""

from stt_worker.evaluation.textnorm import normalise, wer

__all__ = ["normalise", "wer"]

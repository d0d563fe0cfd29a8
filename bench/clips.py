"""Benchmark: streaming WER and latency per clip, against offline decodes in the same run.

Now the evaluation harness, `stt_worker.evaluation` (``stt-streaming eval``); this script is
kept so the commands recorded in ``bench/results/clips.*`` still run. Same options:

    .venv/bin/python bench/clips.py [MANIFEST] [--speed 1] [--model tiny.en] [--limit N]
        [--file NAME ...] [--out bench/results/eval] [--no-plot]
"""

import sys

from stt_worker.evaluation import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="bench/clips.py"))

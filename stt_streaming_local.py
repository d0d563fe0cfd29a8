"""Local-model variant of the seed: the worker with Whisper running in this process.

Same as ``stt-streaming serve --engine faster-whisper``; configured by the environment
(``NATS_URL``, ``WHISPER_MODEL_SIZE``, ``WHISPER_DEVICE``, ``STT_*``; see the README).
"""

import sys

from stt_worker.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "--engine", "faster-whisper", *sys.argv[1:]]))

"""Local-model variant of the seed: the worker with Whisper running in this process.

``stt-streaming serve --engine local``: PyTorch openai-whisper (ROCm/CUDA) when torch is
installed, else CTranslate2; ``STT_ENGINE`` overrides. Configured by the environment
(``NATS_URL``, ``WHISPER_MODEL_SIZE``, ``WHISPER_DEVICE``, ``STT_*``; see docs/configuration.md).
"""

import sys

from stt_worker.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "--engine", "local", *sys.argv[1:]]))

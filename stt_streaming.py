"""HTTP variant of the seed: the worker sending audio to a Whisper service at ``WHISPER_URL``.

Same as ``stt-streaming serve --engine http``; configured by the environment
(see docs/configuration.md).
"""

import sys

from stt_worker.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "--engine", "http", *sys.argv[1:]]))

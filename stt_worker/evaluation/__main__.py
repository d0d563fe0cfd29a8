"""`python -m stt_worker.evaluation`: the same as `stt-streaming eval`."""

import sys

from stt_worker.evaluation.command import main

sys.exit(main())

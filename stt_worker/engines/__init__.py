"""Engine factory: maps an engine kind to its constructor.

Engine modules are imported lazily so a deployment pays only for the engine it runs
(`openai-whisper` would pull in torch).
"""

from __future__ import annotations

from collections.abc import Callable

from stt_worker.config import Settings
from stt_worker.engines.base import Engine
from stt_worker.errors import EngineError


def _faster_whisper(settings: Settings) -> Engine:
    from stt_worker.engines.faster_whisper import FasterWhisperEngine

    return FasterWhisperEngine(settings)


def _http(settings: Settings) -> Engine:
    # Named here so `stt_streaming.py` fails with a reason, not an argparse error.
    raise EngineError(
        f"the HTTP engine (WHISPER_URL={settings.whisper_url}) is not available in this "
        "version yet; run stt_streaming_local.py (engine faster-whisper) instead"
    )


ENGINE_FACTORIES: dict[str, Callable[[Settings], Engine]] = {
    "faster-whisper": _faster_whisper,
    "http": _http,
}


def create_engine(settings: Settings, engine: str = "faster-whisper") -> Engine:
    """Build the engine named `engine` from `settings`; raises EngineError for unknown kinds."""
    factory = ENGINE_FACTORIES.get(engine)
    if factory is None:
        raise EngineError(
            f"Unknown engine {engine!r}; available: {', '.join(sorted(ENGINE_FACTORIES))}"
        )
    return factory(settings)

"""Engine factory: maps an engine kind to its constructor.

Engine modules are imported lazily so a deployment pays only for the engine it runs
(`openai-whisper` would pull in torch).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from stt_worker.config import Settings
from stt_worker.core.errors import EngineError
from stt_worker.engines.base import Engine


def _faster_whisper(settings: Settings) -> Engine:
    from stt_worker.engines.faster_whisper import FasterWhisperEngine

    return FasterWhisperEngine(settings)


def _http(settings: Settings) -> Engine:
    from stt_worker.engines.http import HttpEngine

    return HttpEngine(settings)


def _openai_whisper(settings: Settings) -> Engine:
    try:
        from stt_worker.engines.openai_whisper import OpenAIWhisperEngine
    except ImportError as exc:  # torch is an optional extra
        raise EngineError(
            f"the openai-whisper engine needs PyTorch and openai-whisper ({exc}); install "
            "the extra with `pip install '.[torch]'` (or a ROCm/CUDA torch build first), "
            "or set STT_ENGINE=faster-whisper"
        ) from exc
    return OpenAIWhisperEngine(settings)


ENGINE_FACTORIES: dict[str, Callable[[Settings], Engine]] = {
    "faster-whisper": _faster_whisper,
    "http": _http,
    "openai-whisper": _openai_whisper,
}


LOCAL = "local"


def resolve_engine_kind(requested: str, settings: Settings) -> str:
    """`local` (the seed's local variant) means: `STT_ENGINE` when it is set, else the
    openai-whisper engine when PyTorch is installed (the ROCm/CUDA image), else CTranslate2."""
    if requested != LOCAL:
        return requested
    if "engine" in settings.model_fields_set:
        return settings.engine
    return "openai-whisper" if importlib.util.find_spec("torch") else "faster-whisper"


def create_partial_engine(settings: Settings, engine: str | None = None) -> Engine | None:
    """The dual-model partials engine (`STT_PARTIAL_MODEL`), or None to use the main one."""
    if not settings.partial_model or settings.partial_model == settings.whisper_model_size:
        return None
    update = {"whisper_model_size": settings.partial_model}
    return create_engine(settings.model_copy(update=update), engine)


def create_engine(settings: Settings, engine: str | None = None) -> Engine:
    """Build the engine named `engine` (default `STT_ENGINE`); EngineError for unknown kinds."""
    engine = resolve_engine_kind(engine or settings.engine, settings)
    factory = ENGINE_FACTORIES.get(engine)
    if factory is None:
        raise EngineError(
            f"Unknown engine {engine!r}; available: {', '.join(sorted(ENGINE_FACTORIES))}"
        )
    return factory(settings)

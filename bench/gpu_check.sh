#!/usr/bin/env bash
# One run on one NVIDIA GPU machine: installs what the GPU path needs, runs the engine tests
# on CUDA (CTranslate2 float16, openai-whisper fp16) and measures batched against unbatched
# decoding with tiny.en and base, writing bench/results/gpu.{md,json}.
#
#   bench/gpu_check.sh [--dry-run] [--budget-s S] [--out PREFIX] [--work DIR]
#                      [--wheelhouse DIR] [--speech DIR]
#
#   --dry-run        print the plan (steps, limits, commands) and exit; touches nothing
#   --budget-s S     the steps' limit (default 460: with the probes, within 8 minutes); each step
#                    also has its own
#   --out PREFIX     report files PREFIX.md and PREFIX.json (default bench/results/gpu;
#                    on a lent device machine, --out "$OUT/gpu" brings them back)
#   --work DIR       venv, logs and raw results (default: a new folder under /tmp)
#   --wheelhouse DIR install offline from wheels fetched on a connected machine with the
#                    same Python (pip download); default: PyPI and PyTorch's CUDA index
#   --speech DIR     the test clips (manifest.jsonl + WAVs); default STT_SPEECH_DIR, else
#                    shared/speech in or beside the checkout
#
# The venv sees the machine's own site-packages, so a CUDA torch already installed there is
# used rather than downloaded. Every step that cannot run stops the script with the reason;
# failing tests are reported and the benchmarks still run. The exit status is 0 only when
# every test passed and every figure was measured.
# Batched capacity comes from `python -m bench.batching --quick --json` (stdout: JSON); without
# that module the report holds bench.engines' unbatched decode times and says so.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODELS=(tiny.en base)
TEST_FILES=(tests/test_engine.py tests/test_openai_whisper.py tests/test_device_selection.py)
# Per-step limits in seconds; the run's budget caps them too.
LIMIT_PROBE=20
LIMIT_VENV=60
LIMIT_INSTALL=300
LIMIT_GPU=60
LIMIT_TESTS=240
LIMIT_BENCH=150
LIMIT_REPORT=30

budget_s=460
out=$ROOT/bench/results/gpu
work=
wheelhouse=
speech=${STT_SPEECH_DIR:-}
dry_run=false

die() {
    echo "gpu_check: $*" >&2
    exit 2
}

usage() {
    sed -n '/^#   bench\/gpu_check.sh/,/^#  *shared\/speech in or beside/p' "${BASH_SOURCE[0]}" |
        sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

while (($#)); do
    case $1 in
        --dry-run) dry_run=true ;;
        --budget-s | --out | --work | --wheelhouse | --speech)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --budget-s) budget_s=$2 ;;
                --out) out=$2 ;;
                --work) work=$2 ;;
                --wheelhouse) wheelhouse=$2 ;;
                --speech) speech=$2 ;;
            esac
            shift
            ;;
        -h | --help) usage 0 ;;
        *) echo "gpu_check: unknown argument '$1'" >&2 && usage ;;
    esac
    shift
done
[[ $budget_s =~ ^[1-9][0-9]*$ ]] || die "--budget-s must be a whole number of seconds"
[[ -z $wheelhouse || -d $wheelhouse ]] || die "--wheelhouse $wheelhouse is not a folder"
if [[ -z $speech ]]; then
    for candidate in "$ROOT/shared/speech" "$ROOT/../shared/speech"; do
        [[ -f $candidate/manifest.jsonl ]] && speech=$(cd "$candidate" && pwd) && break
    done
fi
[[ -n $speech && -f $speech/manifest.jsonl ]] ||
    die "no test clips: pass --speech DIR (a folder with manifest.jsonl), or set STT_SPEECH_DIR"
work=${work:-/tmp/stt-gpu-check.$$}
venv=$work/venv
python=$venv/bin/python3
index_url=${PIP_INDEX_URL:-https://pypi.org/simple}

# Runs one step under its own limit and what is left of the budget; stops the script when
# the step fails, unless it is marked `soft` (then the failure is recorded and it goes on).
failures=()
step() {
    local name=$1 limit=$2 mode=$3
    shift 3
    local left=$((budget_s - SECONDS))
    ((limit < left)) || limit=$left
    if $dry_run; then
        printf '%-13s %4ss  %s\n' "$name" "$limit" "$(printf '%s ' "$@" | tr -s ' \n' ' ')"
        return 0
    fi
    ((limit > 0)) || die "the ${budget_s}s budget is spent before step '$name'"
    echo "== $name (at most ${limit}s): $*" >&2
    local status=0
    timeout --kill-after=10 "$limit" "$@" >"$work/$name.log" 2>&1 || status=$?
    if ((status == 0)); then
        return 0
    fi
    tail -n 40 "$work/$name.log" >&2
    local why="exit $status"
    ((status == 124 || status == 137)) && why="over its ${limit}s limit"
    if [[ $mode == soft ]]; then
        failures+=("$name: $why (log: $work/$name.log)")
        echo "gpu_check: step '$name' failed ($why); going on" >&2
        return 0
    fi
    echo "gpu_check: step '$name' failed ($why); log: $work/$name.log" >&2
    exit 1
}

if $dry_run; then
    echo "plan (budget ${budget_s}s; work folder $work; clips $speech):"
    echo "step          limit  command"
fi
$dry_run || mkdir -p "$work"

# 1. An NVIDIA GPU, seen by the driver, and a Python to build the venv from.
if ! $dry_run; then
    command -v nvidia-smi >/dev/null ||
        die "no nvidia-smi: this is not an NVIDIA GPU machine, or its driver is not installed"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "python3 3.11 or newer is needed to create the venv"
fi
step gpu-seen "$LIMIT_PROBE" hard nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
if ! $dry_run && ! grep -q . "$work/gpu-seen.log"; then
    die "nvidia-smi lists no GPU"
fi

# 2. Somewhere to install from: the wheelhouse, or the package index (and PyTorch's).
if [[ -n $wheelhouse ]]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=$wheelhouse
elif ! $dry_run && ! timeout "$LIMIT_PROBE" python3 -c '
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10).close()' "$index_url/pip/" 2>/dev/null; then
    die "the package index ($index_url) is not reachable from this machine, so the CUDA \
wheels cannot be installed. On a connected machine with the same Python, fetch them with \
'pip download -d WHEELS --extra-index-url https://download.pytorch.org/whl/cu128 \
-c constraints.txt torch==2.13.0 .[local,test,eval] openai-whisper==20250625', copy WHEELS \
here and rerun with --wheelhouse WHEELS"
fi
if $dry_run && [[ -n $wheelhouse ]]; then
    echo "index                $wheelhouse (offline)"
elif $dry_run; then
    echo "index                $index_url"
fi

# 3. A venv with CUDA torch, openai-whisper, CTranslate2, the project and its test tools.
step venv "$LIMIT_VENV" hard python3 -m venv --system-site-packages "$venv"
# (Single quotes on purpose here and below: the inner shell expands its own arguments.)
# shellcheck disable=SC2016
step install "$LIMIT_INSTALL" hard bash -c '
    set -e
    for variant in cuda-torch cuda-whisper cuda; do bash docker/install.sh "$variant" "$1"; done
    "$1/bin/python3" -m pip install --disable-pip-version-check --no-input \
        --constraint constraints.txt ".[test,eval]"' install "$venv"

# 4. Both libraries see the GPU (else every test below would only prove the CPU path).
step gpu-libs "$LIMIT_GPU" hard "$python" -c '
import ctranslate2, torch
assert ctranslate2.get_cuda_device_count() > 0, "CTranslate2 sees no CUDA GPU"
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA GPU"
print(torch.cuda.get_device_name(0), "torch", torch.__version__, "cuda", torch.version.cuda,
      "ctranslate2", ctranslate2.__version__,
      "float16" in ctranslate2.get_supported_compute_types("cuda"))'

# 5. The engine tests on CUDA.
export STT_SPEECH_DIR=$speech
step tests "$LIMIT_TESTS" soft env STT_TEST_DEVICE=cuda "$python" -m pytest -q -p no:cacheprovider \
    --junitxml="$work/tests.xml" "${TEST_FILES[@]}"

# 6. Batched against unbatched, per model.
if [[ -f $ROOT/bench/batching.py ]]; then
    for model in "${MODELS[@]}"; do
        # shellcheck disable=SC2016
        step "bench-$model" "$LIMIT_BENCH" soft env WHISPER_DEVICE=cuda \
            WHISPER_MODEL_SIZE="$model" bash -c '"$1" -m bench.batching --quick --json >"$2"' \
            bench "$python" "$work/batching-$model.json"
    done
else
    echo "gpu_check: bench/batching.py is absent: unbatched decode times only (bench.engines)" >&2
    step bench-engines "$LIMIT_BENCH" soft env WHISPER_DEVICE=cuda "$python" -m bench.engines \
        --manifest "$speech/manifest.jsonl" --clips 6 --repeat 2 --out "$work/engines"
fi

# 7. The report, with whatever failed or is missing named in it (and its exit status 1).
step report "$LIMIT_REPORT" soft "$python" -m bench.gpu_report --work "$work" --out "$out" \
    --gpu "$work/gpu-seen.log" --libs "$work/gpu-libs.log" --budget-s "$budget_s" \
    --elapsed-s "$SECONDS" "${failures[@]/#/--failure=}"
$dry_run && exit 0
cat "$out.md" "$work/report.log"
if ((${#failures[@]})); then
    printf 'gpu_check: failed: %s\n' "${failures[@]}" >&2
    exit 1
fi

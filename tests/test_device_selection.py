"""Which device and precision each local engine picks for WHISPER_DEVICE and
WHISPER_COMPUTE_TYPE, on CUDA and ROCm machines as well as this CPU one.

The GPU a library reports is patched, so these run without one; bench/gpu_check.sh runs the
engines on a real GPU (STT_TEST_DEVICE=cuda).
"""

from __future__ import annotations

import logging

import ctranslate2
import pytest

from stt_worker.core.errors import EngineError
from stt_worker.engines import faster_whisper

torch = pytest.importorskip("torch")

from stt_worker.engines import openai_whisper  # noqa: E402


def ctranslate2_sees(monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: gpus)


def torch_sees(monkeypatch: pytest.MonkeyPatch, *, gpu: bool, hip: str | None = None) -> None:
    """torch as a CUDA build (hip None) or a ROCm build, which names its GPUs `cuda` too."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.version, "hip", hip, raising=False)
    monkeypatch.setattr(torch.version, "cuda", None if hip else "12.8")


# ------------------------------------------------------------------ CTranslate2


@pytest.mark.parametrize(
    ("requested", "gpus", "device", "compute_type"),
    [
        ("auto", 1, "cuda", "float16"),
        ("AUTO", 8, "cuda", "float16"),
        ("cuda", 1, "cuda", "float16"),
        ("auto", 0, "cpu", "int8"),
        ("cpu", 1, "cpu", "int8"),  # a GPU is there, but the operator asked for the CPU
    ],
)
def test_ctranslate2_picks_float16_on_cuda_and_int8_on_cpu(
    monkeypatch: pytest.MonkeyPatch, requested: str, gpus: int, device: str, compute_type: str
) -> None:
    ctranslate2_sees(monkeypatch, gpus)
    picked = faster_whisper._pick_device(requested)
    assert picked == device
    assert faster_whisper._pick_compute_type("auto", picked) == compute_type


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_an_explicit_compute_type_is_kept(device: str) -> None:
    assert faster_whisper._pick_compute_type("int8_float16", device) == "int8_float16"


def test_ctranslate2_on_a_rocm_machine_runs_on_the_cpu_or_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CTranslate2's wheels are CUDA-only: an AMD GPU is invisible to them.
    ctranslate2_sees(monkeypatch, 0)
    assert faster_whisper._pick_device("auto") == "cpu"
    with pytest.raises(EngineError, match="STT_ENGINE=openai-whisper"):
        faster_whisper._pick_device("cuda")


@pytest.mark.parametrize("requested", ["rocm", "cuda:0", "gpu"])
def test_ctranslate2_refuses_devices_it_does_not_know(requested: str) -> None:
    with pytest.raises(EngineError, match="auto, cpu or cuda"):
        faster_whisper._pick_device(requested)


# ------------------------------------------------------------------ PyTorch


@pytest.mark.parametrize("hip", [None, "6.4.43484"], ids=["cuda-build", "rocm-build"])
@pytest.mark.parametrize("requested", ["auto", "cuda", "cuda:1"])
def test_torch_runs_fp16_on_an_nvidia_or_amd_gpu(
    monkeypatch: pytest.MonkeyPatch, hip: str | None, requested: str
) -> None:
    torch_sees(monkeypatch, gpu=True, hip=hip)
    device = openai_whisper.pick_device(requested)
    assert device == ("cuda" if requested == "auto" else requested)
    assert openai_whisper.uses_fp16(device)


@pytest.mark.parametrize("hip", [None, "6.4.43484"], ids=["cuda-build", "rocm-build"])
def test_torch_without_a_visible_gpu_falls_back_to_fp32_on_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, hip: str | None
) -> None:
    torch_sees(monkeypatch, gpu=False, hip=hip)
    assert openai_whisper.pick_device("auto") == "cpu"
    with caplog.at_level(logging.WARNING):
        device = openai_whisper.pick_device("cuda")
    assert device == "cpu" and not openai_whisper.uses_fp16(device)
    # The warning names the build, so a CPU-only or wrong-vendor torch is recognisable.
    (warning,) = caplog.records
    assert ("ROCm " + hip if hip else "CUDA 12.8") in warning.getMessage()


def test_torch_cpu_is_fp32_even_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch_sees(monkeypatch, gpu=True)
    device = openai_whisper.pick_device("cpu")
    assert device == "cpu" and not openai_whisper.uses_fp16(device)

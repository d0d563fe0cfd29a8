"""Converter from a CTranslate2 Whisper model folder to an openai-whisper checkpoint.

The bundled models ship only in CTranslate2 format; the openai-whisper engine needs the
PyTorch checkpoint that `whisper.load_model(path)` reads: ``{"dims": ..., "model_state_dict":
...}``. Both hold the same weights under different names, with CTranslate2 fusing the
attention projections, so conversion is a rename, a split and (for quantised files) a
dequantisation. Nothing is downloaded.

``model.bin`` is a little-endian stream, as written by ``ctranslate2.specs.model_spec``
(``ModelSpec._serialize``, binary version 6)::

    uint32 binary_version
    string spec_name                      e.g. "WhisperSpec"
    uint32 spec_revision
    uint32 n_variables
    n_variables x:
        string name                       e.g. "encoder/layer_0/self_attention/linear_0/weight"
        uint8  rank, uint32 dims[rank]
        uint8  dtype                      0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
        uint32 n_bytes, n_bytes of row-major data
    uint32 n_aliases
    n_aliases x: string alias, string target

    string = uint16 length (including a trailing NUL), the UTF-8 bytes, NUL

Usage: ``python -m stt_worker.engines.ct2_convert SRC_DIR OUT.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stt_worker.engines.models import BUNDLED_MODELS, DEFAULT_CACHE_DIR, resolve_model_path

logger = logging.getLogger(__name__)

# Binary versions whose layout is described above (older ones lack the spec header).
SUPPORTED_BINARY_VERSIONS = range(3, 7)
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16: the top half of a float32, widened in `_to_float`
}
_BFLOAT16 = 5
_CONVERTER_VERSION = 1  # part of the cache file name: bump when the output changes


@dataclass(frozen=True, slots=True)
class Ct2Model:
    """The parsed content of a CTranslate2 ``model.bin``."""

    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]
    dtypes: dict[str, int]


def read_model_bin(path: Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` completely; ValueError if any byte is unaccounted for."""
    data = memoryview(path.read_bytes())
    reader = _Reader(data)
    version = reader.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ValueError(f"{path}: unsupported CTranslate2 binary version {version}")
    spec_name = reader.string()
    spec_revision = reader.unpack("I")
    variables: dict[str, np.ndarray] = {}
    dtypes: dict[str, int] = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        rank = reader.unpack("B")
        shape = struct.unpack(f"<{rank}I", reader.take(4 * rank))
        dtype_id = reader.unpack("B")
        n_bytes = reader.unpack("I")
        if dtype_id not in _DTYPES:
            raise ValueError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        raw = reader.take(n_bytes)
        variables[name] = np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(shape)
        dtypes[name] = dtype_id
    aliases = {}
    for _ in range(reader.unpack("I")):
        alias = reader.string()
        aliases[alias] = reader.string()
    if reader.offset != len(data):
        raise ValueError(f"{path}: {len(data) - reader.offset} trailing bytes after the aliases")
    return Ct2Model(spec_name, spec_revision, variables, aliases, dtypes)


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return value

    def take(self, n_bytes: int) -> memoryview:
        if self.offset + n_bytes > len(self.data):
            raise ValueError("model.bin is truncated")
        chunk = self.data[self.offset : self.offset + n_bytes]
        self.offset += n_bytes
        return chunk

    def string(self) -> str:
        raw = bytes(self.take(self.unpack("H")))
        if not raw.endswith(b"\0"):
            raise ValueError("model.bin string is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def whisper_state_dict(model: Ct2Model) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """openai-whisper's state dict (float32 arrays) and `ModelDimensions` fields for `model`."""
    if model.spec_name != "WhisperSpec":
        raise ValueError(f"not a Whisper model: spec {model.spec_name!r}")
    get = _Getter(model)
    n_audio_layer = _count_layers(model.variables, "encoder")
    n_text_layer = _count_layers(model.variables, "decoder")
    conv1 = get("encoder/conv1/weight")
    embeddings = get("decoder/embeddings/weight")
    text_positions = get("decoder/position_encodings/encodings")
    audio_positions = get("encoder/position_encodings/encodings")
    dims = {
        "n_mels": conv1.shape[1],
        "n_audio_ctx": audio_positions.shape[0],
        "n_audio_state": conv1.shape[0],
        "n_audio_head": int(model.variables["encoder/num_heads"]),
        "n_audio_layer": n_audio_layer,
        "n_vocab": embeddings.shape[0],
        "n_text_ctx": text_positions.shape[0],
        "n_text_state": embeddings.shape[1],
        "n_text_head": int(model.variables["decoder/num_heads"]),
        "n_text_layer": n_text_layer,
    }
    state: dict[str, np.ndarray] = {
        "encoder.conv1.weight": conv1,
        "encoder.conv1.bias": get("encoder/conv1/bias"),
        "encoder.conv2.weight": get("encoder/conv2/weight"),
        "encoder.conv2.bias": get("encoder/conv2/bias"),
        "encoder.positional_embedding": audio_positions,
        **_layer_norm(get, "encoder/layer_norm", "encoder.ln_post"),
        "decoder.token_embedding.weight": embeddings,
        "decoder.positional_embedding": text_positions,
        **_layer_norm(get, "decoder/layer_norm", "decoder.ln"),
    }
    for i in range(n_audio_layer):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        state |= _attention(get, f"{src}/self_attention", f"{dst}.attn", dst + ".attn_ln", True)
        state |= _mlp(get, src, dst)
    for i in range(n_text_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        state |= _attention(get, f"{src}/self_attention", f"{dst}.attn", dst + ".attn_ln", True)
        state |= _attention(get, f"{src}/attention", f"{dst}.cross_attn", dst + ".cross_attn_ln")
        state |= _mlp(get, src, dst)
    return state, dims


class _Getter:
    """Reads a weight as float32, dequantising int8/int16 with its ``*_scale`` companion."""

    def __init__(self, model: Ct2Model) -> None:
        self.model = model

    def __call__(self, name: str) -> np.ndarray:
        name = self.model.aliases.get(name, name)
        value = _to_float(self.model.variables[name], self.model.dtypes[name])
        scale = self.model.variables.get(name + "_scale")
        if scale is not None:
            # CTranslate2 stores round(w * scale), one scale per output row (int8) or one
            # for the whole matrix (int16); conv kernels are scaled as (out, in * width).
            scale = _to_float(scale, self.model.dtypes[name + "_scale"])
            value = value / scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))
        return value


def _to_float(value: np.ndarray, dtype_id: int) -> np.ndarray:
    if dtype_id == _BFLOAT16:
        return (value.astype(np.uint32) << 16).view(np.float32)
    return value.astype(np.float32)


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    count = 0
    while f"{stack}/layer_{count}/ffn/linear_0/bias" in variables:
        count += 1
    return count


def _layer_norm(get: _Getter, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": get(f"{src}/gamma"), f"{dst}.bias": get(f"{src}/beta")}


def _linear(get: _Getter, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": get(f"{src}/weight"), f"{dst}.bias": get(f"{src}/bias")}


def _attention(
    get: _Getter, src: str, dst: str, norm: str, fused_qkv: bool = False
) -> dict[str, np.ndarray]:
    # Self-attention fuses q, k, v into linear_0 and projects out with linear_1; cross-attention
    # has q in linear_0, fused k, v in linear_1 and the output in linear_2.
    if fused_qkv:
        qkv_w, qkv_b = get(f"{src}/linear_0/weight"), get(f"{src}/linear_0/bias")
        out = f"{src}/linear_1"
    else:
        kv_w, kv_b = get(f"{src}/linear_1/weight"), get(f"{src}/linear_1/bias")
        qkv_w = np.concatenate([get(f"{src}/linear_0/weight"), kv_w])
        qkv_b = np.concatenate([get(f"{src}/linear_0/bias"), kv_b])
        out = f"{src}/linear_2"
    q_w, k_w, v_w = np.split(qkv_w, 3)
    q_b, k_b, v_b = np.split(qkv_b, 3)
    if np.any(k_b):
        # openai-whisper's key projection has no bias; CTranslate2 stores zeros for it.
        raise ValueError(f"{src}: non-zero key bias cannot be represented in openai-whisper")
    return {
        f"{dst}.query.weight": q_w,
        f"{dst}.query.bias": q_b,
        f"{dst}.key.weight": k_w,
        f"{dst}.value.weight": v_w,
        f"{dst}.value.bias": v_b,
        **_linear(get, out, f"{dst}.out"),
        **_layer_norm(get, f"{src}/layer_norm", norm),
    }


def _mlp(get: _Getter, src: str, dst: str) -> dict[str, np.ndarray]:
    return {
        **_linear(get, f"{src}/ffn/linear_0", f"{dst}.mlp.0"),
        **_linear(get, f"{src}/ffn/linear_1", f"{dst}.mlp.2"),
        **_layer_norm(get, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln"),
    }


def convert(ct2_dir: Path, out_path: Path) -> Path:
    """Write the openai-whisper checkpoint of the CTranslate2 model in `ct2_dir` to `out_path`.

    Weights stay float16 when the source is all float16 (lossless, the size of OpenAI's own
    checkpoints; openai-whisper upcasts on load); quantised or float32 sources give float32.
    The write is atomic (temp file + rename), so readers never see half a checkpoint.
    """
    import torch

    ct2_dir, out_path = Path(ct2_dir), Path(out_path)
    model = read_model_bin(ct2_dir / "model.bin")
    state, dims = whisper_state_dict(model)
    all_half = all(d == 4 for n, d in model.dtypes.items() if model.variables[n].ndim)
    dtype = torch.float16 if all_half else torch.float32
    checkpoint: dict[str, Any] = {
        "dims": dims,
        "model_state_dict": {
            name: torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
            for name, value in state.items()
        },
    }
    # whisper.load_model ignores extra keys; OpenAIWhisperEngine applies these (they only
    # matter for word timestamps, and openai-whisper's default is every upper-half head).
    heads = _alignment_heads(ct2_dir)
    if heads:
        checkpoint["alignment_heads"] = heads
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            torch.save(checkpoint, out)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp creates 0600; the cache may be shared by workers running as other users.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_path


def _alignment_heads(ct2_dir: Path) -> list[list[int]]:
    config = ct2_dir / "config.json"
    if not config.is_file():
        return []
    heads = json.loads(config.read_text()).get("alignment_heads") or []
    return [[int(layer), int(head)] for layer, head in heads]


def ensure_converted(name_or_ct2_dir: str | Path, cache_dir: str | None = None) -> Path:
    """The cached openai-whisper checkpoint of a bundled model name or CTranslate2 folder.

    Converts on first use into ``<cache>/openai-whisper/``; later calls (and other workers
    sharing the cache) reuse the file while the source ``model.bin`` is unchanged.
    """
    ct2_dir = resolve_model_path(str(name_or_ct2_dir), cache_dir)
    source = (ct2_dir / "model.bin").stat()
    root = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR.expanduser()
    # Keyed on the source's size and mtime: a replaced model.bin gets a fresh conversion.
    label = name_or_ct2_dir if name_or_ct2_dir in BUNDLED_MODELS else ct2_dir.name
    stem = f"{label}-{source.st_size}-{int(source.st_mtime)}-v{_CONVERTER_VERSION}"
    target = root / "openai-whisper" / f"{stem}.pt"
    if target.is_file():
        return target
    logger.info("Converting CTranslate2 model for openai-whisper", extra={"target": str(target)})
    return convert(ct2_dir, target)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] in ("-h", "--help"):
        sys.stderr.write("usage: python -m stt_worker.engines.ct2_convert SRC_DIR OUT.pt\n")
        return 2
    out = convert(Path(args[0]), Path(args[1]))
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

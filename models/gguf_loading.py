"""GGUF checkpoints (the llama.cpp container, as city96 / QuantStack publish Wan DiTs): read and dequantize.

Published Wan GGUF files (`wan2.1-t2v-14b-Q4_K_M.gguf`, `Wan2.2-I2V-A14B-HighNoise-Q8_0.gguf`, ...) hold
Wan's original tensor names (sometimes under `model.diffusion_model.`), `general.architecture = "wan"`,
and mix tensor types: Q8_0 / Q5_K / Q4_K / ... for the big block matrices, F16/F32 for small tensors.

GGUF writes dimensions innermost-first, so a torch tensor [N, K] appears with shape (K, N); tensors of
more than 4 dims (the Conv3d patch embedding [dim, in, 1, 2, 2]) are stored flattened with their torch
shape in the metadata key `comfy.gguf.orig_shape.<name>` (ComfyUI-GGUF's convention).

Tensors are dequantized at load with the `gguf` package's reference code (to the model's dtype; F16/BF16/F32
tensors keep theirs) — the DiT then runs as a dense model (`linear="w8a8"` requantizes the block Linears).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from models.checkpoint_io import CheckpointError

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."


def _gguf():  # noqa: ANN202 - the module
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CheckpointError("reading .gguf checkpoints needs the `gguf` package (pip install gguf)") from exc
    return gguf


def _reader(path: Path):  # noqa: ANN202
    gguf = _gguf()
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from exc


def _field_str(reader, key: str) -> str | None:  # noqa: ANN001
    field = reader.get_field(key)
    if field is None:
        return None
    return str(bytes(field.parts[field.data[-1]]), encoding="utf-8")


def gguf_architecture(path: str | Path) -> str | None:
    """`general.architecture` of a GGUF file ("wan", "t5encoder", ...), None when absent."""
    return _field_str(_reader(Path(path)), "general.architecture")


def _torch_shape(reader, tensor) -> tuple[int, ...]:  # noqa: ANN001
    field = reader.get_field(ORIG_SHAPE_KEY + tensor.name)
    if field is not None:
        return tuple(int(field.parts[i][0]) for i in field.data)
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


def gguf_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names -> torch shapes, from the header only."""
    reader = _reader(Path(path))
    return {t.name: _torch_shape(reader, t) for t in reader.tensors}


def _dequantize(tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:  # noqa: ANN001
    gguf = _gguf()
    qtype = tensor.tensor_type
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if qtype == gguf.GGMLQuantizationType.F32:
            return torch.from_numpy(np.asarray(tensor.data).view(np.float32)).reshape(shape)
        if qtype == gguf.GGMLQuantizationType.F16:
            return torch.from_numpy(np.asarray(tensor.data).view(np.float16)).reshape(shape)
        if qtype == gguf.GGMLQuantizationType.BF16:
            raw = torch.from_numpy(np.asarray(tensor.data).view(np.int16))
            return raw.view(torch.bfloat16).reshape(shape)
    try:
        values = gguf.quants.dequantize(np.asarray(tensor.data), qtype)
    except NotImplementedError as exc:
        raise CheckpointError(f"GGUF tensor {tensor.name}: type {qtype.name} cannot be dequantized") from exc
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape).to(dtype)


def read_gguf(path: str | Path, *, dtype: torch.dtype = torch.float32, threads: int = 8) -> dict[str, torch.Tensor]:
    """All tensors of a GGUF file in torch shapes; quantized ones dequantized to `dtype` (one tensor at
    a time, so a 14B file never holds all its weights in float32)."""
    path = Path(path)
    reader = _reader(path)
    jobs = [(t, _torch_shape(reader, t)) for t in reader.tensors]
    for t, shape in jobs:
        if int(np.prod(shape)) != int(t.n_elements):
            raise CheckpointError(f"{path}: tensor {t.name} has {t.n_elements} values, not a {shape} tensor")
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # numpy releases the GIL in bulk ops
        tensors = list(pool.map(lambda job: _dequantize(*job, dtype), jobs))
    return {t.name: v for (t, _), v in zip(jobs, tensors, strict=True)}


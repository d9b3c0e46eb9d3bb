"""Reading tensors from checkpoint files without a second full copy, and our canonical format.

Every loader in `models/` goes through here:

- `read_state_dict(path)` opens `.pth`/`.pt`/`.bin` (torch's zip format, memory-mapped, weights only),
  `.safetensors` (memory-mapped), a sharded set given by its `*.index.json` (safetensors shards or
  `pytorch_model-*.bin` shards), `.gguf` (dequantized, `models.gguf_loading`), or a folder holding any
  of those. Tensors stay backed by the file until a module takes them with `load_state_dict(assign=True)`.
- `read_shapes(path)` gives tensor names and shapes without reading the data (safetensors header,
  torch's pickle only, GGUF header): what role resolution classifies files by.
- The canonical TurboVid format is a folder with `model.safetensors` and `turbovid.json`, the
  manifest: which component, which architecture (the config as a dict), which quantization and
  which attention settings the weights were written for. Quantization is recorded here, never
  inferred from a file name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

MANIFEST_NAME = "turbovid.json"
CANONICAL_WEIGHTS = "model.safetensors"
MANIFEST_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the architecture; the message says why."""


@dataclass
class Manifest:
    component: str  # "transformer" | "vae" | "text_encoder"
    architecture: dict[str, Any]
    quantization: dict[str, Any] | None = None  # e.g. {"method": "w8a8", "block": 128}
    attention: dict[str, Any] = field(default_factory=dict)  # e.g. {"sla": true, "topk": 0.1}
    source: str | None = None  # where the weights were converted from
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        version = data.get("version", 0)
        if version > MANIFEST_VERSION:
            raise CheckpointError(
                f"manifest version {version} is newer than this TurboVid reads ({MANIFEST_VERSION})"
            )
        known = {"component", "architecture", "quantization", "attention", "source", "version"}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"manifest has unknown fields: {sorted(unknown)}")
        return cls(**data)


def read_manifest(path: str | Path) -> Manifest | None:
    """The manifest of a canonical checkpoint folder (or of the folder a file sits in), else None."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return None
    return Manifest.from_json(manifest.read_text())


def write_canonical(
    folder: str | Path, state_dict: Mapping[str, torch.Tensor], manifest: Manifest
) -> Path:
    """Write `model.safetensors` + `turbovid.json` into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(folder / CANONICAL_WEIGHTS), metadata={"format": "pt"})
    # Manifest last: a folder with a manifest is a complete checkpoint.
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            out[key] = f.get_tensor(key)
    return out


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index}: not a sharded-checkpoint index (no weight_map)") from exc
    return weight_map


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    weight_map = _weight_map(index)
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index}: shard {shard} is missing")
        out.update(read_state_dict(shard_path))
    missing = set(weight_map) - set(out)
    if missing:
        raise CheckpointError(f"{index}: tensors listed but absent from shards: {sorted(missing)[:5]}")
    return out


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        # Legacy (non-zip) pickles cannot be memory-mapped.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    # Training checkpoints nest the weights under a key.
    for key in ("state_dict", "model", "module", "ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    # Training checkpoints may carry non-tensor entries (step counters, config): not weights.
    obj = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return obj


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", *TORCH_SUFFIXES)
_FOLDER_PATTERNS = (
    "*.safetensors.index.json", "*.bin.index.json", "*.safetensors", "*.gguf", "*.pth", "*.pt", "*.bin",
)


def checkpoint_file(path: str | Path) -> Path:
    """The one file (or index) that holds a folder's checkpoint; a file is returned as it is.

    A folder is looked at in this order: canonical `model.safetensors`, a `*.safetensors.index.json`,
    a `*.bin.index.json`, a single `*.safetensors`, `*.gguf`, `*.pth`, `*.pt`, `*.bin`.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        return path
    if (path / CANONICAL_WEIGHTS).is_file():
        return path / CANONICAL_WEIGHTS
    for pattern in _FOLDER_PATTERNS:
        found = sorted(path.glob(pattern))
        if len(found) == 1 or (found and pattern.endswith("index.json")):
            return found[0]
        if len(found) > 1:
            raise CheckpointError(
                f"{path}: several {pattern} files and no index; pass the file to load: "
                + ", ".join(p.name for p in found)
            )
    raise CheckpointError(f"{path}: no checkpoint files found (.safetensors, .gguf, .pth, .bin, index.json)")


def read_state_dict(path: str | Path, *, dequant_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file or folder (see `checkpoint_file`), memory-mapped where the
    format allows; quantized GGUF tensors are dequantized to `dequant_dtype` (F16/F32/BF16 ones keep
    their dtype)."""
    path = checkpoint_file(path)
    name = path.name
    if name.endswith(".index.json"):
        return _read_sharded(path)
    if name.endswith(".safetensors"):
        return _read_safetensors(path)
    if name.endswith(".gguf"):
        from models.gguf_loading import read_gguf

        return read_gguf(path, dtype=dequant_dtype)
    if name.endswith(TORCH_SUFFIXES):
        return _read_torch(path)
    raise CheckpointError(f"{path}: unknown checkpoint file type")


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names -> shapes of a checkpoint file or folder, without reading tensor data.

    ComfyUI's embedded tokenizer (`spiece_model`, a uint8 tensor) is listed like any tensor."""
    path = checkpoint_file(path)
    name = path.name
    if name.endswith(".index.json"):
        out: dict[str, tuple[int, ...]] = {}
        for shard in sorted(set(_weight_map(path).values())):
            if not (path.parent / shard).is_file():
                raise CheckpointError(f"{path}: shard {shard} is missing")
            out.update(read_shapes(path.parent / shard))
        return out
    if name.endswith(".safetensors"):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    if name.endswith(".gguf"):
        from models.gguf_loading import gguf_shapes

        return gguf_shapes(path)
    if name.endswith(TORCH_SUFFIXES):
        return {k: tuple(v.shape) for k, v in _read_torch(path).items()}  # mmap: no data read
    raise CheckpointError(f"{path}: unknown checkpoint file type")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under `prefix` with it removed, when every key has it; else the dict unchanged."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def check_keys(
    expected: set[str], got: set[str], *, what: str, optional: set[str] | None = None
) -> None:
    """Raise CheckpointError naming missing and unexpected keys (a few of each)."""
    optional = optional or set()
    missing = sorted(expected - got - optional)
    unexpected = sorted(got - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:6]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:6]})")
        raise CheckpointError(f"{what}: checkpoint does not fit: " + "; ".join(parts))


def assign_state_dict(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    what: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """Give a meta-device `model` the checkpoint's tensors (taken, not copied, where device and dtype
    already match), after checking names and shapes: a CheckpointError names what does not fit.
    Floating-point tensors are cast to `dtype` when given; other tensors keep theirs."""
    expected = model.state_dict()
    check_keys(set(expected), set(state_dict), what=what)
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if state_dict[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(f"{what}: {len(wrong)} shape mismatches, e.g. {wrong[:4]}")
    tensors = {
        k: state_dict[k].to(device=device, dtype=dtype if dtype is not None and state_dict[k].is_floating_point() else None)
        for k in expected
    }
    model.load_state_dict(tensors, strict=True, assign=True)
    return model

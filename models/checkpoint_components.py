"""Which checkpoint is which: sorting the paths a user gives into DiT(s), text encoder, tokenizer, VAE.

Accepted, in any mix:
- `role=PATH` with role one of transformer, high, low, i2v, text_encoder, tokenizer, vae;
- a folder in one of these layouts:
  * TurboVid canonical (`turbovid.json` manifest naming its component), or a folder of such folders
    (what `turbovid convert` and the tiny model write: transformer/, vae/, text_encoder/, ...);
  * diffusers pipeline (transformer/, transformer_2/ (A14B low-noise expert), vae/, text_encoder/,
    tokenizer/);
  * Wan's release folder (`Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`, `google/umt5-xxl/`, DiT
    shards, or Wan2.2's `high_noise_model/` + `low_noise_model/`);
- a single file, classified by its tensor names (VAE: encoder./decoder. convs; text encoder:
  token_embedding / shared / encoder.block; otherwise a DiT). For the two A14B experts, a file
  whose name contains "high" or "low" (as the published TurboWan2.2 files do) takes that role;
  say `high=`/`low=` explicitly otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.checkpoint_io import CheckpointError, read_manifest, read_state_dict
from contract.catalog import ModelCard as ModelSpec

ROLES = ("transformer", "high", "low", "i2v", "text_encoder", "tokenizer", "vae")
WAN_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_VAE = "Wan2.1_VAE.pth"


@dataclass
class Components:
    transformers: dict[str, Path] = field(default_factory=dict)  # "t2v"/"i2v" or "high"/"low"
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    vae: Path | None = None


def _classify_file(path: Path) -> str:
    keys = set(read_state_dict(path))
    if any(k.startswith(("encoder.conv1", "decoder.conv1", "encoder.conv_in", "decoder.conv_in")) for k in keys):
        return "vae"
    if any(k.startswith(("token_embedding", "shared.", "encoder.block.", "encoder.embed_tokens")) for k in keys):
        return "text_encoder"
    if any("int8_weight" in k or "blocks.0." in k or "transformer_blocks.0." in k for k in keys):
        name = path.name.lower()
        if "high" in name:
            return "high"
        if "low" in name:
            return "low"
        return "transformer"
    raise CheckpointError(f"{path}: cannot tell which component this checkpoint is")


def _collect(path: Path, found: dict[str, Path]) -> None:
    def put(role: str, p: Path) -> None:
        if role in found and found[role] != p:
            raise CheckpointError(f"two checkpoints for {role}: {found[role]} and {p}; pass {role}=PATH")
        found[role] = p

    if path.is_file():
        put(_classify_file(path), path)
        return
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or folder")
    manifest = read_manifest(path)
    if manifest is not None:
        role = manifest.component
        put(role, path)
        if role == "text_encoder" and (path / "tokenizer").is_dir():
            put("tokenizer", path / "tokenizer")
        return
    sub = {p.name: p for p in path.iterdir()}
    layout_hits = 0
    for name, role in (("transformer", "transformer"), ("transformer_2", "low"), ("vae", "vae"),
                       ("text_encoder", "text_encoder"), ("tokenizer", "tokenizer"),
                       ("high_noise_model", "high"), ("low_noise_model", "low"), ("i2v", "i2v")):
        if name in sub and sub[name].is_dir():
            layout_hits += 1
            target = sub[name]
            put(role, target)
            if role == "text_encoder" and (target / "tokenizer").is_dir():
                put("tokenizer", target / "tokenizer")
    if "transformer_2" in sub and "transformer" in found:
        # diffusers Wan2.2: transformer is the high-noise expert, transformer_2 the low-noise one.
        found["high"] = found.pop("transformer")
    if WAN_VAE in sub:
        layout_hits += 1
        put("vae", sub[WAN_VAE])
    if WAN_T5 in sub:
        layout_hits += 1
        put("text_encoder", sub[WAN_T5])
    if (path / "google" / "umt5-xxl").is_dir():
        put("tokenizer", path / "google" / "umt5-xxl")
    dit_files = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("diffusion_pytorch_model*.safetensors"))
    if dit_files and "transformer" not in found and "high" not in found:
        put("transformer", path)
        layout_hits += 1
    if not layout_hits:
        # A plain folder with one checkpoint in it.
        put(_classify_file_or_folder(path), path)


def _classify_file_or_folder(path: Path) -> str:
    try:
        files = [p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors")]
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if len(files) == 1:
        return _classify_file(files[0])
    return _classify_file(path)


def resolve_components(paths: list[Path], spec: ModelSpec) -> Components:
    found: dict[str, Path] = {}
    for raw in paths:
        text = str(raw)
        role, sep, rest = text.partition("=")
        if sep and role in ROLES:
            if role in found:
                raise CheckpointError(f"{role} given twice")
            found[role] = Path(rest)
            if not found[role].exists():
                raise CheckpointError(f"{role}={rest}: no such file or folder")
        else:
            _collect(Path(text), found)

    out = Components(text_encoder=found.get("text_encoder"), tokenizer=found.get("tokenizer"), vae=found.get("vae"))
    if spec.experts:
        for role in ("high", "low"):
            if role not in found:
                raise CheckpointError(f"{spec.model_id} needs both experts; missing the {role}-noise DiT")
            out.transformers[role] = found[role]
    else:
        for kind in spec.kinds:
            role = "transformer" if kind == "t2v" else "i2v"
            if role == "i2v" and "i2v" not in found and "t2v" not in spec.kinds:
                role = "transformer"  # an I2V-only model: its one DiT may come unlabelled
            if role not in found:
                raise CheckpointError(f"{spec.model_id}: no DiT checkpoint for {kind}")
            out.transformers[kind] = found[role]
    for role in ("text_encoder", "vae"):
        if getattr(out, role) is None:
            raise CheckpointError(f"{spec.model_id}: no {role} checkpoint among {[str(p) for p in paths]}")
    return out

"""Which checkpoint is which: sorting the paths a user gives into DiT(s), text encoder, tokenizer, VAE.

`resolve_components(paths, card, linear=..., sampler=...)` takes any mix of files, folders and
`ROLE=PATH` arguments (role: transformer, high, low, i2v, text_encoder, tokenizer, vae) and returns one
path per component the model needs. The rules:

1. Explicit `ROLE=PATH` always wins over anything found in folders. Giving one role two different
   explicit paths is an error.
2. Argument order never matters: every file and folder is scanned first, then each role is decided
   from all candidates together.
3. What a file is comes from its tensor names and shapes, never from its name: VAE (`encoder.conv1`,
   ...), text encoder (`token_embedding` / `shared` / `encoder.block`), DiT (`patch_embedding`,
   `blocks.N`), or several at once (ComfyUI all-in-one: `model.diffusion_model.`,
   `first_stage_model.`, `text_encoders.`). A DiT serves T2V when its input channels equal its output
   channels, I2V when there are 20 more. Canonical folders say it in their manifest.
4. Folders are scanned recursively (hidden folders skipped): canonical folders, diffusers pipelines
   (`transformer/`, `transformer_2/` = A14B low-noise expert, `vae/`, `text_encoder/`, `tokenizer/`),
   Wan release folders (`Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`, `google/umt5-xxl/`, DiT
   shards + index, `high_noise_model/` + `low_noise_model/`), TurboDiffusion's `checkpoints/` folder,
   and any folder of weight files (`.pth`, `.safetensors`, `.gguf`, `.bin`, sharded + index).
5. The two A14B experts come from whole name tokens of the file and folder names below the argument:
   `high` or `low` as a word (`TurboWan2.2-I2V-A14B-high-720P.pth`, `high_noise_model/`, `HighNoise`,
   `HIGH`), never a substring ("flow", "slow", "highres"). A folder holding both experts gives both.
6. When several candidates remain for a DiT role, a preference decides, in this order: (a) with the rCM
   sampler a distilled TurboDiffusion DiT (SLA `proj_l` tensors, int8 weights, or "Turbo" in its name)
   over an original Wan DiT, with the flow sampler the other way round; (b) with `linear="w8a8"` (or
   "auto") the int8-quantized file (TurboDiffusion's `-quant.pth`), with "native" the unquantized one. Copies of one
   file (same name and size) count once. The choice is logged. If candidates still remain, a
   CheckpointError lists them and asks for `ROLE=PATH`.
7. Tokenizer: explicit `tokenizer=`, else the one embedded in the chosen text encoder file (ComfyUI),
   else the tokenizer closest to the text encoder (Wan's `google/umt5-xxl/`, a diffusers `tokenizer/`,
   a canonical `tokenizer/`, an HF folder's `spiece.model` / `tokenizer.json`), else google/umt5-xxl
   in the huggingface_hub cache (TurboDiffusion's layout). Two tokenizers equally close are an error.
8. A role with no candidate is a CheckpointError naming the model, the role and what was found,
   including the recognised-but-unsupported checkpoints and why (e.g. Wan2.1 I2V's CLIP branch).
   An original (non-distilled) DiT chosen for the rCM sampler logs a warning.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.checkpoint_io import (
    MANIFEST_NAME,
    WEIGHT_SUFFIXES,
    CheckpointError,
    read_manifest,
    read_shapes,
)
from models.tokenizer import SPIECE_NAME, TOKENIZER_JSON

logger = logging.getLogger(__name__)

ROLES = ("transformer", "high", "low", "i2v", "text_encoder", "tokenizer", "vae")
EXPERTS = ("high", "low")
WAN_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_VAE = "Wan2.1_VAE.pth"
MAX_DEPTH = 4

# ComfyUI all-in-one checkpoints: component -> key prefixes
_COMFY_PREFIXES = {
    "dit": ("model.diffusion_model.",),
    "vae": ("first_stage_model.", "vae."),
    "text_encoder": ("text_encoders.", "cond_stage_model."),
}
_VAE_KEYS = ("encoder.conv1.", "decoder.conv1.", "encoder.conv_in.", "decoder.conv_in.")
_TE_KEYS = ("token_embedding.", "shared.", "encoder.block.", "encoder.embed_tokens.", "enc.blk.", "token_embd.")
_CLIP_KEYS = ("visual.", "textual.", "log_scale")


@dataclass
class Components:
    transformers: dict[str, Path] = field(default_factory=dict)  # "t2v"/"i2v" or "high"/"low"
    text_encoder: Path | None = None
    tokenizer: Path | None = None  # None: embedded in the text encoder file, or looked up by its loader
    vae: Path | None = None
    distilled: dict[str, bool | None] = field(default_factory=dict)  # per DiT key; None = unknown


@dataclass(frozen=True)
class Candidate:
    component: str  # "dit" | "text_encoder" | "tokenizer" | "vae"
    path: Path
    expert: str | None = None  # "high" / "low" from whole name tokens
    kind: str | None = None  # DiT: "t2v" / "i2v" from its channels
    quantized: bool = False  # DiT: int8 W8A8 weights
    distilled: bool | None = None  # DiT: TurboDiffusion-distilled (True), original Wan (False)
    embeds_tokenizer: bool = False  # text encoder: carries `spiece_model`
    unsupported: str | None = None  # recognised but not servable: why

    def describe(self) -> str:
        tags = [t for t in (self.kind, self.expert, "int8" if self.quantized else None,
                            {True: "distilled", False: "original", None: None}[self.distilled]) if t]
        return f"{self.path}" + (f" ({', '.join(tags)})" if tags else "")


# 1. naming ------------------------------------------------------------------------------------------
def name_tokens(text: str) -> set[str]:
    """Lower-case words of a file or folder name: split at non-alphanumerics, case changes and digits
    ("TurboWan2.2-I2V-A14B-HighNoise" -> turbo, wan, 2, i, v, a, 14, b, high, noise)."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", text)
    return {w.lower() for w in words}


def expert_of(names: list[str]) -> str | None:
    tokens: set[str] = set()
    for name in names:
        tokens |= name_tokens(name)
    hits = [e for e in EXPERTS if e in tokens]
    return hits[0] if len(hits) == 1 else None


# 2. classifying one checkpoint ----------------------------------------------------------------------
def _dit_candidate(path: Path, shapes: dict[str, Any], names: list[str], manifest_info: dict | None = None
                   ) -> Candidate:
    from models.transformer_loading import PROJ_L, in_out_dims, to_wan_names, unsupported_layout

    wan = to_wan_names(shapes)
    why = unsupported_layout(wan)
    kind = None
    try:
        in_dim, out_dim = in_out_dims(wan)
        kind = "t2v" if in_dim == out_dim else "i2v"
    except CheckpointError:
        pass
    quantized = any(k.endswith("int8_weight") for k in wan)
    turbo = any("turbo" in name_tokens(n) for n in names)
    distilled: bool | None = quantized or turbo or any(PROJ_L in k for k in wan)
    if manifest_info is not None:
        quantized = quantized or bool(manifest_info.get("quantization"))
        source = str(manifest_info.get("source") or "")
        distilled = True if (distilled or "turbo" in source.lower() or manifest_info.get("sla")) else None
    return Candidate("dit", path, expert=expert_of(names), kind=kind, quantized=quantized,
                     distilled=distilled, unsupported=why)


def _classify(path: Path, names: list[str]) -> list[Candidate]:
    """Candidates one checkpoint (file, index, or single-checkpoint folder) stands for."""
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is not None:
        if manifest.component == "transformer":
            arch = manifest.architecture
            info = {"quantization": manifest.quantization, "source": manifest.source,
                    "sla": (manifest.attention or {}).get("sla")}
            shapes = {"patch_embedding.weight": (arch.get("dim", 1), arch.get("in_dim", 16), 1, 2, 2),
                      "head.head.weight": (arch.get("out_dim", 16) * 4, arch.get("dim", 1)), "blocks.0.x": ()}
            return [_dit_candidate(path, shapes, names, info)]
        out = [Candidate(manifest.component, path)]
        if manifest.component == "text_encoder" and _tokenizer_in(path / "tokenizer"):
            out.append(Candidate("tokenizer", path / "tokenizer"))
        return out
    try:
        shapes = read_shapes(path)
    except CheckpointError as exc:
        logger.debug("skipping %s: %s", path, exc)
        return []
    keys = list(shapes)
    out: list[Candidate] = []
    if any(k.startswith(p) for k in keys for ps in _COMFY_PREFIXES.values() for p in ps):
        for component, prefixes in _COMFY_PREFIXES.items():
            sub = {k: v for k, v in shapes.items() if k.startswith(prefixes)}
            if not sub:
                continue
            if component == "dit":
                out.append(_dit_candidate(path, sub, names))
            else:
                out.append(Candidate(component, path, embeds_tokenizer=component == "text_encoder"
                                     and any(k.endswith("spiece_model") for k in keys)))
        return out
    if any(k.startswith(_VAE_KEYS) for k in keys):
        return [Candidate("vae", path)]
    if any(k.startswith(_TE_KEYS) for k in keys):
        return [Candidate("text_encoder", path, embeds_tokenizer="spiece_model" in shapes)]
    if any(k.startswith(_CLIP_KEYS) for k in keys):
        logger.info("ignoring %s: a CLIP image encoder (Wan2.1 I2V), which no served model uses", path)
        return []
    from models.transformer_loading import to_wan_names

    wan = to_wan_names(shapes)
    if any(k.startswith(("patch_embedding.", "blocks.0.")) for k in wan):
        return [_dit_candidate(path, shapes, names)]
    logger.info("ignoring %s: not a checkpoint of a known component", path)
    return []


def _tokenizer_in(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).is_file() for n in (SPIECE_NAME, TOKENIZER_JSON))


# 3. scanning folders ---------------------------------------------------------------------------------
def _scan(path: Path, names: list[str], out: list[Candidate], depth: int = 0) -> None:
    """Candidates under `path`; `names` are the argument's name and the folders below it (for tokens)."""
    if path.is_file():
        if path.name == TOKENIZER_JSON or path.suffix == ".model":
            out.append(Candidate("tokenizer", path))
        elif path.name.endswith((*WEIGHT_SUFFIXES, ".index.json")):
            out.extend(_classify(path, names))
        return
    if not path.is_dir():
        return
    if (path / MANIFEST_NAME).is_file():
        out.extend(_classify(path, names))
        return
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    indexes = [p for p in entries if p.is_file() and p.name.endswith(".index.json")]
    shards: set[str] = set()
    for index in indexes:
        try:
            shards |= set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    weights = [p for p in entries if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) and p.name not in shards]
    if _tokenizer_in(path):
        out.append(Candidate("tokenizer", path))
    units = indexes + weights
    if (path / "config.json").is_file() and len(units) == 1:
        out.extend(_classify(path, names))  # a diffusers / HF component folder: the folder is the unit
    else:
        for unit in units:
            out.extend(_classify(unit, [*names, unit.name]))
    if depth >= MAX_DEPTH:
        return
    subdirs = [p for p in entries if p.is_dir()]
    diffusers_a14b = {"transformer", "transformer_2"} <= {p.name for p in subdirs}
    for sub in subdirs:
        sub_names = [*names, sub.name]
        if diffusers_a14b and sub.name in ("transformer", "transformer_2"):
            sub_names.append("high" if sub.name == "transformer" else "low")
        _scan(sub, sub_names, out, depth + 1)


# 4. choosing ----------------------------------------------------------------------------------------
def _same_file_key(path: Path) -> tuple[str, int] | None:
    try:
        return (path.name, path.stat().st_size) if path.is_file() else None
    except OSError:
        return None


def _dedupe(cands: list[Candidate]) -> list[Candidate]:
    seen: dict[object, Candidate] = {}
    for c in sorted(cands, key=lambda c: str(c.path)):
        key = _same_file_key(c.path) or c.path.resolve()
        seen.setdefault(key, c)
    return list(seen.values())


def _choose(role: str, cands: list[Candidate], *, model_id: str, linear: str, sampler: str) -> Candidate:
    cands = _dedupe(cands)
    reasons: list[str] = []
    if len(cands) > 1 and role in ("transformer", "i2v", *EXPERTS):
        want_distilled = sampler == "rcm"
        steps = [
            ("distilled" if want_distilled else "original", lambda c: c.distilled is want_distilled,
             f"the {sampler} sampler prefers {'a distilled TurboDiffusion' if want_distilled else 'an original'} DiT"),
            ("unquantized" if linear == "native" else "int8", lambda c: c.quantized == (linear != "native"),
             f"linear={linear!r} prefers the {'unquantized' if linear == 'native' else '-quant (int8)'} file"),
        ]
        for _name, keep_if, why in steps:
            keep = [c for c in cands if keep_if(c)]
            if keep and len(keep) < len(cands):
                reasons.append(f"{why} (over {', '.join(str(c.path) for c in cands if c not in keep)})")
                cands = keep
    if len(cands) > 1:
        listing = "; ".join(c.describe() for c in cands)
        raise CheckpointError(f"{model_id}: {len(cands)} candidates for {role}: {listing}; pass {role}=PATH")
    if reasons:
        logger.info("%s: %s=%s: %s", model_id, role, cands[0].path, "; ".join(reasons))
    return cands[0]


def _missing(model_id: str, what: str, role: str, found: list[Candidate], paths: list[Path]) -> CheckpointError:
    dits = [c for c in found if c.component == "dit"]
    msg = f"{model_id}: no {what} among {[str(p) for p in paths]}"
    usable = [c.describe() for c in dits if c.unsupported is None]
    if usable and role in ("transformer", "i2v", *EXPERTS):
        msg += f"; DiTs found: {usable}"
    for c in dits:
        if c.unsupported is not None:
            msg += f"; {c.path} is not supported: {c.unsupported}"
    if role in EXPERTS:
        msg += "; expert roles come from the words 'high'/'low' in file or folder names"
    return CheckpointError(msg + f"; pass {role}=PATH")


def _closest_tokenizer(te: Path, toks: list[Candidate], model_id: str) -> Candidate | None:
    if not toks:
        return None
    te_parts = te.resolve().parts

    def shared(c: Candidate) -> int:
        parts = c.path.resolve().parts
        n = 0
        for a, b in zip(parts, te_parts, strict=False):
            if a != b:
                break
            n += 1
        return n

    toks = _dedupe(toks)
    best = max(shared(c) for c in toks)
    closest = [c for c in toks if shared(c) == best]
    if len(closest) > 1:
        raise CheckpointError(
            f"{model_id}: {len(closest)} tokenizers equally close to the text encoder {te}: "
            + ", ".join(str(c.path) for c in closest) + "; pass tokenizer=PATH"
        )
    return closest[0]


def resolve_components(
    paths: list[Path], spec: Any, *, linear: str = "native", sampler: str = "rcm",
    hub_cache: str | Path | None = None,
) -> Components:
    """One path per component `spec` needs (see the module docstring for the rules).

    spec: the model's catalog card; only `.model_id`, `.kinds` and `.experts` are read.
    linear / sampler: the runtime choices the DiT preference follows. hub_cache: the huggingface_hub
    cache to look for google/umt5-xxl in (default: huggingface_hub's own).
    """
    model_id = spec.model_id
    explicit: dict[str, Path] = {}
    found: list[Candidate] = []
    for raw in paths:
        text = str(raw)
        role, sep, rest = text.partition("=")
        if sep and role in ROLES:
            target = Path(rest)
            if not target.exists():
                raise CheckpointError(f"{role}={rest}: no such file or folder")
            if role in explicit and explicit[role].resolve() != target.resolve():
                raise CheckpointError(f"{role} given twice: {explicit[role]} and {target}")
            explicit[role] = target
        else:
            path = Path(text)
            if not path.exists():
                raise CheckpointError(f"{path}: no such file or folder")
            _scan(path, [path.name], found)

    out = Components()
    dits = [c for c in found if c.component == "dit"]
    usable = [c for c in dits if c.unsupported is None]
    # DiT roles: (key in Components.transformers, explicit role names, candidate filter, description)
    wanted: list[tuple[str, tuple[str, ...], Any, str]] = []
    if spec.experts:
        for e in EXPERTS:
            wanted.append((e, (e,), lambda c, e=e: c.expert == e, f"{e}-noise expert DiT"))
    else:
        for kind in spec.kinds:
            roles = ("transformer",) if kind == "t2v" else ("i2v",)
            if kind == "i2v" and "t2v" not in spec.kinds:
                roles = ("i2v", "transformer")  # an I2V-only model's one DiT may be given as transformer=
            wanted.append((kind, roles, lambda c, kind=kind: c.kind in (kind, None), f"DiT checkpoint for {kind}"))
    for key, roles, keep_if, what in wanted:
        given = next((explicit[r] for r in roles if r in explicit), None)
        if given is not None:
            out.transformers[key] = given
            out.distilled[key] = next((c.distilled for c in _classify_quietly(given) if c.component == "dit"), None)
            continue
        cands = [c for c in usable if keep_if(c)]
        if not cands:
            raise _missing(model_id, what, roles[0], found, paths)
        chosen = _choose(roles[0], cands, model_id=model_id, linear=linear, sampler=sampler)
        out.transformers[key] = chosen.path
        out.distilled[key] = chosen.distilled
    if sampler == "rcm":
        for key, distilled in out.distilled.items():
            if distilled is False:
                logger.warning(
                    "%s: the %s DiT %s is an original (non-distilled) Wan checkpoint; the rCM sampler "
                    "needs a TurboDiffusion-distilled one: expect poor videos, or use the flow sampler "
                    "(50 steps with CFG)", model_id, key, out.transformers[key])

    for role in ("vae", "text_encoder"):
        if role in explicit:
            setattr(out, role, explicit[role])
            continue
        cands = [c for c in found if c.component == role]
        if not cands:
            raise _missing(model_id, f"{role} checkpoint", role, found, paths)
        setattr(out, role, _choose(role, cands, model_id=model_id, linear=linear, sampler=sampler).path)

    out.tokenizer = _resolve_tokenizer(out.text_encoder, explicit, found, model_id, hub_cache)
    logger.info("%s: checkpoints: %s", model_id, out)
    return out


def _resolve_tokenizer(te: Path | None, explicit: dict[str, Path], found: list[Candidate], model_id: str,
                       hub_cache: str | Path | None) -> Path | None:
    if "tokenizer" in explicit:
        return explicit["tokenizer"]
    assert te is not None
    te_cands = [c for c in found if c.component == "text_encoder" and c.path == te]
    if not te_cands and "text_encoder" in explicit:
        te_cands = [c for c in _classify_quietly(te) if c.component == "text_encoder"]
    if any(c.embeds_tokenizer for c in te_cands):
        return None  # the text encoder's loader takes it from the file
    toks = [c for c in found if c.component == "tokenizer"]
    if not toks and "text_encoder" in explicit:
        scanned: list[Candidate] = []
        _scan(te if te.is_dir() else te.parent, [te.name], scanned, depth=MAX_DEPTH - 1)
        toks = [c for c in scanned if c.component == "tokenizer"]
    closest = _closest_tokenizer(te, toks, model_id)
    if closest is not None:
        return closest.path
    from models.hub import cached_tokenizer

    cached = cached_tokenizer(cache_dir=hub_cache)
    if cached is not None:
        logger.info("%s: tokenizer from the Hugging Face cache: %s", model_id, cached)
    return cached  # None: the text encoder's loader looks next to its weights and reports what it tried


def _classify_quietly(path: Path) -> list[Candidate]:
    try:
        return _classify(path, [path.name])
    except (CheckpointError, OSError):
        return []

"""Role resolution on the folders users actually have: tiny stand-ins of the published Hugging Face repos
(TurboDiffusion, Wan-AI releases and their -Diffusers twins, Comfy-Org repackaged files), what
`turbovid download` fetches, TurboDiffusion's `checkpoints/` layout with the tokenizer in the hub cache.
Every scenario resolves the same in every argument order, and loads through `load_pipeline` with parity
against diffusers / transformers."""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import _layouts as L  # noqa: E402

from contract.catalog import MODELS  # noqa: E402
from models import hub  # noqa: E402
from models.checkpoint_components import expert_of, resolve_components  # noqa: E402
from models.checkpoint_io import CheckpointError  # noqa: E402
from models.linear import dequantize_state_dict  # noqa: E402
from models.pipeline import load_pipeline  # noqa: E402

T2V = SimpleNamespace(model_id="wan2.1-t2v-1.3b", kinds=("t2v",), experts=False)
A14B = SimpleNamespace(model_id="wan2.2-i2v-a14b", kinds=("i2v",), experts=True)
TURBO = "TurboDiffusion"
WAN_T5, WAN_VAE = "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth"


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> L.Refs:
    return L.build_refs(tmp_path_factory.mktemp("refs"))


def _wan_shared(folder: Path, refs: L.Refs) -> None:
    """What every Wan-AI release holds besides its DiT: VAE (fp32), umT5 (bf16), google/umt5-xxl/."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(L.vae_wan_state(refs.vae), folder / WAN_VAE)
    torch.save({k: v.to(torch.bfloat16) for k, v in L.hf_to_wan(L.hf_encoder_state(refs.umt5)).items()},
               folder / WAN_T5)
    tok = folder / "google" / "umt5-xxl"
    L.tokenizer_json_folder(refs.spiece, tok)
    shutil.copy(refs.spiece, tok / "spiece.model")
    (folder / "README.md").write_text("# release\n")


def _wan_config(folder: Path, in_dim: int) -> None:
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "dim": 64, "ffn_dim": 128, "freq_dim": 256, "in_dim": in_dim,
        "model_type": "t2v" if in_dim == 16 else "i2v", "num_heads": 2, "num_layers": 2, "out_dim": 16}))


def _diffusers_text_encoder(refs: L.Refs, folder: Path) -> None:
    enc = transformers.UMT5EncoderModel(L.hf_umt5_config()).eval()
    enc.load_state_dict(L.hf_encoder_state(refs.umt5), strict=False)
    enc.encoder.embed_tokens.weight = enc.shared.weight
    enc.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def repos(refs, tmp_path_factory) -> Path:
    """root/<owner>/<repo>/...: the files of each Hugging Face repo, named and laid out as published."""
    root = tmp_path_factory.mktemp("repos")
    dits = {"t2v": L.wan_state(refs.t2v), "high": L.wan_state(refs.i2v_high), "low": L.wan_state(refs.i2v_low)}
    for name, role in (("TurboWan2.1-T2V-1.3B-480P", "t2v"), ("TurboWan2.1-T2V-14B-720P", "t2v")):
        folder = root / TURBO / name
        folder.mkdir(parents=True)
        torch.save(L.turbo_state(dits[role], quant=False), folder / f"{name}.pth")
        torch.save(L.turbo_state(dits[role], quant=True), folder / f"{name}-quant.pth")
        (folder / "README.md").write_text("# TurboWan\n")
    folder = root / TURBO / "TurboWan2.2-I2V-A14B-720P"
    folder.mkdir(parents=True)
    for e in ("high", "low"):
        torch.save(L.turbo_state(dits[e], quant=False), folder / f"TurboWan2.2-I2V-A14B-{e}-720P.pth")
        torch.save(L.turbo_state(dits[e], quant=True), folder / f"TurboWan2.2-I2V-A14B-{e}-720P-quant.pth")

    wan = root / "Wan-AI"
    _wan_shared(wan / "Wan2.1-T2V-1.3B", refs)  # original DiT: one fp32 safetensors + config.json
    save_file(dits["t2v"], str(wan / "Wan2.1-T2V-1.3B" / "diffusion_pytorch_model.safetensors"))
    _wan_config(wan / "Wan2.1-T2V-1.3B", 16)
    (wan / "Wan2.1-T2V-1.3B" / "assets").mkdir()
    (wan / "Wan2.1-T2V-1.3B" / "assets" / "logo.png").write_bytes(b"\x89PNG")
    _wan_shared(wan / "Wan2.2-I2V-A14B", refs)  # two experts, each sharded + index + config.json
    for e in ("high", "low"):
        sub = wan / "Wan2.2-I2V-A14B" / f"{e}_noise_model"
        L.write_sharded_safetensors(dits[e], sub, "diffusion_pytorch_model", shards=3)
        _wan_config(sub, 36)
    _wan_shared(wan / "Wan2.1-I2V-14B-480P", refs)  # CLIP image branch: not servable
    clip_dit = dict(dits["high"], **{"img_emb.proj.1.weight": torch.zeros(64, 64)})
    clip_dit.update({f"blocks.{i}.cross_attn.k_img.weight": torch.zeros(64, 64) for i in range(2)})
    L.write_sharded_safetensors(clip_dit, wan / "Wan2.1-I2V-14B-480P", "diffusion_pytorch_model", shards=2)
    torch.save({"visual.conv1.weight": torch.zeros(2, 2), "log_scale": torch.zeros(())},
               wan / "Wan2.1-I2V-14B-480P" / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")

    for name, experts in (("Wan2.1-T2V-1.3B-Diffusers", ("t2v",)), ("Wan2.2-I2V-A14B-Diffusers", ("high", "low"))):
        folder = wan / name
        for sub, e in zip(("transformer", "transformer_2"), experts, strict=False):
            model = {"t2v": refs.t2v, "high": refs.i2v_high, "low": refs.i2v_low}[e]
            model.save_pretrained(str(folder / sub))
        refs.vae.save_pretrained(str(folder / "vae"))
        _diffusers_text_encoder(refs, folder / "text_encoder")
        L.tokenizer_json_folder(refs.spiece, folder / "tokenizer")  # current transformers: no spiece.model
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
        (folder / "scheduler").mkdir()
        (folder / "scheduler" / "scheduler_config.json").write_text("{}")

    comfy = root / "Comfy-Org" / "Wan_2.1_ComfyUI_repackaged" / "split_files"
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (comfy / sub).mkdir(parents=True)
    save_file({k: v.half() for k, v in dits["t2v"].items()}, str(comfy / "diffusion_models" / "wan2.1_t2v_1.3B_fp16.safetensors"))
    te = {k: v.half() for k, v in L.hf_encoder_state(refs.umt5).items()}
    te["spiece_model"] = torch.frombuffer(bytearray(refs.spiece.read_bytes()), dtype=torch.uint8)
    save_file(te, str(comfy / "text_encoders" / "umt5_xxl_fp16.safetensors"))
    fp8, _ = L.fp8_scaled(L.hf_encoder_state(refs.umt5), pick=lambda k, v: ".SelfAttention.q." in k)
    fp8["spiece_model"] = te["spiece_model"]
    save_file(fp8, str(comfy / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"))
    save_file(L.vae_wan_state(refs.vae), str(comfy / "vae" / "wan_2.1_vae.safetensors"))
    return root


_EXPECTED: dict[tuple, object] = {}  # reference outputs, computed once per module


def _expected_dit(refs: L.Refs, role: str, quant: bool) -> torch.Tensor:
    if (role, quant) not in _EXPECTED:
        model = {"t2v": refs.t2v, "high": refs.i2v_high, "low": refs.i2v_low}[role]
        in_dim = 16 if role == "t2v" else 36
        if quant:
            q = L.turbo_state(L.wan_state(model), quant=True)
            deq = {k: v for k, v in dequantize_state_dict(q).items() if "proj_l" not in k}
            model = L.set_wan_state(L.diffusers_dit(in_dim), deq)
        _EXPECTED[role, quant] = L.diffusers_out(model, in_dim)
    return _EXPECTED[role, quant]  # type: ignore[return-value]


def _expected_text(refs: L.Refs):
    if "text" not in _EXPECTED:
        _EXPECTED["text"] = L.umt5_reference(refs.umt5, refs.spiece)
    return _EXPECTED["text"]


def _check_pipeline(refs: L.Refs, model_id: str, args: list, *, quant: bool, vae_forward: bool = False,
                    **kw) -> None:
    """load_pipeline on `args`: each DiT and the text encoder match diffusers / transformers (cos >=
    0.99999); the VAE holds exactly the reference's weights (and, with vae_forward, encodes like it)."""
    pipe = load_pipeline(model_id, [str(a) for a in args], attention="dense", **kw)
    for role, model in pipe.transformers.items():
        got = L.ours_out(model, 16 if role == "t2v" else 36)
        assert L.cos(got, _expected_dit(refs, role, quant)) >= 0.99999, role
    L.assert_text_parity(pipe.text_encoder.encode(L.PROMPTS), *_expected_text(refs))
    want = L.vae_wan_state(refs.vae)
    got_vae = pipe.vae.state_dict()
    assert all(torch.equal(got_vae[k].float(), want[k].float()) for k in want)
    if vae_forward:
        video, latents = L.vae_reference(refs.vae)
        with torch.no_grad():
            assert L.cos(pipe.vae.encode(video), latents) >= 0.99999


def _resolve_all_orders(args: list, card, **kw):
    """resolve_components in every argument order: the same result each time; returns it."""
    results = [resolve_components([Path(str(a)) for a in order], card, **kw)
               for order in itertools.permutations(args)]
    assert all(r == results[0] for r in results[1:]), [vars(r) for r in results]
    return results[0]


# 1. names --------------------------------------------------------------------------------------------
def test_expert_roles_come_from_whole_name_tokens():
    assert expert_of(["TurboWan2.2-I2V-A14B-high-720P-quant.pth"]) == "high"
    assert expert_of(["Wan2.2-I2V-A14B", "low_noise_model", "diffusion_pytorch_model.safetensors.index.json"]) == "low"
    assert expert_of(["HighNoise", "Wan2.2-I2V-A14B-HighNoise-Q4_K_M.gguf"]) == "high"
    assert expert_of(["Wan2_2-I2V-A14B-LOW_fp8_e4m3fn_scaled_KJ.safetensors"]) == "low"
    for name in ("wan_flow_slow.safetensors", "highres_lowlight.pth", "allow.pth", "wan2.1_t2v.pth"):
        assert expert_of([name]) is None, name
    assert expert_of(["high_and_low.pth"]) is None  # both: ambiguous


# 2. turbovid download -> the printed --checkpoint -------------------------------------------------------
def _fake_snapshot_download(repos: Path, fetched: list):
    def snapshot_download(repo_id: str, allow_patterns, local_dir, **_):
        src, dst = repos / repo_id, Path(local_dir)
        for f in src.rglob("*"):
            rel = f.relative_to(src).as_posix()
            if f.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst / rel)
                fetched.append(f"{repo_id}/{rel}")
        (dst / ".cache" / "huggingface" / "download").mkdir(parents=True, exist_ok=True)  # as hf leaves it
        return str(dst)

    return snapshot_download


@pytest.mark.parametrize(("model_id", "full_precision"), [
    ("wan2.1-t2v-1.3b", False), ("wan2.1-t2v-1.3b", True), ("wan2.1-t2v-14b", False), ("wan2.2-i2v-a14b", False),
    ("wan2.2-i2v-a14b", True)])
def test_download_then_printed_checkpoint_args_load(refs, repos, tmp_path, monkeypatch, model_id, full_precision):
    import huggingface_hub

    fetched: list[str] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _fake_snapshot_download(repos, fetched))
    card = MODELS[model_id]
    args = hub.download(model_id, card.downloads, tmp_path / "ckpt", full_precision=full_precision)
    assert args == [str(tmp_path / "ckpt" / repo.split("/")[1]) for repo, _ in card.downloads]
    dits = [f for f in fetched if f.startswith(TURBO)]
    assert len(dits) == (2 if card.experts else 1) and all(f.endswith("-quant.pth") != full_precision for f in dits)
    assert f"Wan-AI/Wan2.1-T2V-1.3B/{WAN_T5}" in fetched and "Wan-AI/Wan2.1-T2V-1.3B/google/umt5-xxl/spiece.model" in fetched
    assert not any("diffusion_pytorch_model" in f for f in fetched)
    _resolve_all_orders(args, card, linear="w8a8")
    _check_pipeline(refs, model_id, args[::-1], quant=not full_precision, vae_forward=model_id == "wan2.1-t2v-1.3b")


# 3. full snapshots: both experts, plain and -quant side by side -------------------------------------------
@pytest.mark.parametrize("linear", ["native", "w8a8", "auto"])
def test_a14b_repo_snapshot_gives_both_experts_and_the_file_linear_wants(refs, repos, linear, caplog):
    args = [repos / TURBO / "TurboWan2.2-I2V-A14B-720P", repos / "Wan-AI" / "Wan2.1-T2V-1.3B"]
    with caplog.at_level(logging.INFO, logger="models.checkpoint_components"):
        parts = _resolve_all_orders(args, A14B, linear=linear)
    quant = linear != "native"
    for e in ("high", "low"):
        assert parts.transformers[e].name == f"TurboWan2.2-I2V-A14B-{e}-720P{'-quant' if quant else ''}.pth"
    assert "prefers the" in caplog.text  # the choice is logged
    assert parts.tokenizer == repos / "Wan-AI" / "Wan2.1-T2V-1.3B" / "google" / "umt5-xxl"
    _check_pipeline(refs, "wan2.2-i2v-a14b", args, quant=quant, linear=linear)


# 4. TurboDiffusion's README layout: one checkpoints/ folder, tokenizer in the hub cache -------------------
def test_turbodiffusion_checkpoints_folder_and_files(refs, repos, tmp_path, monkeypatch):
    import huggingface_hub.constants

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    shutil.copy(repos / TURBO / "TurboWan2.1-T2V-1.3B-480P" / "TurboWan2.1-T2V-1.3B-480P-quant.pth", ckpt)
    for name in (WAN_VAE, WAN_T5):
        shutil.copy(repos / "Wan-AI" / "Wan2.1-T2V-1.3B" / name, ckpt)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):  # not in the cache yet
        load_pipeline("wan2.1-t2v-1.3b", [str(ckpt)], attention="dense")
    snap = L.hub_cache_umt5(tmp_path / "hub", refs.spiece)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    assert _resolve_all_orders([ckpt], T2V).tokenizer == snap / "spiece.model"
    _check_pipeline(refs, "wan2.1-t2v-1.3b", [ckpt], quant=True)
    files = sorted(ckpt.iterdir())
    _resolve_all_orders(files, T2V)
    for order in (files, files[::-1]):
        _check_pipeline(refs, "wan2.1-t2v-1.3b", order, quant=True)


# 5. release folders next to TurboWan files, explicit roles ------------------------------------------------
def test_release_folder_and_turbowan_file_in_any_order(refs, repos, caplog):
    release = repos / "Wan-AI" / "Wan2.1-T2V-1.3B"
    turbo = repos / TURBO / "TurboWan2.1-T2V-1.3B-480P" / "TurboWan2.1-T2V-1.3B-480P.pth"
    assert _resolve_all_orders([release, turbo], T2V, sampler="rcm").transformers["t2v"] == turbo
    assert _resolve_all_orders([release, turbo], T2V, sampler="flow").transformers["t2v"] == (
        release / "diffusion_pytorch_model.safetensors")
    for order in ([release, turbo], [turbo, release]):
        _check_pipeline(refs, "wan2.1-t2v-1.3b", order, quant=False)
    # explicit transformer= next to a release folder that has its own DiT: explicit wins, no "given twice"
    parts = _resolve_all_orders([release, f"transformer={release / 'diffusion_pytorch_model.safetensors'}"], T2V)
    assert parts.transformers["t2v"] == release / "diffusion_pytorch_model.safetensors"
    parts = _resolve_all_orders([release, f"transformer={turbo}", f"transformer={turbo}"], T2V, sampler="flow")
    assert parts.transformers["t2v"] == turbo
    with pytest.raises(CheckpointError, match="transformer given twice"):
        resolve_components([Path(f"transformer={turbo}"), Path(f"transformer={release}")], T2V)
    # the original DiT with the rCM sampler: a warning
    with caplog.at_level(logging.WARNING, logger="models.checkpoint_components"):
        resolve_components([release], T2V, sampler="rcm")
    assert "original (non-distilled)" in caplog.text


def test_explicit_experts_next_to_the_wan22_release(refs, repos, caplog):
    release = repos / "Wan-AI" / "Wan2.2-I2V-A14B"
    turbo = repos / TURBO / "TurboWan2.2-I2V-A14B-720P"
    args = [release, f"high={turbo / 'TurboWan2.2-I2V-A14B-high-720P.pth'}",
            f"low={turbo / 'TurboWan2.2-I2V-A14B-low-720P.pth'}"]
    parts = _resolve_all_orders(args, A14B)
    assert parts.transformers == {"high": turbo / "TurboWan2.2-I2V-A14B-high-720P.pth",
                                  "low": turbo / "TurboWan2.2-I2V-A14B-low-720P.pth"}
    _check_pipeline(refs, "wan2.2-i2v-a14b", args, quant=False)
    # the release folder alone: both experts from high_noise_model/ and low_noise_model/ (original: warned)
    with caplog.at_level(logging.WARNING, logger="models.checkpoint_components"):
        parts = _resolve_all_orders([release], A14B)
    assert parts.transformers == {"high": release / "high_noise_model", "low": release / "low_noise_model"}
    assert "original (non-distilled)" in caplog.text
    _check_pipeline(refs, "wan2.2-i2v-a14b", [release], quant=False, solver="flow")


# 6. diffusers and ComfyUI -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Wan2.1-T2V-1.3B-Diffusers", "Wan2.2-I2V-A14B-Diffusers"])
def test_diffusers_pipeline_folders(refs, repos, name):
    folder = repos / "Wan-AI" / name
    card = A14B if "A14B" in name else T2V
    parts = _resolve_all_orders([folder], card)
    assert parts.tokenizer == folder / "tokenizer" and not (folder / "tokenizer" / "spiece.model").exists()
    _check_pipeline(refs, card.model_id, [folder], quant=False, solver="flow")


def test_comfy_split_files_in_any_order(refs, repos):
    split = repos / "Comfy-Org" / "Wan_2.1_ComfyUI_repackaged" / "split_files"
    files = [split / "diffusion_models" / "wan2.1_t2v_1.3B_fp16.safetensors",
             split / "text_encoders" / "umt5_xxl_fp16.safetensors", split / "vae" / "wan_2.1_vae.safetensors"]
    parts = _resolve_all_orders(files, T2V)
    assert parts.tokenizer is None  # embedded in umt5_xxl_fp16.safetensors
    _check_pipeline(refs, "wan2.1-t2v-1.3b", files[::-1], quant=False, solver="flow", vae_forward=True)
    # the whole folder holds two text encoders (fp16 and fp8 scaled): listed, and text_encoder= decides
    with pytest.raises(CheckpointError, match=r"2 candidates for text_encoder.*umt5_xxl_fp16.*umt5_xxl_fp8"):
        resolve_components([split], T2V)
    parts = _resolve_all_orders([split, f"text_encoder={files[1]}"], T2V)
    assert parts.text_encoder == files[1]


def test_comfy_all_in_one_file(refs, tmp_path):
    path = L.comfy_all_in_one(refs, tmp_path)
    parts = resolve_components([path], T2V)
    assert parts.transformers["t2v"] == parts.vae == parts.text_encoder == path and parts.tokenizer is None
    _check_pipeline(refs, "wan2.1-t2v-1.3b", [path], quant=False, solver="flow")


def test_gguf_experts_folder(refs, repos, tmp_path):
    """QuantStack's Wan2.2 A14B GGUF repo: HighNoise/ and LowNoise/ subfolders."""
    root = tmp_path / "Wan2.2-I2V-A14B-GGUF"
    for e, model in (("High", refs.i2v_high), ("Low", refs.i2v_low)):
        (root / f"{e}Noise").mkdir(parents=True)
        L.write_gguf(root / f"{e}Noise" / f"Wan2.2-I2V-A14B-{e}Noise-Q8_0.gguf", L.wan_state(model), "Q8_0")
    parts = _resolve_all_orders([root, repos / "Wan-AI" / "Wan2.1-T2V-1.3B"], A14B)
    assert parts.transformers["high"].name == "Wan2.2-I2V-A14B-HighNoise-Q8_0.gguf"
    assert parts.transformers["low"].name == "Wan2.2-I2V-A14B-LowNoise-Q8_0.gguf"


# 7. errors ---------------------------------------------------------------------------------------------
def test_unsupported_and_ambiguous_layouts_are_named(repos):
    with pytest.raises(CheckpointError, match=r"Wan2.1 I2V/FLF2V with the CLIP image branch.*pass high=PATH"):
        resolve_components([repos / "Wan-AI" / "Wan2.1-I2V-14B-480P"], A14B)
    both = [repos / TURBO / "TurboWan2.1-T2V-1.3B-480P", repos / TURBO / "TurboWan2.1-T2V-14B-720P",
            repos / "Wan-AI" / "Wan2.1-T2V-1.3B"]
    with pytest.raises(CheckpointError, match=r"2 candidates for transformer.*1.3B-480P-quant.pth.*14B-720P-quant.pth"):
        resolve_components(both, T2V, linear="w8a8")
    with pytest.raises(CheckpointError, match=r"no low-noise expert DiT.*'high'/'low'"):
        resolve_components([repos / TURBO / "TurboWan2.2-I2V-A14B-720P" / "TurboWan2.2-I2V-A14B-high-720P.pth",
                            repos / "Wan-AI" / "Wan2.1-T2V-1.3B"], A14B)
    with pytest.raises(CheckpointError, match=r"no DiT checkpoint for t2v"):
        resolve_components([repos / "Wan-AI" / "Wan2.2-I2V-A14B"], T2V)
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_components([Path("vae=/nonexistent/x.pth")], T2V)


def test_wan_tiny_folder_still_resolves(tmp_path):
    from models.tiny import ensure_tiny_checkpoints

    folder = ensure_tiny_checkpoints(tmp_path / "wan-tiny")
    parts = resolve_components([folder], SimpleNamespace(model_id="wan-tiny", kinds=("t2v", "i2v"), experts=False))
    assert parts.transformers == {"t2v": folder / "transformer", "i2v": folder / "i2v"}
    assert parts.tokenizer == folder / "text_encoder" / "tokenizer" and parts.vae == folder / "vae"


def test_checkpoint_args_for_models_without_downloads(tmp_path):
    assert hub.checkpoint_args("x", (("A/b", ("f{q}.pth",)), ("C/d", ("g",))), tmp_path) == [
        str(tmp_path / "b"), str(tmp_path / "d")]
    with pytest.raises(ValueError, match="no published checkpoints"):
        hub.checkpoint_args("wan-tiny", MODELS["wan-tiny"].downloads, tmp_path)

"""Each published checkpoint format through the public loaders, against diffusers / transformers on the
same weights (or on the dequantized weights the file stands for): fp8 and scaled fp8 (DiT and umT5),
GGUF DiTs (Q8_0, Q5_K, Q4_K), ComfyUI umT5 files with the embedded tokenizer and all-in-one checkpoints,
tokenizer.json-only tokenizers, google/umt5-xxl's sharded .bin, and the named errors for what is not
supported."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

import _layouts as L  # noqa: E402

from models import load_text_encoder, load_transformer, load_vae  # noqa: E402
from models.checkpoint_io import CheckpointError, read_shapes  # noqa: E402
from models.linear import W8A8Linear, dequantize_state_dict, quantize_state_dict  # noqa: E402
from models.tokenizer import UMT5Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> L.Refs:
    return L.build_refs(tmp_path_factory.mktemp("refs"))


@pytest.fixture(scope="module")
def text_ref(refs):
    return L.umt5_reference(refs.umt5, refs.spiece)


def _dit_parity(model, reference, in_dim: int) -> float:
    got, want = L.ours_out(model, in_dim), L.diffusers_out(reference, in_dim)
    c = L.cos(got, want)
    assert c >= 0.99999, c
    return c


# 1. DiT: fp8 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["fp8_e4m3fn", "fp8_scaled", "fp8_scaled_comfy_prefix", "kijai_scaled_KJ"])
def test_fp8_dit_files_match_diffusers_on_dequantized_weights(refs, tmp_path, variant):
    wan = L.wan_state(refs.t2v)
    if variant == "fp8_e4m3fn":  # Comfy-Org / Kijai plain fp8
        file, deq = L.fp8_plain(wan)
        name = "wan2.1_t2v_1.3B_fp8_e4m3fn.safetensors"
    elif variant == "kijai_scaled_KJ":  # per-row scales
        file, deq = L.fp8_scaled(wan)
        for k in [k for k in file if k.endswith(".scale_weight")]:
            w = deq[k[: -len("scale_weight")] + "weight"]
            row = w.abs().amax(dim=1).float() / 448.0
            q = (w / row[:, None]).to(torch.float8_e4m3fn)
            file[k[: -len("scale_weight")] + "weight"], file[k] = q, row
            deq[k[: -len("scale_weight")] + "weight"] = q.float() * row[:, None]
        name = "Wan2_1-T2V-1_3B_fp8_e4m3fn_scaled_KJ.safetensors"
    else:
        file, deq = L.fp8_scaled(wan)
        name = "wan2.1_t2v_1.3B_fp8_scaled.safetensors"
        if variant.endswith("comfy_prefix"):
            file = {"model.diffusion_model." + k: v for k, v in file.items()}
    save_file(file, str(tmp_path / name))
    assert any(v.dtype == torch.float8_e4m3fn for v in file.values())

    reference = L.set_wan_state(L.diffusers_dit(16), deq)
    _dit_parity(load_transformer(tmp_path / name), reference, 16)
    # w8a8 from fp8: the dequantized weights requantized to int8 blocks
    w8 = load_transformer(tmp_path / name, linear="w8a8")
    assert isinstance(w8.blocks[0].ffn[0], W8A8Linear)
    want = L.set_wan_state(L.diffusers_dit(16), dequantize_state_dict(quantize_state_dict(deq)))
    _dit_parity(w8, want, 16)


# 2. DiT: GGUF -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quant", ["Q8_0", "Q5_K", "Q4_K"])
def test_gguf_dit_matches_diffusers_on_dequantized_weights(tmp_path, quant):
    big = L.diffusers_dit(16, heads=2, head_dim=128, ffn=256)  # rows of 256: K-quant super-blocks fit
    wan = L.wan_state(big)
    path = tmp_path / f"wan2.1-t2v-14b-{quant}.gguf"
    deq = L.write_gguf(path, wan, quant)
    reader = gguf.GGUFReader(str(path))
    types = {t.tensor_type.name for t in reader.tensors}
    assert quant in types and "F16" in types and "F32" in types  # mixed, as published
    assert read_shapes(path)["patch_embedding.weight"] == (256, 16, 1, 2, 2)

    model = load_transformer(path)
    reference = L.set_wan_state(L.diffusers_dit(16, heads=2, head_dim=128, ffn=256), deq)
    _dit_parity(model, reference, 16)
    if quant == "Q8_0":  # and close to the weights it was quantized from
        assert L.cos(L.ours_out(model, 16), L.diffusers_out(big, 16)) > 0.999


def test_gguf_a14b_expert_with_prefix(refs, tmp_path):
    """QuantStack's Wan2.2 A14B experts, keys under model.diffusion_model. (in_dim 36)."""
    wan = {"model.diffusion_model." + k: v for k, v in L.wan_state(refs.i2v_high).items()}
    path = tmp_path / "HighNoise" / "Wan2.2-I2V-A14B-HighNoise-Q8_0.gguf"
    path.parent.mkdir()
    deq = L.write_gguf(path, wan, "Q8_0")
    reference = L.set_wan_state(L.diffusers_dit(36), {k[len("model.diffusion_model."):]: v for k, v in deq.items()})
    _dit_parity(load_transformer(path), reference, 36)


# 3. umT5 ------------------------------------------------------------------------------------------------
def test_comfy_umt5_fp16_with_embedded_tokenizer(refs, text_ref, tmp_path):
    sd = {k: v.half() for k, v in L.hf_encoder_state(refs.umt5).items()}
    sd["spiece_model"] = torch.frombuffer(bytearray(refs.spiece.read_bytes()), dtype=torch.uint8)
    save_file(sd, str(tmp_path / "umt5_xxl_fp16.safetensors"))
    enc = load_text_encoder(tmp_path / "umt5_xxl_fp16.safetensors")  # nothing next to it: the embedded one
    assert enc.tokenizer.model_path is None
    L.assert_text_parity(enc.encode(L.PROMPTS), *text_ref)


def test_comfy_umt5_fp8_scaled(refs, tmp_path):
    hf = L.hf_encoder_state(refs.umt5)
    file, deq = L.fp8_scaled(hf, pick=lambda k, v: k.startswith("encoder.block.") and v.dim() == 2
                             and "relative_attention_bias" not in k, scale_shape=(1,))
    file["spiece_model"] = torch.frombuffer(bytearray(refs.spiece.read_bytes()), dtype=torch.uint8)
    save_file(file, str(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"))
    enc = load_text_encoder(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    full = L.hf_umt5_full()
    full.load_state_dict({**full.state_dict(), **{k: v for k, v in deq.items()},
                          "encoder.embed_tokens.weight": deq["shared.weight"]})
    L.assert_text_parity(enc.encode(L.PROMPTS), *L.umt5_reference(full, refs.spiece))


def test_wan_t5_pth_in_plain_fp8(refs, tmp_path):
    wan = L.hf_to_wan(L.hf_encoder_state(refs.umt5))
    file, deq = L.fp8_plain(wan, pick=lambda k, v: k.startswith("blocks.") and v.dim() == 2 and "pos_embedding" not in k)
    torch.save(file, tmp_path / "models_t5_umt5-xxl-enc-fp8.pth")
    enc = load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-fp8.pth", tokenizer=refs.spiece)
    assert torch.equal(enc.model.blocks[0].attn.q.weight, deq["blocks.0.attn.q.weight"])


def test_tokenizer_json_only_gives_sentencepiece_ids(refs, tmp_path):
    folder = L.tokenizer_json_folder(refs.spiece, tmp_path / "tokenizer")
    assert not (folder / "spiece.model").exists()
    strings = [*L.PROMPTS, "  Two   cats\tplay ", "Quick zebras & 7 jumpy wolves: [x] {y} a+b=c!", ""]
    fast, slow = UMT5Tokenizer(folder)(strings), UMT5Tokenizer(refs.spiece)(strings)
    assert torch.equal(fast.input_ids, slow.input_ids) and torch.equal(fast.attention_mask, slow.attention_mask)
    assert (UMT5Tokenizer(folder).pad_id, UMT5Tokenizer(folder).eos_id) == (0, 1)


def test_google_umt5_xxl_main_branch_from_the_hub_cache(refs, text_ref, tmp_path, monkeypatch):
    """google/umt5-xxl as its main branch publishes it (full UMT5, sharded pytorch_model-*.bin + index),
    read from the huggingface_hub cache; its tokenizer is only a tokenizer.json there."""
    snap = L.hub_cache_umt5(tmp_path / "hub", refs.spiece, refs.umt5, json_only=True)
    assert sorted(p.name for p in snap.glob("pytorch_model*")) == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"]
    assert any(k.startswith("decoder.") for k in read_shapes(snap))
    L.assert_text_parity(load_text_encoder(snap).encode(L.PROMPTS), *text_ref)
    # A Wan .pth with no tokenizer beside it: google/umt5-xxl from the hub cache, as TurboDiffusion does.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.save({k: v.to(torch.bfloat16) for k, v in L.hf_to_wan(L.hf_encoder_state(refs.umt5)).items()},
               tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    enc = load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    assert enc.tokenizer.model_path == snap / "tokenizer.json"
    L.assert_text_parity(enc.encode(L.PROMPTS), *text_ref)


def test_gguf_umt5_encoder(refs, text_ref, tmp_path):
    """city96's umt5-xxl-encoder GGUF: llama.cpp T5 names."""
    names = {"shared.weight": "token_embd.weight", "encoder.final_layer_norm.weight": "enc.output_norm.weight"}
    parts = {"layer.0.SelfAttention.q": "attn_q", "layer.0.SelfAttention.k": "attn_k",
             "layer.0.SelfAttention.v": "attn_v", "layer.0.SelfAttention.o": "attn_o",
             "layer.0.SelfAttention.relative_attention_bias": "attn_rel_b", "layer.0.layer_norm": "attn_norm",
             "layer.1.DenseReluDense.wi_0": "ffn_gate", "layer.1.DenseReluDense.wi_1": "ffn_up",
             "layer.1.DenseReluDense.wo": "ffn_down", "layer.1.layer_norm": "ffn_norm"}
    writer = gguf.GGUFWriter(str(tmp_path / "umt5-xxl-encoder-F16.gguf"), arch="t5encoder")
    for key, value in L.hf_encoder_state(refs.umt5).items():
        if key in names:
            name = names[key]
        else:
            block, rest = key[len("encoder.block."):].split(".", 1)
            name = f"enc.blk.{block}.{parts[rest[: -len('.weight')]]}.weight"
        data = value.float().numpy()
        writer.add_tensor(name, data.astype("float16") if data.ndim == 2 else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    enc = load_text_encoder(tmp_path / "umt5-xxl-encoder-F16.gguf", tokenizer=refs.spiece)
    L.assert_text_parity(enc.encode(L.PROMPTS), *text_ref)


# 4. ComfyUI all-in-one ------------------------------------------------------------------------------------
def test_comfy_all_in_one_checkpoint(refs, text_ref, tmp_path):
    path = L.comfy_all_in_one(refs, tmp_path)
    _dit_parity(load_transformer(path), refs.t2v, 16)
    L.assert_text_parity(load_text_encoder(path).encode(L.PROMPTS), *text_ref)
    video, latents = L.vae_reference(refs.vae)
    with torch.no_grad():
        assert L.cos(load_vae(path).encode(video), latents) >= 0.99999


def test_text_encoder_shapes_are_the_tensors_its_loader_keeps(refs, tmp_path):
    # read_text_encoder_shapes (the memory plan's sizing, from headers) against what the loader holds, for an
    # all-in-one file (DiT, VAE and tokenizer beside it) and a full HF UMT5ForConditionalGeneration file (decoder,
    # LM head, the embedding under both tied names)
    from models.text_encoder_loading import read_text_encoder, read_text_encoder_shapes

    full = {k: v.clone().contiguous() for k, v in refs.umt5.state_dict().items()}
    full["encoder.embed_tokens.weight"] = full["shared.weight"].clone()
    assert any(k.startswith("decoder.") for k in full) and "lm_head.weight" in full
    save_file(full, str(tmp_path / "umt5_full.safetensors"))
    for path in (L.comfy_all_in_one(refs, tmp_path), tmp_path / "umt5_full.safetensors"):
        loaded, _, _, _ = read_text_encoder(path)
        assert read_text_encoder_shapes(path) == {k: tuple(v.shape) for k, v in loaded.items()}, path


# 5. what does not load ------------------------------------------------------------------------------------
def test_unsupported_layouts_name_the_layout_and_what_is_missing(refs, tmp_path):
    wan = L.wan_state(refs.i2v_high)
    clip = dict(wan)
    clip["img_emb.proj.1.weight"] = torch.zeros(64, 1280)
    for i in range(2):
        clip[f"blocks.{i}.cross_attn.k_img.weight"] = torch.zeros(64, 64)
    torch.save(clip, tmp_path / "wan21_i2v.pth")
    with pytest.raises(CheckpointError, match=r"Wan2.1 I2V.*CLIP image branch.*no CLIP image encoder"):
        load_transformer(tmp_path / "wan21_i2v.pth")
    ti2v = L.wan_state(L.diffusers_dit(16))
    ti2v["head.head.weight"] = torch.zeros(48 * 4, 64)
    ti2v["patch_embedding.weight"] = torch.zeros(64, 48, 1, 2, 2)
    torch.save(ti2v, tmp_path / "ti2v5b.pth")
    with pytest.raises(CheckpointError, match=r"TI2V-5B.*Wan2.2 VAE"):
        load_transformer(tmp_path / "ti2v5b.pth")
    vace = dict(L.wan_state(refs.t2v), **{"vace_blocks.0.before_proj.weight": torch.zeros(64, 64)})
    torch.save(vace, tmp_path / "vace.pth")
    with pytest.raises(CheckpointError, match="VACE"):
        load_transformer(tmp_path / "vace.pth")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF not really")
    with pytest.raises(CheckpointError, match="GGUF"):
        load_transformer(bad)


def test_shared_copy_of_hf_folder_without_tokenizer_says_where_it_looked(refs, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    torch.save(L.hf_to_wan(L.hf_encoder_state(refs.umt5)), tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    with pytest.raises(FileNotFoundError, match="google/umt5-xxl in the Hugging Face cache"):
        load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.rmtree(tmp_path / "empty-hub", ignore_errors=True)

"""Bench: umT5-XXL text encoding on one GPU (random weights), and agreement with transformers.

    python -m models.bench_t5 [--batch 2] [--tokens 120] [--dtype bfloat16|float32] [--no-hf]

Times, with CUDA events, the encoder on Wan's fixed 512 positions (what Wan does) against
`TextEncoder.encode_ids`, which computes only up to the longest prompt, for both attention
backends; then builds transformers' UMT5EncoderModel with the same weights and reports the cosine
similarity of the valid positions (both in the chosen dtype).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from models.t5 import UMT5Config, UMT5Encoder
from models.text_encoder_loading import _HF_BLOCK_RENAMES, TextEncoder


def _time_ms(fn, warmup: int = 3, iters: int = 10) -> float:
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inverse = {v: k for k, v in _HF_BLOCK_RENAMES.items()}
    out = {
        "shared.weight": sd["token_embedding.weight"],
        "encoder.embed_tokens.weight": sd["token_embedding.weight"],
        "encoder.final_layer_norm.weight": sd["norm.weight"],
    }
    for key, value in sd.items():
        if key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            out[f"encoder.block.{idx}.{inverse[rest]}"] = value
    return out


def bench(batch: int, tokens: int, check_hf: bool, dtype: torch.dtype) -> None:
    cfg = UMT5Config.from_name("umt5-xxl")
    dev = torch.device("cuda")
    model = UMT5Encoder.random(cfg, seed=0, dtype=dtype, device=dev)
    lengths = torch.tensor([max(tokens - 37 * i, 1) for i in range(batch)], device=dev)
    gen = torch.Generator(device=dev).manual_seed(1)
    ids = torch.randint(3, cfg.vocab_size, (batch, 512), device=dev, generator=gen)
    mask = (torch.arange(512, device=dev)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0
    print(f"{torch.cuda.get_device_name()}  umT5-XXL {dtype}  batch {batch}  lengths {lengths.tolist()}")

    for backend in ("math", "sdpa"):
        enc = TextEncoder(model, tokenizer=None, attn_backend=backend)  # type: ignore[arg-type]
        with torch.inference_mode():
            full = _time_ms(lambda enc=enc: model(ids, mask, attn_backend=enc.attn_backend))
            trimmed = _time_ms(lambda enc=enc: enc.encode_ids(ids, mask))
        print(f"  {backend:4s}: all 512 positions {full:7.2f} ms | trimmed to longest {trimmed:7.2f} ms")

    if not check_hf:
        return
    import transformers

    hf_cfg = transformers.UMT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance, layer_norm_epsilon=cfg.eps,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )  # fmt: skip
    with torch.device("meta"):
        hf = transformers.UMT5EncoderModel(hf_cfg)
    hf.load_state_dict(_to_hf(model.state_dict()), assign=True)
    hf = hf.eval()
    assert all(p.device.type == "cuda" for p in hf.parameters())
    enc = TextEncoder(model, tokenizer=None)  # type: ignore[arg-type]
    with torch.inference_mode():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = enc.encode_ids(ids, mask)
        hf_ms = _time_ms(lambda: hf(input_ids=ids, attention_mask=mask), warmup=1, iters=3)
    for i, n in enumerate(lengths.tolist()):
        cos = F.cosine_similarity(ours[i, :n].float(), ref[i, :n].float(), dim=-1)
        print(f"  prompt {i}: cosine vs transformers min {cos.min():.6f} mean {cos.mean():.6f}")
    print(f"  transformers UMT5EncoderModel, all 512 positions: {hf_ms:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=120, help="token count of the longest prompt")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args()
    bench(args.batch, args.tokens, not args.no_hf, getattr(torch, args.dtype))


if __name__ == "__main__":
    main()

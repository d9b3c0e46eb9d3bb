"""3×3×3 convolution to a few output channels (the Wan VAE decoder's RGB head: 96 -> 3), direct.

cuDNN runs the head's conv3d (C_out = 3) at ~24 TFLOP/s on an H200, 2.6 ms per 12-frame 480p chunk,
~21 ms of a 480p decode (kernels/NOTES_vae.md): its implicit-GEMM tiles are ≥ 32 output channels wide.
Here each program computes the C_out (≤ 16) channels of BLOCK_W pixels of one output row, as 27 taps ×
ceil(C_in / BLOCK_C) small tensor-core dots of [BLOCK_W, BLOCK_C] input by [BLOCK_C, 16] weights
(output channels zero-padded to 16), fp32 accumulation, bias added once:

    out[b, o, t, h, w] = bias[o] + sum_{c, i, j, k} x[b, c, t + i, h + j - 1, w + k - 1] · weight[o, c, i, j, k]

x is the causal conv's time-padded input: [B, C_in, T + 2, H, W] (the two frames before the chunk
first), any strides with the channel stride 1 (channels-last-3d, as the VAE's fast path keeps it);
spatial zero padding of 1 is implied (masked loads). out [B, C_out, T, H, W] in x's dtype,
channels-last-3d. Reference: Wan2.1 ``wan/modules/vae.py`` (Decoder3d.head, CausalConv3d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

__all__ = ["reference", "conv3d_few_out", "MAX_OUT", "bench"]

MAX_OUT = 16  # output channels padded to one 16-wide dot tile


# 1. reference ----------------------------------------------------------------------------------------
def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain-PyTorch definition (in x's dtype): conv3d over the time-padded x, spatial padding 1."""
    return F.conv3d(x, weight, bias, padding=(0, 1, 1))


# 2. kernel --------------------------------------------------------------------------------------------
@triton.jit
def _conv3d_few_out_kernel(
    # pointers
    x_ptr,  # [B, C, T + 2, H, W], channel stride 1
    w_ptr,  # [27, C_PAD, 16] packed weights (tap-major, zero-padded), x's dtype
    b_ptr,  # [16] fp32 bias (zeros past C_out)
    out_ptr,  # [B, C_out, T, H, W]
    # sizes
    C,
    T,
    H,
    W,
    C_OUT,
    sx_b,
    sx_t,
    sx_h,
    sx_w,
    so_b,
    so_c,
    so_t,
    so_h,
    so_w,
    # meta
    C_PAD: tl.constexpr,  # C rounded up to BLOCK_C
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # 1. this program: output row h of frame t of batch b, pixels w0 .. w0 + BLOCK_W
    pw = tl.program_id(0)
    h = tl.program_id(1)
    bt = tl.program_id(2)
    b = bt // T
    t = bt % T
    ws = pw * BLOCK_W + tl.arange(0, BLOCK_W)  # [BLOCK_W]
    cs = tl.arange(0, BLOCK_C)  # [BLOCK_C]
    os_ = tl.arange(0, 16)  # [16]
    acc = tl.zeros([BLOCK_W, 16], dtype=tl.float32)
    x_b = x_ptr + b.to(tl.int64) * sx_b

    # 2. 27 taps × channel blocks: [BLOCK_W, BLOCK_C] input (masked at the borders) @ [BLOCK_C, 16] weights
    for tap in tl.static_range(27):
        i = tap // 9
        j = (tap // 3) % 3
        k = tap % 3
        hh = h + j - 1
        wi = ws + k - 1  # [BLOCK_W]
        hv = wi * 0 + hh  # the row as a vector: a 0-d mask term trips the CPU interpreter's load
        ok_w = (wi >= 0) & (wi < W) & (hv >= 0) & (hv < H)
        row = x_b + (t + i).to(tl.int64) * sx_t + hh.to(tl.int64) * sx_h
        for c0 in tl.static_range(0, C_PAD, BLOCK_C):
            cc = c0 + cs
            xt = tl.load(row + wi[:, None].to(tl.int64) * sx_w + cc[None, :],
                         mask=ok_w[:, None] & (cc < C)[None, :], other=0.0)  # [BLOCK_W, BLOCK_C]
            wt = tl.load(w_ptr + (tap * C_PAD + cc[:, None]) * 16 + os_[None, :])  # [BLOCK_C, 16]
            acc = tl.dot(xt, wt, acc)

    # 3. bias, store the C_out real channels
    acc += tl.load(b_ptr + os_)[None, :]
    out = out_ptr + b.to(tl.int64) * so_b + t.to(tl.int64) * so_t + h.to(tl.int64) * so_h
    ptrs = out + ws[:, None].to(tl.int64) * so_w + os_[None, :].to(tl.int64) * so_c
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=(ws < W)[:, None] & (os_ < C_OUT)[None, :])


# 3. wrapper -------------------------------------------------------------------------------------------
def pack_weight(weight: torch.Tensor, block_c: int = 32) -> torch.Tensor:
    """[C_out, C, 3, 3, 3] -> [27, C_pad, 16] (tap-major, zero-padded), the kernel's weight layout."""
    c_out, c = weight.shape[:2]
    c_pad = triton.cdiv(c, block_c) * block_c
    packed = weight.new_zeros(27, c_pad, MAX_OUT)
    packed[:, :c, :c_out] = weight.permute(2, 3, 4, 1, 0).reshape(27, c, c_out)
    return packed


def conv3d_few_out(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   packed: torch.Tensor | None = None) -> torch.Tensor:
    """3×3×3 conv of the time-padded x [B, C, T + 2, H, W] (channel stride 1) to weight's C_out ≤ 16
    channels, spatial padding 1 -> [B, C_out, T, H, W] channels-last-3d in x's dtype. packed:
    `pack_weight(weight)` cast to x's dtype, if the caller keeps it (else packed here)."""
    if x.dim() != 5 or weight.dim() != 5 or tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"need x [B, C, T+2, H, W] and a 3×3×3 weight, got {tuple(x.shape)}, {tuple(weight.shape)}")
    B, C, Tp, H, W = x.shape
    c_out = weight.shape[0]
    if weight.shape[1] != C or c_out > MAX_OUT or Tp < 3:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit x {tuple(x.shape)} (C_out ≤ {MAX_OUT}, T + 2 ≥ 3)")
    if x.stride(1) != 1:
        raise ValueError(f"x needs channel stride 1 (channels-last-3d), got strides {x.stride()}")
    block_c = 32 if C >= 32 else 16
    if packed is None:
        packed = pack_weight(weight, block_c).to(x.dtype)
    c_pad = packed.shape[1]
    bias16 = torch.zeros(MAX_OUT, device=x.device, dtype=torch.float32)
    if bias is not None:
        bias16[:c_out] = bias.float()
    T = Tp - 2
    out = torch.empty((B, c_out, T, H, W), device=x.device, dtype=x.dtype, memory_format=torch.channels_last_3d)
    if out.numel() == 0:
        return out
    block_w = 64 if x.is_cuda else 32  # the interpreter: fewer, wider programs
    grid = (triton.cdiv(W, block_w), H, B * T)
    _conv3d_few_out_kernel[grid](
        x, packed, bias16, out,
        C, T, H, W, c_out,
        x.stride(0), x.stride(2), x.stride(3), x.stride(4),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3), out.stride(4),
        C_PAD=c_pad, BLOCK_W=block_w, BLOCK_C=block_c,
        **({"num_warps": 4} if x.is_cuda else {}),
    )  # fmt: skip
    return out


# 4. bench ---------------------------------------------------------------------------------------------
def bench(frames: int = 12, height: int = 480, width: int = 832, c_in: int = 96) -> dict:
    """CUDA: the kernel vs cuDNN's conv3d at the VAE head's shape (one 12-frame 480p chunk, bf16)."""
    from triton.testing import do_bench

    x = torch.randn(1, c_in, frames + 2, height, width, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    weight = (torch.randn(3, c_in, 3, 3, 3, device="cuda") / (27 * c_in) ** 0.5).to(torch.bfloat16)
    bias = torch.randn(3, device="cuda", dtype=torch.bfloat16)
    weight_cl = weight.contiguous(memory_format=torch.channels_last_3d)
    packed = pack_weight(weight).to(torch.bfloat16)
    ours = conv3d_few_out(x, weight, bias, packed)
    ref = reference(x.double(), weight.double(), bias.double())
    cos = F.cosine_similarity(ours.double().flatten(), ref.flatten(), dim=0).item()
    t_cudnn = do_bench(lambda: reference(x, weight_cl, bias), return_mode="median")
    t_ours = do_bench(lambda: conv3d_few_out(x, weight, bias, packed), return_mode="median")
    row = {"shape": [1, c_in, frames + 2, height, width], "cudnn_ms": t_cudnn, "ours_ms": t_ours,
           "speedup": t_cudnn / t_ours, "cos_fp64": cos}  # fmt: skip
    print(f"conv3d {c_in}->3 x {tuple(x.shape)}: cuDNN {t_cudnn:.3f} ms, ours {t_ours:.3f} ms "
          f"({t_cudnn / t_ours:.2f}x), cos vs fp64 {cos:.6f}")  # fmt: skip
    return row


if __name__ == "__main__":
    bench()

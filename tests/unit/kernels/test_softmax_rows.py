"""softmax_rows (the VAE attention's fp32 scores -> 16-bit probabilities) vs its definition (CPU: interpreter)."""

from __future__ import annotations

import pytest
import torch

from kernels.softmax_rows import MAX_COLS, reference, softmax_rows


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n_cols", [1, 5, 128, 300, 2049])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_matches_the_fp32_softmax(n_cols: int, out_dtype: torch.dtype) -> None:
    torch.manual_seed(n_cols)
    wide = torch.randn(2, 3, n_cols + 7, device=_device()) * 6  # rows with a stride beyond their length
    s = wide[..., :n_cols]
    scale = 0.37
    p = softmax_rows(s, scale, out_dtype=out_dtype)
    assert p.shape == s.shape and p.dtype == out_dtype
    want = reference(s, scale, torch.float32)
    if out_dtype == torch.float32:
        torch.testing.assert_close(p, want, rtol=1e-5, atol=1e-7)
    else:  # one rounding to bf16 (the interpreter rounds toward zero): within one ulp
        torch.testing.assert_close(p.float(), want, rtol=2**-7, atol=1e-9)
    torch.testing.assert_close(p.float().sum(-1), torch.ones(2, 3, device=_device()), rtol=0, atol=n_cols * 2**-8)
    # the row's largest score gets the largest probability, and a shift of the whole row changes nothing
    assert torch.equal(p.float().argmax(-1), s.argmax(-1)) or n_cols == 1
    torch.testing.assert_close(softmax_rows(s + 11.0, scale, out_dtype=torch.float32), want, rtol=1e-5, atol=1e-7)


def test_writes_into_out_and_rejects_bad_layouts() -> None:
    s = torch.randn(4, 33, device=_device())
    out = torch.empty(4, 33, dtype=torch.bfloat16, device=_device())
    assert softmax_rows(s, 1.0, out=out) is out
    torch.testing.assert_close(out.float(), reference(s, 1.0, torch.float32), rtol=2**-7, atol=1e-9)
    with pytest.raises(ValueError, match="unit stride"):
        softmax_rows(s.t(), 1.0)
    with pytest.raises(ValueError, match="out must be"):
        softmax_rows(s, 1.0, out=torch.empty(4, 32, device=_device()))
    with pytest.raises(ValueError, match="rows of"):
        softmax_rows(torch.zeros(1, MAX_COLS + 1, device=_device()), 1.0)

"""umT5 tokenizer (sentencepiece directly) vs transformers' T5 tokenizers on the same spiece.model."""

from __future__ import annotations

import shutil

import pytest
import torch

from models.tiny_tokenizer import build_tiny_tokenizer
from models.tokenizer import UMT5Tokenizer, clean_prompt, find_tokenizer

STRINGS = [
    "A red fox runs across a snowy field at dawn.",
    "  Two   cats\tplay\n\nwith a ball of yarn  ",
    "Quick zebras & 7 jumpy wolves: [x] {y} a+b=c, 100% right!",
    "Unknown letters QJW and symbols © ™ ü",
    "",
    " ".join(["mountains covered with snow"] * 200),  # > 511 pieces: truncated, EOS kept
]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_tiny_tokenizer_is_deterministic_with_t5_special_ids(spiece, tmp_path):
    again = build_tiny_tokenizer(tmp_path)
    assert again.name == "spiece.model"
    assert again.read_bytes() == spiece.read_bytes()
    tok = UMT5Tokenizer(spiece)
    assert (tok.pad_id, tok.eos_id, tok.sp.unk_id()) == (0, 1, 2)
    assert 300 < tok.vocab_size <= 1000


@pytest.mark.parametrize("cls_name", ["T5Tokenizer", "T5TokenizerFast"])
def test_matches_transformers(spiece, cls_name):
    transformers = pytest.importorskip("transformers")
    hf = getattr(transformers, cls_name).from_pretrained(str(spiece.parent))
    ours = UMT5Tokenizer(spiece.parent)(STRINGS)
    # Wan cleans the text before handing it to the HF tokenizer.
    ref = hf(
        [clean_prompt(s) for s in STRINGS],
        padding="max_length",
        truncation=True,
        max_length=512,
        return_tensors="pt",
    )
    assert ours.input_ids.shape == (len(STRINGS), 512)
    assert torch.equal(ours.input_ids, ref["input_ids"])
    assert torch.equal(ours.attention_mask, ref["attention_mask"])


def test_eos_padding_and_truncation(spiece):
    tok = UMT5Tokenizer(spiece)
    batch = tok(STRINGS)
    lengths = batch.lengths.tolist()
    for row, n in zip(batch.input_ids, lengths, strict=True):
        assert row[n - 1] == tok.eos_id
        assert torch.all(row[n:] == tok.pad_id)
        assert tok.eos_id not in row[: n - 1].tolist()
    assert lengths[4] == 1  # "" -> just EOS
    assert lengths[5] == 512  # truncated to 511 pieces + EOS
    assert tok.sp.DecodeIds(batch.input_ids[0, : lengths[0] - 1].tolist()) == STRINGS[0]
    short = UMT5Tokenizer(spiece, max_length=8)(STRINGS[0])
    assert short.input_ids.shape == (1, 8) and short.input_ids[0, -1] == tok.eos_id


def test_clean_prompt():
    assert clean_prompt("  a \t b\n\nc  ") == "a b c"
    assert clean_prompt("fish &amp;amp; chips") == "fish & chips"  # unescaped twice, like Wan


def test_finds_spiece_in_hf_layouts_and_errors(spiece, tmp_path):
    assert find_tokenizer(spiece) == spiece
    assert find_tokenizer(spiece.parent) == spiece
    (tmp_path / "root" / "tokenizer").mkdir(parents=True)
    shutil.copy(spiece, tmp_path / "root" / "tokenizer" / "spiece.model")
    assert find_tokenizer(tmp_path / "root") == tmp_path / "root" / "tokenizer" / "spiece.model"
    (tmp_path / "fast_only").mkdir()
    (tmp_path / "fast_only" / "tokenizer.json").write_text("{}")
    assert find_tokenizer(tmp_path / "fast_only") == tmp_path / "fast_only" / "tokenizer.json"
    with pytest.raises(ValueError, match="not a tokenizers tokenizer.json"):
        UMT5Tokenizer(tmp_path / "fast_only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        find_tokenizer(tmp_path / "empty")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        UMT5Tokenizer(tmp_path / "junk.model")

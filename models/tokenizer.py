"""The umT5 tokenizer: sentencepiece with the semantics of HF `google/umt5-xxl` as Wan calls it.

Wan tokenizes with `HuggingfaceTokenizer(seq_len=512, clean="whitespace")`: each prompt is cleaned
(ftfy fix when ftfy is installed, HTML entities unescaped twice, whitespace runs collapsed to one
space, stripped), encoded, cut to 511 pieces, `</s>` appended, and padded with `<pad>` to 512.
Here the same is done with the `sentencepiece` package directly (no transformers at runtime).

Known difference: HF treats the literal text `<extra_id_N>` in a prompt as one special token; this
tokenizer splits it like any other text. Prompts do not contain sentinel tokens.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch

SPIECE_NAME = "spiece.model"
DEFAULT_MAX_LENGTH = 512

try:  # Wan runs ftfy.fix_text first; for ordinary prompts it is the identity.
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy = None


def clean_prompt(text: str) -> str:
    """Wan's clean="whitespace": fix mojibake (ftfy), unescape HTML twice, collapse whitespace."""
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def find_spiece(path: str | Path) -> Path:
    """The sentencepiece model at `path`: a `.model` file, or a folder holding `spiece.model`
    (HF layout) directly or in a `tokenizer/` subfolder."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / SPIECE_NAME, path / "tokenizer" / SPIECE_NAME):
        if candidate.is_file():
            return candidate
    hint = (
        " (only tokenizer.json there; spiece.model is needed)" if (path / "tokenizer.json").exists() else ""
    )
    raise FileNotFoundError(
        f"no sentencepiece model at {path}: expected a .model file or {SPIECE_NAME}{hint}"
    )


@dataclass(frozen=True)
class TokenBatch:
    input_ids: torch.Tensor  # [B, max_length] int64, padded with pad_id
    attention_mask: torch.Tensor  # [B, max_length] int64, 1 for tokens (EOS included), 0 for padding

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)  # [B]


class UMT5Tokenizer:
    """`tok(["a prompt", ...]) -> TokenBatch` padded to `max_length` (512 for Wan)."""

    def __init__(self, path: str | Path, *, max_length: int = DEFAULT_MAX_LENGTH, clean: bool = True):
        self.model_path = find_spiece(path)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.model_path))
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{self.model_path}: not a sentencepiece model ({exc})") from exc
        self.max_length = max_length
        self.clean = clean
        self.pad_id = self._special("<pad>", self.sp.pad_id())
        self.eos_id = self._special("</s>", self.sp.eos_id())

    def _special(self, piece: str, fallback: int) -> int:
        # HF looks special tokens up by their piece; the model's own ids are the fallback.
        idx = self.sp.PieceToId(piece)
        if idx != self.sp.unk_id() or piece == "<unk>":
            return idx
        if fallback < 0:
            raise ValueError(f"{self.model_path}: sentencepiece model has no {piece} piece")
        return fallback

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode_one(self, text: str) -> list[int]:
        """Ids of one prompt: cleaned, cut to max_length - 1 pieces, EOS appended (no padding)."""
        if self.clean:
            text = clean_prompt(text)
        ids = self.sp.EncodeAsIds(text)[: self.max_length - 1]
        return [*ids, self.eos_id]

    def __call__(self, texts: str | list[str]) -> TokenBatch:
        if isinstance(texts, str):
            texts = [texts]
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), self.max_length), dtype=torch.long)
        for i, text in enumerate(texts):
            row = self.encode_one(text)
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return TokenBatch(ids, mask)

"""The umT5 tokenizer: sentencepiece with the semantics of HF `google/umt5-xxl` as Wan calls it.

Wan tokenizes with `HuggingfaceTokenizer(seq_len=512, clean="whitespace")`: each prompt is cleaned
(ftfy fix when ftfy is installed, HTML entities unescaped twice, whitespace runs collapsed to one
space, stripped), encoded, cut to 511 pieces, `</s>` appended, and padded with `<pad>` to 512.
Here the same is done without transformers at runtime, from whichever form the tokenizer comes in:

- `spiece.model` (sentencepiece; Wan's `google/umt5-xxl/` folder, HF folders, our canonical folder);
- `tokenizer.json` alone (what current transformers saves; read with the `tokenizers` library, which
  gives the same ids as sentencepiece for this Unigram model);
- the bytes of a sentencepiece model (ComfyUI embeds them in its umT5 files as the `spiece_model`
  uint8 tensor).

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
TOKENIZER_JSON = "tokenizer.json"
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


def find_tokenizer(path: str | Path) -> Path:
    """The tokenizer file at `path`: a `.model` / `tokenizer.json` file, or a folder holding
    `spiece.model` (preferred) or `tokenizer.json`, directly or in a `tokenizer/` subfolder."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path, path / "tokenizer"):
        for name in (SPIECE_NAME, TOKENIZER_JSON):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"no tokenizer at {path}: expected a .model or tokenizer.json file, or a folder with "
        f"{SPIECE_NAME} or {TOKENIZER_JSON}"
    )


@dataclass(frozen=True)
class TokenBatch:
    input_ids: torch.Tensor  # [B, max_length] int64, padded with pad_id
    attention_mask: torch.Tensor  # [B, max_length] int64, 1 for tokens (EOS included), 0 for padding

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)  # [B]


class UMT5Tokenizer:
    """`tok(["a prompt", ...]) -> TokenBatch` padded to `max_length` (512 for Wan).

    `source`: a spiece.model / tokenizer.json file or a folder holding one (see `find_tokenizer`), or
    the bytes of a sentencepiece model.
    """

    def __init__(self, source: str | Path | bytes, *, max_length: int = DEFAULT_MAX_LENGTH, clean: bool = True):
        self.max_length = max_length
        self.clean = clean
        self.model_path: Path | None = None
        self.sp: spm.SentencePieceProcessor | None = None
        self._fast = None  # tokenizers.Tokenizer
        if isinstance(source, bytes | bytearray):
            self.sp = spm.SentencePieceProcessor()
            try:
                self.sp.LoadFromSerializedProto(bytes(source))
            except (OSError, RuntimeError) as exc:
                raise ValueError(f"embedded tokenizer: not a sentencepiece model ({exc})") from exc
        else:
            self.model_path = find_tokenizer(source)
            if self.model_path.suffix == ".json":
                self._fast = _load_tokenizer_json(self.model_path)
            else:
                self.sp = spm.SentencePieceProcessor()
                try:
                    self.sp.Load(str(self.model_path))
                except (OSError, RuntimeError) as exc:
                    raise ValueError(f"{self.model_path}: not a sentencepiece model ({exc})") from exc
        self.pad_id = self._special("<pad>", self.sp.pad_id() if self.sp is not None else -1)
        self.eos_id = self._special("</s>", self.sp.eos_id() if self.sp is not None else -1)

    def _special(self, piece: str, fallback: int) -> int:
        # HF looks special tokens up by their piece; the model's own ids are the fallback.
        if self._fast is not None:
            idx = self._fast.token_to_id(piece)
            if idx is None:
                raise ValueError(f"{self.model_path}: tokenizer has no {piece} token")
            return idx
        assert self.sp is not None
        idx = self.sp.PieceToId(piece)
        if idx != self.sp.unk_id() or piece == "<unk>":
            return idx
        if fallback < 0:
            raise ValueError(f"{self.model_path or 'embedded tokenizer'}: sentencepiece model has no {piece} piece")
        return fallback

    @property
    def vocab_size(self) -> int:
        if self._fast is not None:
            return self._fast.get_vocab_size()
        assert self.sp is not None
        return self.sp.GetPieceSize()

    def serialized_spiece(self) -> bytes | None:
        """The sentencepiece model's bytes (None for a tokenizer.json tokenizer)."""
        return None if self.sp is None else self.sp.serialized_model_proto()

    def _pieces(self, text: str) -> list[int]:
        if self._fast is not None:
            return list(self._fast.encode(text, add_special_tokens=False).ids)
        assert self.sp is not None
        return self.sp.EncodeAsIds(text)

    def encode_one(self, text: str) -> list[int]:
        """Ids of one prompt: cleaned, cut to max_length - 1 pieces, EOS appended (no padding)."""
        if self.clean:
            text = clean_prompt(text)
        ids = self._pieces(text)[: self.max_length - 1]
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


def _load_tokenizer_json(path: Path):  # noqa: ANN202 - a tokenizers.Tokenizer
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError(
            f"{path}: a tokenizer.json needs the `tokenizers` package (pip install tokenizers)"
        ) from exc
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception type
        raise ValueError(f"{path}: not a tokenizers tokenizer.json ({exc})") from exc

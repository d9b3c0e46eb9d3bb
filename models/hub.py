"""Hugging Face Hub: downloading a model's published files, and finding the umT5 tokenizer in the cache.

`download(model_id, downloads, dest)` fetches each (repo, file patterns) pair of a catalog card's
`downloads` into `dest/<repo name>/`, exactly as the repos publish them (TurboDiffusion's `.pth` files,
Wan's `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth` and `google/umt5-xxl/`), and returns the
`--checkpoint` arguments that load them: one folder per repo (`checkpoint_args`). A pattern may hold
`{q}`: `-quant` by default (TurboDiffusion's int8 W8A8 files), empty with `full_precision=True`.

`cached_tokenizer()` is where TurboDiffusion's scripts leave the tokenizer: `AutoTokenizer.from_pretrained(
"google/umt5-xxl")` stores it in the huggingface_hub cache. Looking there reads no network and no
environment variable of ours (huggingface_hub resolves its own cache folder).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

TOKENIZER_REPO = "google/umt5-xxl"
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")

Downloads = Sequence[tuple[str, Sequence[str]]]  # (hf repo id, file patterns), as on a catalog card


def cached_tokenizer(repo_id: str = TOKENIZER_REPO, *, cache_dir: str | Path | None = None) -> Path | None:
    """`spiece.model` (else `tokenizer.json`) of `repo_id` in the huggingface_hub cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    for name in TOKENIZER_FILES:
        found = try_to_load_from_cache(repo_id, name, cache_dir=None if cache_dir is None else str(cache_dir))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _files(patterns: Iterable[str], full_precision: bool) -> list[str]:
    q = "" if full_precision else "-quant"
    return [p.format(q=q) for p in patterns]


def checkpoint_args(model_id: str, downloads: Downloads, dest: str | Path) -> list[str]:
    """The `--checkpoint` arguments for what `download` put under `dest`: one folder per repo (role
    resolution finds every component in them, whatever order they are given in)."""
    if not downloads:
        raise ValueError(f"{model_id} has no published checkpoints to download")
    dest = Path(dest)
    out: list[str] = []
    for repo, _ in downloads:
        folder = str(dest / repo.split("/")[-1])
        if folder not in out:
            out.append(folder)
    return out


def download(
    model_id: str, downloads: Downloads, dest: str | Path, *, full_precision: bool = False
) -> list[str]:
    """Download `model_id`'s published files into `dest/<repo name>/`; return the `--checkpoint` args.

    `downloads` is the catalog card's list of (repo, file patterns); `{q}` in a pattern becomes
    `-quant` (or nothing with `full_precision`). Files already there are not fetched again.
    """
    from huggingface_hub import snapshot_download

    dest = Path(dest)
    for repo, patterns in downloads:
        snapshot_download(
            repo_id=repo, allow_patterns=_files(patterns, full_precision), local_dir=dest / repo.split("/")[-1]
        )
    return checkpoint_args(model_id, downloads, dest)

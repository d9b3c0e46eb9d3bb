"""Fixtures shared by the model tests: the tiny checkpoints and their pipeline (one of each per module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.pipeline import load_pipeline
from models.tiny import ensure_tiny_checkpoints


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return ensure_tiny_checkpoints(tmp_path_factory.mktemp("ckpt") / "wan-tiny")


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    return load_pipeline("wan-tiny", [tiny_dir])

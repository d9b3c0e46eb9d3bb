"""`turbovid generate --help` lists the model ids (with kind, sizes, clip length) and explains every option."""

from __future__ import annotations

import argparse

from cli.main import build_parser
from contract.catalog import MODELS


def _generate_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["generate"]


def test_help_lists_every_model_and_explains_every_option() -> None:
    gen = _generate_parser()
    table = gen.format_help().split("\nmodels:\n")[1].splitlines()
    for model_id, card in MODELS.items():
        line = next(line for line in table if line.strip().startswith(model_id + " "))
        assert ("image-to-video" if card.kind == "i2v" else "text-to-video") in line
        assert f"{card.max_seconds:g} s" in line
    undocumented = [a.option_strings for a in gen._actions if a.option_strings and not a.help]
    assert not undocumented, undocumented

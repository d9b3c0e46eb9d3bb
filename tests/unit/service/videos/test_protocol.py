"""The create body is built from GenerationParams' own field definitions: one set of ranges."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.jobs import GenerationParams
from service.videos.protocol import CreateVideoBody


@pytest.mark.parametrize("knob", GenerationParams.CLIENT_KNOBS)
def test_every_knob_is_the_generation_params_field(knob: str) -> None:
    ours, theirs = CreateVideoBody.model_fields[knob], GenerationParams.model_fields[knob]
    assert ours.annotation == theirs.annotation and ours.metadata == theirs.metadata
    assert ours.default == theirs.default and ours.is_required() == theirs.is_required()


@pytest.mark.parametrize(("knob", "bad"), [("num_steps", 0), ("num_steps", 101), ("seed", -1), ("sla_topk", 0.0),
                                          ("sla_topk", 1.5), ("guidance_scale", 31.0), ("sampler", "euler"),
                                          ("sigma_max", 0.0), ("prompt", "")])
def test_out_of_range_knobs_fail_on_the_body_exactly_as_on_the_params(knob: str, bad: object) -> None:
    with pytest.raises(ValidationError) as ours:
        CreateVideoBody.model_validate({"prompt": "x", knob: bad})
    assert ours.value.errors()[0]["loc"] == (knob,)
    with pytest.raises(ValidationError):
        GenerationParams.model_validate({"width": 64, "height": 64, "num_frames": 9, "prompt": "x", knob: bad})


def test_knobs_returns_what_the_client_sent_and_unknown_fields_are_refused() -> None:
    body = CreateVideoBody.model_validate({"prompt": "p", "num_steps": 2, "size": "64x64"})
    assert body.knobs() == {"prompt": "p", "negative_prompt": None, "seed": None, "num_steps": 2, "sampler": None,
                            "sigma_max": None, "sla_topk": None, "guidance_scale": None}
    with pytest.raises(ValidationError):
        CreateVideoBody.model_validate({"prompt": "p", "solver": "flow"})  # set by resolve, never by a client

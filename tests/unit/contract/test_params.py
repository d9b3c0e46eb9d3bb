"""GenerationParams: the one definition of what a generation accepts, and its check/resolve rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.catalog import MODELS, SOLVER_STEPS, get_card
from contract.jobs import Capabilities, GenerationParams, JobSpec, ParamError

RCM = Capabilities(solver="rcm", sla=False)
RCM_SLA = Capabilities(solver="rcm", sla=True)
FLOW = Capabilities(solver="flow", sla=False)
TINY = get_card("wan-tiny")


def params(**kw):
    base = dict(prompt="a fox", width=64, height=64, num_frames=9)
    return GenerationParams(**{**base, **kw})


def test_resolve_makes_every_default_concrete_for_rcm():
    p = params().resolve(TINY, RCM)
    assert (p.solver, p.num_steps, p.sampler, p.sigma_max) == ("rcm", 4, "sde", 80.0)
    assert p.seed is not None and 0 <= p.seed < 2**32
    assert p.guidance_scale is None and p.negative_prompt is None
    i2v = params(kind="i2v").resolve(TINY, RCM)  # wan-tiny's pipeline also runs i2v (also_serves)
    assert i2v.sigma_max == 200.0


def test_resolve_keeps_what_the_client_chose():
    p = params(seed=7, num_steps=2, sampler="ode", sigma_max=50.0).resolve(TINY, RCM)
    assert (p.seed, p.num_steps, p.sampler, p.sigma_max) == (7, 2, "ode", 50.0)


def test_flow_solver_defaults_and_knobs():
    p = params(negative_prompt="blurry").resolve(TINY, FLOW)
    assert (p.solver, p.num_steps, p.guidance_scale) == ("flow", SOLVER_STEPS["flow"].default, 5.0)
    assert p.negative_prompt == "blurry" and p.sigma_max is None and p.sampler is None


@pytest.mark.parametrize(("knob", "value"), [("negative_prompt", "x"), ("guidance_scale", 3.0)])
def test_cfg_knobs_are_refused_for_rcm(knob, value):
    with pytest.raises(ParamError) as err:
        params(**{knob: value}).check(TINY, RCM)
    assert err.value.param == knob


@pytest.mark.parametrize(("knob", "value"), [("sigma_max", 10.0), ("sampler", "ode")])
def test_rcm_knobs_are_refused_for_flow(knob, value):
    with pytest.raises(ParamError) as err:
        params(**{knob: value}).check(TINY, FLOW)
    assert err.value.param == knob


def test_sla_topk_needs_sla_workers():
    with pytest.raises(ParamError) as err:
        params(sla_topk=0.2).check(TINY, RCM)
    assert err.value.param == "sla_topk"
    assert params(sla_topk=0.2).resolve(TINY, RCM_SLA).sla_topk == 0.2


def test_steps_follow_the_solver():
    with pytest.raises(ParamError) as err:
        params(num_steps=5).check(TINY, RCM)
    assert err.value.param == "num_steps"
    assert params(num_steps=30).resolve(TINY, FLOW).num_steps == 30


def test_frames_kind_and_solver_are_checked_against_the_card():
    with pytest.raises(ParamError) as err:
        params(num_frames=37).check(TINY, RCM)
    assert err.value.param == "num_frames"
    with pytest.raises(ParamError) as err:
        params(kind="i2v").check(get_card("wan2.1-t2v-1.3b"), RCM)
    assert err.value.param == "kind"
    with pytest.raises(ParamError) as err:  # a spec resolved for flow, taken by an rCM worker
        params(solver="flow").check(TINY, RCM)
    assert err.value.param == "solver"


@pytest.mark.parametrize("bad", [
    {"prompt": "   \n"}, {"prompt": ""}, {"width": 60}, {"seed": -1}, {"sla_topk": 0.0}, {"sla_topk": 1.5},
    {"num_steps": 0}, {"sampler": "euler"}, {"unknown": 1},
])
def test_field_ranges_are_defined_once_here(bad):
    with pytest.raises(ValidationError):
        params(**bad)


def test_job_spec_round_trips_as_json():
    spec = JobSpec(job_id="video_1", owner="dev", model="wan-tiny", params=params().resolve(TINY, RCM),
                   output_key="outputs/video_1.mp4", created_at=1.0)
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.kind == "t2v"


def test_every_card_is_consistent():
    for card in MODELS.values():
        assert card.default_size in card.sizes
        assert (card.default_frames - 1) % 4 == 0 and card.default_frames <= card.max_frames
        assert all(w % 16 == 0 and h % 16 == 0 for w, h in card.sizes)
        assert all(other in MODELS for other in card.also_serves)
        assert card.tiny or card.downloads  # a real model says where its checkpoints come from
    assert get_card("wan-tiny").kinds == ("t2v", "i2v")

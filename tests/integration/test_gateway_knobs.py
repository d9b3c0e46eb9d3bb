"""Every generation knob either changes the output or is refused with a 400 naming it: the gateway decides
from what the model's live workers advertise (WorkerRegistry on real Redis), and puts the resolved
params (concrete defaults) on the queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from gateway_support import KEY_A, advertise_worker, bearer, clean_redis, make_settings
from rq import Queue

from contract.catalog import FLOW_GUIDANCE_DEFAULT, MODELS, SOLVER_STEPS
from contract.jobs import GenerationParams, JobSpec
from contract.queue import RQ_SERIALIZER
from service.app import create_app

A = bearer(KEY_A)
BASE = {"prompt": "a red fox", "size": "64x64", "seconds": "0.5"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with clean_redis():
        settings = make_settings(tmp_path)
        with TestClient(create_app(settings)) as c:
            c.settings = settings  # type: ignore[attr-defined]
            yield c


def _post(c: TestClient, **knobs: object) -> tuple[int, dict]:
    r = c.post("/v1/videos", json={**BASE, **knobs}, headers=A)
    return r.status_code, r.json()


def _queued_params(c: TestClient, video_id: str, model: str = "wan-tiny") -> GenerationParams:
    conn = redis.Redis.from_url(c.settings.redis.url)  # type: ignore[attr-defined]
    try:
        job = Queue(model, connection=conn, serializer=RQ_SERIALIZER).fetch_job(video_id)
        return JobSpec.model_validate_json(job.args[0]).params
    finally:
        conn.close()


def _refused(c: TestClient, param: str, code: str = "unsupported_param", **knobs: object) -> str:
    status, body = _post(c, **knobs)
    assert status == 400, body
    assert body["error"]["param"] == param and body["error"]["code"] == code
    return str(body["error"]["message"])


def test_rcm_model_without_sla_workers_refuses_cfg_and_sla_knobs(client: TestClient) -> None:
    # no live worker: the catalog's solver (rCM) and no SLA
    assert "flow solver" in _refused(client, "negative_prompt", negative_prompt="blurry")
    assert "flow solver" in _refused(client, "guidance_scale", guidance_scale=5.0)
    assert "SLA attention" in _refused(client, "sla_topk", sla_topk=0.2)
    assert "1-4" in _refused(client, "num_steps", "invalid_request", num_steps=5)
    advertise_worker(client.settings, "dense", attention="dense")  # type: ignore[attr-defined]
    _refused(client, "sla_topk", sla_topk=0.2)  # a live dense worker does not change that
    # out of every solver's range: refused by the field definition itself
    assert _post(client, num_steps=101)[1]["error"]["param"] == "num_steps"
    assert _post(client, sla_topk=1.5)[1]["error"]["param"] == "sla_topk"
    # multipart sends the same knobs as strings; the same rule applies
    r = client.post("/v1/videos", data={**BASE, "guidance_scale": "3"}, headers=A)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "guidance_scale")
    assert _post(client, prompt="   ")[1]["error"]["param"] == "prompt"


def test_rcm_spec_on_the_queue_carries_concrete_defaults(client: TestClient) -> None:
    status, v = _post(client)
    assert status == 201, v
    p = _queued_params(client, v["id"])
    assert (p.solver, p.num_steps, p.sampler, p.sigma_max) == ("rcm", SOLVER_STEPS["rcm"].default, "sde",
                                                               MODELS["wan-tiny"].sigma_max("t2v"))
    assert isinstance(p.seed, int) and p.seed == v["seed"]
    assert (p.negative_prompt, p.guidance_scale, p.sla_topk) == (None, None, None)
    assert (v["solver"], v["num_steps"], v["sampler"]) == ("rcm", 4, "sde")
    # knobs the client set travel unchanged
    status, v = _post(client, num_steps=2, sampler="ode", sigma_max=120.0, seed=11)
    assert status == 201, v
    p = _queued_params(client, v["id"])
    assert (p.num_steps, p.sampler, p.sigma_max, p.seed) == (2, "ode", 120.0, 11)


def test_flow_workers_honour_cfg_knobs_and_refuse_rcm_ones(client: TestClient) -> None:
    advertise_worker(client.settings, "flow-1", solver="flow")  # type: ignore[attr-defined]
    status, v = _post(client, negative_prompt="blurry", guidance_scale=7.5, num_steps=30)
    assert status == 201, v
    p = _queued_params(client, v["id"])
    assert (p.solver, p.negative_prompt, p.guidance_scale, p.num_steps) == ("flow", "blurry", 7.5, 30)
    status, v = _post(client)
    p = _queued_params(client, v["id"])
    assert (p.num_steps, p.guidance_scale, p.sampler, p.sigma_max) == (
        SOLVER_STEPS["flow"].default, FLOW_GUIDANCE_DEFAULT, None, None)
    assert "rCM" in _refused(client, "sigma_max", sigma_max=80.0)
    _refused(client, "sampler", sampler="ode")
    _refused(client, "sla_topk", sla_topk=0.3)  # dense attention


def test_sla_topk_is_honoured_only_when_every_ready_worker_runs_sla(client: TestClient) -> None:
    settings = client.settings  # type: ignore[attr-defined]
    advertise_worker(settings, "sla-1", attention="sagesla", linear="w8a8")
    status, v = _post(client, sla_topk=0.3)
    assert status == 201, v
    assert _queued_params(client, v["id"]).sla_topk == 0.3 and v["sla_topk"] == 0.3
    _refused(client, "negative_prompt", negative_prompt="x")  # still rCM
    advertise_worker(settings, "loading-dense", attention="dense", ready=False)
    assert _post(client, sla_topk=0.3)[0] == 201  # a loading worker takes no jobs yet
    advertise_worker(settings, "dense-1", attention="dense")
    _refused(client, "sla_topk", sla_topk=0.3)  # the dense one could take the job


def test_workers_disagreeing_on_the_solver_is_a_503(client: TestClient) -> None:
    settings = client.settings  # type: ignore[attr-defined]
    advertise_worker(settings, "rcm-1", solver="rcm")
    advertise_worker(settings, "flow-1", solver="flow")
    status, body = _post(client)
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert "different solvers" in body["error"]["message"]
    tiny = client.get("/v1/models/wan-tiny", headers=A).json()
    assert tiny["knobs"] is None and "different solvers" in tiny["error"]


def test_models_show_advertised_workers_and_the_knobs_they_honour(client: TestClient) -> None:
    tiny = client.get("/v1/models/wan-tiny", headers=A).json()
    assert tiny["workers"] == {"ready": 0, "loading": 0, "running": []}
    assert tiny["capabilities"] == {"solver": "rcm", "sla": False}
    assert set(tiny["knobs"]["refused"]) == {"negative_prompt", "guidance_scale", "sla_topk"}
    assert tiny["num_steps"] == {"min": 1, "max": 4, "default": 4}
    assert tiny["default_size"] == "64x64" and tiny["checkpoint_solver"] == "rcm"

    settings = client.settings  # type: ignore[attr-defined]
    advertise_worker(settings, "a", solver="flow", attention="sla", linear="w8a8")
    advertise_worker(settings, "b", solver="flow", attention="sla", linear="w8a8", ready=False)
    advertise_worker(settings, "c", solver="flow", attention="sagesla", linear="native")
    data = {m["id"]: m for m in client.get("/v1/models", headers=A).json()["data"]}
    tiny, i2v = data["wan-tiny"], data["wan-tiny-i2v"]
    assert tiny["workers"]["ready"] == 2 and tiny["workers"]["loading"] == 1
    one_gpu = {"ranks": 1, "gpu_memory_gb": None, "offload": [], "kernels": {}}
    assert tiny["workers"]["running"] == [
        {"solver": "flow", "attention": "sagesla", "linear": "native", **one_gpu, "ready": 1, "loading": 0},
        {"solver": "flow", "attention": "sla", "linear": "w8a8", **one_gpu, "ready": 1, "loading": 1},
    ]
    assert tiny["capabilities"] == {"solver": "flow", "sla": True}
    assert set(tiny["knobs"]["honoured"]) == {"prompt", "num_steps", "seed", "negative_prompt", "guidance_scale",
                                              "sla_topk"}
    assert set(tiny["knobs"]["refused"]) == {"sampler", "sigma_max"}
    assert tiny["num_steps"] == {"min": 1, "max": 100, "default": 50}
    assert i2v["workers"] == tiny["workers"]  # the same workers serve both queues

    # workers whose Gluon kernels fell back (a Triton whose Gluon compiles differently) show apart from the others
    fast = {"gemm": "gluon", "quant": "gluon", "attention": "gluon"}
    advertise_worker(settings, "d", solver="flow", attention="sla", linear="w8a8", kernels=fast)
    advertise_worker(settings, "e", solver="flow", attention="sla", linear="w8a8",
                     kernels={**fast, "attention": "triton"})
    running = client.get("/v1/models/wan-tiny", headers=A).json()["workers"]["running"]
    sla_w8a8 = [(p["kernels"], p["ready"], p["loading"]) for p in running if p["attention"] == "sla"]
    assert sla_w8a8 == [({}, 1, 1), ({**fast, "attention": "gluon"}, 1, 0), ({**fast, "attention": "triton"}, 1, 0)]


def test_idempotent_replay_is_stable_and_a_refusal_frees_the_key(client: TestClient) -> None:
    settings = client.settings  # type: ignore[attr-defined]
    h = {**A, "Idempotency-Key": "k-1"}
    body = {**BASE, "negative_prompt": "blurry"}
    r = client.post("/v1/videos", json=body, headers=h)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "negative_prompt")  # rCM: refused
    flow = advertise_worker(settings, "flow-1", solver="flow")
    first = client.post("/v1/videos", json=body, headers=h)  # the refusal did not keep the key
    assert first.status_code == 201, first.text
    client.app.state.turbovid.engine.workers.withdraw(flow)
    replay = client.post("/v1/videos", json=body, headers=h)  # the job exists: same answer, no re-check
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]

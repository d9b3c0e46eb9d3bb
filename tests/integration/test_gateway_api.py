"""The videos API against real Redis: create (JSON, multipart), retrieve, list, delete, limits, errors."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from gateway_support import KEY_A, KEY_B, advertise_worker, bearer, clean_redis, make_settings, png_bytes
from rq import Queue

from contract.jobs import JobError, JobSpec, JobStatus
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.queue import RQ_SERIALIZER, TASK_PATH
from service.app import create_app
from service.auth import hash_key

A, B = bearer(KEY_A), bearer(KEY_B)


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator:
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        settings = make_settings(tmp_path, **overrides)
        client = TestClient(create_app(settings)).__enter__()
        client.settings = settings  # type: ignore[attr-defined]
        client.redis = redis.Redis.from_url(settings.redis.url)  # type: ignore[attr-defined]
        clients.append(client)
        return client

    with clean_redis():
        yield make
        for c in clients:
            c.__exit__(None, None, None)
            c.redis.close()


def _create(c: TestClient, headers: dict[str, str] = A, **body: object) -> dict:
    r = c.post("/v1/videos", json={"prompt": "a red fox", "size": "96x64", "seconds": "1", **body},
               headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def test_create_json_enqueues_a_json_spec_on_the_model_queue(make_client) -> None:
    c = make_client()
    r = c.post("/v1/videos", json={"prompt": "a red fox", "size": "96x64", "seconds": "1", "seed": 7,
                                   "num_steps": 2, "metadata": {"k": "v"}}, headers=A)
    assert r.status_code == 201
    v = r.json()
    assert v["object"] == "video" and v["status"] == "queued" and v["progress"] == 0
    assert (v["size"], v["seconds"], v["num_frames"], v["fps"], v["seed"]) == ("96x64", "1", 17, 16, 7)
    assert v["queue_position"] == 0 and v["metadata"] == {"k": "v"}
    assert r.headers["openai-poll-after-ms"] == "700"
    q = Queue("wan-tiny", connection=c.redis, serializer=RQ_SERIALIZER)
    job = q.fetch_job(v["id"])
    assert job.func_name == TASK_PATH
    assert job.timeout == c.settings.queue.job_timeout_s
    assert job.result_ttl == c.settings.queue.result_ttl_s and job.failure_ttl == c.settings.queue.failure_ttl_s
    assert job.ttl == c.settings.queue.queued_ttl_s
    spec = JobSpec.model_validate_json(job.args[0])
    p = spec.params
    assert (p.width, p.height, p.num_frames, p.seed, p.num_steps, p.kind) == (96, 64, 17, 7, 2, "t2v")
    # the seed is random when absent, and echoed
    assert isinstance(_create(c)["seed"], int)


def test_multipart_create_and_high_priority_goes_to_the_front(make_client) -> None:
    c = make_client()
    first = _create(c)
    r = c.post("/v1/videos", data={"prompt": "a cat", "size": "64x64", "seconds": "2", "priority": "high",
                                   "metadata[team]": "x"}, headers=A)
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["size"], v["num_frames"], v["queue_position"], v["metadata"]) == ("64x64", 33, 0, {"team": "x"})
    assert c.get(f"/v1/videos/{first['id']}", headers=A).json()["queue_position"] == 1


def test_i2v_multipart_upload_is_stored_and_size_adapts_to_the_image(make_client, tmp_path: Path) -> None:
    c = make_client()
    r = c.post("/v1/videos", data={"prompt": "waves", "model": "wan-tiny-i2v", "seconds": "1"},
               files={"input_reference": ("in.png", png_bytes(64, 96), "image/png")}, headers=A)
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["size"] == "64x96"  # portrait image -> the portrait size
    record = c.app.state.turbovid.engine.store.get(v["id"])
    assert record.spec.kind == "i2v" and record.spec.image_key == f"inputs/{v['id']}.png"
    assert (tmp_path / "store" / record.spec.image_key).read_bytes() == png_bytes(64, 96)
    # I2V without an image, and T2V with one, are clear 400s
    r = c.post("/v1/videos", json={"prompt": "x", "model": "wan-tiny-i2v"}, headers=A)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "input_reference")
    r = c.post("/v1/videos", data={"prompt": "x"}, files={"input_reference": ("a.png", png_bytes(), "image/png")},
               headers=A)
    assert r.status_code == 400 and "text-to-video" in r.json()["error"]["message"]


def test_list_pagination_and_order(make_client) -> None:
    c = make_client()
    ids = [_create(c)["id"] for _ in range(5)]
    _create(c, headers=B)  # another tenant's job never shows up
    page1 = c.get("/v1/videos", params={"limit": 2}, headers=A).json()
    assert page1["object"] == "list" and page1["has_more"] is True
    assert [v["id"] for v in page1["data"]] == ids[::-1][:2]
    assert (page1["first_id"], page1["last_id"]) == (ids[4], ids[3])
    page2 = c.get("/v1/videos", params={"limit": 2, "after": page1["last_id"]}, headers=A).json()
    page3 = c.get("/v1/videos", params={"limit": 2, "after": page2["last_id"]}, headers=A).json()
    assert [v["id"] for v in page2["data"] + page3["data"]] == ids[::-1][2:]
    assert page2["has_more"] is True and page3["has_more"] is False
    asc = c.get("/v1/videos", params={"order": "asc", "limit": 100}, headers=A).json()
    assert [v["id"] for v in asc["data"]] == ids
    assert c.get("/v1/videos", params={"limit": 0}, headers=A).status_code == 400


def test_delete_cancels_a_queued_job_and_removes_it(make_client) -> None:
    c = make_client()
    v = _create(c)
    engine = c.app.state.turbovid.engine
    owner = engine.store.get(v["id"]).spec.owner
    assert engine.queue_depth("wan-tiny") == 1 and engine.store.active_count(owner) == 1
    r = c.delete(f"/v1/videos/{v['id']}", headers=A)
    assert r.status_code == 200 and r.json() == {"id": v["id"], "object": "video.deleted", "deleted": True}
    assert engine.queue_depth("wan-tiny") == 0
    assert engine.store.active_count(owner) == 0 and engine.store.get(v["id"]) is None
    assert c.get(f"/v1/videos/{v['id']}", headers=A).status_code == 404
    assert c.delete(f"/v1/videos/{v['id']}", headers=A).status_code == 404


def test_running_job_delete_sets_the_cancel_flag(make_client) -> None:
    c = make_client()
    v = _create(c)
    store: JobStore = c.app.state.turbovid.engine.store
    store.mark_started(v["id"], "w1")
    assert c.get(f"/v1/videos/{v['id']}", headers=A).json()["status"] == "in_progress"
    assert c.delete(f"/v1/videos/{v['id']}", headers=A).status_code == 200
    assert store.cancel_requested(v["id"])


def test_failed_and_cancelled_jobs_report_their_reason(make_client) -> None:
    c = make_client()
    store: JobStore = c.app.state.turbovid.engine.store
    v1, v2 = _create(c), _create(c)
    store.finish(v1["id"], JobStatus.failed, ttl_s=60, error=JobError(code="generation_failed", message="boom"))
    store.finish(v2["id"], JobStatus.cancelled, ttl_s=60)
    g1 = c.get(f"/v1/videos/{v1['id']}", headers=A)
    assert g1.json()["status"] == "failed" and g1.json()["error"] == {"code": "generation_failed", "message": "boom"}
    assert "openai-poll-after-ms" not in g1.headers
    assert c.get(f"/v1/videos/{v2['id']}", headers=A).json()["error"]["code"] == "cancelled"
    r = c.get(f"/v1/videos/{v1['id']}/content", headers=A)
    assert r.status_code == 409 and r.json()["error"]["code"] == "video_failed"


def test_error_messages_show_no_server_paths_or_object_keys(make_client) -> None:
    c = make_client()
    store: JobStore = c.app.state.turbovid.engine.store
    v1, v2 = _create(c), _create(c)
    store.finish(v1["id"], JobStatus.failed, ttl_s=60, error=JobError(
        code="storage_error", message=f"s3 operation on 'outputs/{v1['id']}.mp4' failed: AccessDenied"))
    store.finish(v2["id"], JobStatus.failed, ttl_s=60, error=JobError(
        code="generation_failed", message="FileNotFoundError: /srv/turbovid/cache/tiny/weights.safetensors"))
    for vid, code in ((v1["id"], "storage_error"), (v2["id"], "generation_failed")):
        err = c.get(f"/v1/videos/{vid}", headers=A).json()["error"]
        assert err["code"] == code and err["message"]
        assert "outputs/" not in err["message"] and "/srv/" not in err["message"], err
    # the egress guard's refusal does not tell which internal address a name resolved to
    c2 = make_client()
    r = c2.post("/v1/videos", json={"prompt": "x", "webhook_url": "http://localhost:9/hook"}, headers=A)
    assert r.status_code == 400 and "127.0.0.1" not in r.json()["error"]["message"], r.text


def test_queued_job_past_the_queue_ttl_fails_visibly(make_client) -> None:
    c = make_client(queue={"queued_ttl_s": 1})
    v = _create(c)
    c.redis.hset(Keys(c.settings.redis.key_prefix).job(v["id"]), "created_at", "1.0")
    got = c.get(f"/v1/videos/{v['id']}", headers=A).json()
    assert got["status"] == "failed" and got["error"]["code"] == "queue_timeout"


def test_idempotency_same_body_same_job_different_body_409(make_client) -> None:
    c = make_client()
    h = {**A, "Idempotency-Key": "abc-1"}
    body = {"prompt": "same", "size": "64x64", "seconds": "1", "seed": 3}
    r1 = c.post("/v1/videos", json=body, headers=h)
    r2 = c.post("/v1/videos", json=body, headers=h)
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["id"] == r2.json()["id"]
    r3 = c.post("/v1/videos", json={**body, "prompt": "other"}, headers=h)
    assert r3.status_code == 409 and r3.json()["error"]["param"] == "Idempotency-Key"
    # keys are per tenant: bob's identical key makes his own job
    r4 = c.post("/v1/videos", json=body, headers={**B, "Idempotency-Key": "abc-1"})
    assert r4.status_code == 201 and r4.json()["id"] != r1.json()["id"]
    assert len(c.get("/v1/videos", headers=A).json()["data"]) == 1


def test_deleting_a_job_frees_its_idempotency_key(make_client) -> None:
    c = make_client()
    h = {**A, "Idempotency-Key": "abc-del"}
    body = {"prompt": "same", "size": "64x64", "seconds": "1", "seed": 3}
    first = c.post("/v1/videos", json=body, headers=h).json()["id"]
    assert c.delete(f"/v1/videos/{first}", headers=A).status_code == 200
    again = c.post("/v1/videos", json=body, headers=h)  # was 409 "in progress" for result_ttl_s
    assert again.status_code == 201 and again.json()["id"] != first
    # a different body with the freed key is a new job too, and the new claim holds
    assert c.post("/v1/videos", json=body, headers=h).json()["id"] == again.json()["id"]
    assert c.post("/v1/videos", json={**body, "seed": 4}, headers=h).status_code == 409
    # a refused create leaves no claim behind
    r = c.post("/v1/videos", json={**body, "num_steps": 99}, headers={**A, "Idempotency-Key": "abc-bad"})
    assert r.status_code == 400
    assert c.post("/v1/videos", json=body, headers={**A, "Idempotency-Key": "abc-bad"}).status_code == 201


def test_auth_and_tenancy(make_client) -> None:
    c = make_client()
    v = _create(c)
    assert c.get(f"/v1/videos/{v['id']}").status_code == 401
    r = c.post("/v1/videos", json={"prompt": "x"}, headers=bearer("tv-wrong"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for method in ("get", "delete"):
        r = getattr(c, method)(f"/v1/videos/{v['id']}", headers=B)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert c.get(f"/v1/videos/{v['id']}/content", headers=B).status_code == 404
    assert c.get(f"/v1/videos/{v['id']}", headers=A).status_code == 200
    assert c.get("/v1/videos", headers=B).json()["data"] == []


def test_rate_limit_429_with_retry_after(make_client) -> None:
    c = make_client(auth={"rate_limit_per_minute": 2, "max_concurrent_jobs": 100})
    _create(c), _create(c)
    r = c.post("/v1/videos", json={"prompt": "x", "size": "64x64"}, headers=A)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert c.post("/v1/videos", json={"prompt": "x", "size": "64x64"}, headers=B).status_code == 201


def test_concurrency_limit_counts_unfinished_jobs(make_client) -> None:
    c = make_client(auth={"max_concurrent_jobs": 2})
    v1, _ = _create(c), _create(c)
    r = c.post("/v1/videos", json={"prompt": "x", "size": "64x64"}, headers=A)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_active_jobs"
    assert int(r.headers["Retry-After"]) >= 1
    c.app.state.turbovid.engine.store.finish(v1["id"], JobStatus.failed, ttl_s=60)
    # a creation rejected after reserving a slot (bad image) gives the slot back
    bad = c.post("/v1/videos", data={"prompt": "x", "model": "wan-tiny-i2v"},
                 files={"input_reference": ("a.png", b"not an image", "image/png")}, headers=A)
    assert bad.status_code == 415
    assert c.post("/v1/videos", json={"prompt": "x", "size": "64x64"}, headers=A).status_code == 201


def test_a_full_key_gets_back_the_slots_of_jobs_that_expired_unnoticed(make_client) -> None:
    c = make_client(auth={"max_concurrent_jobs": 2})
    v1, v2 = _create(c), _create(c)
    engine = c.app.state.turbovid.engine
    owner = engine.store.get(v1["id"]).spec.owner
    # v1 sat queued past the queued TTL and nobody polled it; v2's record expired long after its reservation
    engine._r.hset(engine.store.keys.job(v1["id"]), "created_at", repr(time.time() - engine.cfg.queued_ttl_s - 5))
    engine._r.delete(engine.store.keys.job(v2["id"]))
    engine._r.zadd(engine.store.keys.active(owner), {v2["id"]: time.time() - 600})
    r = c.post("/v1/videos", json={"prompt": "x", "size": "64x64"}, headers=A)
    assert r.status_code == 201, r.text
    old = c.get(f"/v1/videos/{v1['id']}", headers=A).json()
    assert old["status"] == "failed" and old["error"]["code"] == "queue_timeout"
    assert engine.queue_depth("wan-tiny") == 2  # v2's RQ job (record gone) and the new one; v1 left the queue
    # both stale slots were freed: one more fits, then the limit holds again
    assert c.post("/v1/videos", json={"prompt": "x", "size": "64x64"}, headers=A).status_code == 201
    assert c.post("/v1/videos", json={"prompt": "x", "size": "64x64"}, headers=A).status_code == 429


def test_parallel_creations_never_exceed_the_concurrency_limit(make_client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = make_client(auth={"max_concurrent_jobs": 3})
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: c.post("/v1/videos", json={"prompt": "x", "size": "64x64"},
                                               headers=A).status_code, range(8)))
    assert sorted(codes) == [201] * 3 + [429] * 5
    assert len(c.get("/v1/videos", headers=A).json()["data"]) == 3


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "x", "size": "1920x1080"}, 400, "size"),
        ({"prompt": "x", "seconds": "9"}, 400, "seconds"),
        ({"prompt": "x", "num_frames": 10}, 400, "num_frames"),
        ({"prompt": "x", "num_steps": 5}, 400, "num_steps"),
        ({"prompt": "x", "model": "sora-2"}, 400, "model"),
        ({"prompt": "x" * 2001}, 400, "prompt"),
        ({"prompt": ""}, 400, "prompt"),
        ({"size": "64x64"}, 400, "prompt"),
        ({"prompt": "x", "bogus": 1}, 400, "bogus"),
        ({"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook"}, 400, "webhook_url"),
        ({"prompt": "x", "webhook_url": "ftp://example.com/"}, 400, "webhook_url"),
        ({"prompt": "x", "webhook_url": "http://[::1"}, 400, "webhook_url"),
        ({"prompt": "x", "seconds": [1]}, 400, "seconds"),
        ({"prompt": "x", "metadata": {"a": 1}}, 400, "metadata.a"),
        ({"prompt": "x", "model": "wan-tiny-i2v", "image": "not base64!"}, 400, "image"),
        ({"prompt": "x", "model": "wan-tiny-i2v", "image_url": "http://169.254.169.254/x.png"}, 400, "image_url"),
        ({"prompt": "x", "model": "wan-tiny-i2v", "image_url": "http://[::1"}, 400, "image_url"),
        # an empty model id is not the default model; booleans are not numbers; blank prompts are empty
        ({"prompt": "x", "model": ""}, 400, "model"),
        ({"prompt": "x", "seconds": True}, 400, "seconds"),
        ({"prompt": "x", "seed": True}, 400, "seed"),
        ({"prompt": "x", "num_steps": True}, 400, "num_steps"),
        ({"prompt": "x", "num_frames": False}, 400, "num_frames"),
        ({"prompt": "x", "sla_topk": True}, 400, "sla_topk"),
        ({"prompt": " \t\n "}, 400, "prompt"),
        ({"prompt": "x", "metadata": {"a": {"b": {"c": "d"}}}}, 400, "metadata.a"),
    ],
)
def test_validation_errors_are_clear_400s(make_client, body: dict, status: int, param: str) -> None:
    c = make_client()
    r = c.post("/v1/videos", json=body, headers=A)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["code"]


def test_image_limits_413_415_422(make_client) -> None:
    import base64

    c = make_client(limits={"max_upload_bytes": 20_000, "min_image_side": 32})

    def post(data: bytes, name: str = "a.png") -> tuple[int, str]:
        r = c.post("/v1/videos", data={"prompt": "x", "model": "wan-tiny-i2v"},
                   files={"input_reference": (name, data, "image/png")}, headers=A)
        return r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else ""

    assert post(b"\0" * 30_000)[0] == 413
    assert post(b"GIF89a" + b"\0" * 100) == (415, "unsupported_image_type")
    assert post(png_bytes(96, 64, "GIF"))[0] == 415
    assert post(png_bytes(16, 64)) == (422, "invalid_image_dimensions")
    assert post(png_bytes(96, 64)[:200]) == (422, "invalid_image")  # truncated
    assert post(png_bytes(96, 64, "JPEG"), "a.jpg")[0] == 201
    data_url = "data:image/webp;base64," + base64.b64encode(png_bytes(64, 64, "WEBP")).decode()
    r = c.post("/v1/videos", json={"prompt": "x", "model": "wan-tiny-i2v", "image": data_url}, headers=A)
    assert r.status_code == 201 and r.json()["size"] == "64x64"
    r = c.post("/v1/videos", content=b"{not json", headers={**A, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = c.post("/v1/videos", content=b"x", headers={**A, "content-type": "text/plain"})
    assert r.status_code == 415


def test_models_health_ready_metrics_docs(make_client) -> None:
    c = make_client()
    _create(c)
    models = c.get("/v1/models", headers=A).json()["data"]
    tiny = next(m for m in models if m["id"] == "wan-tiny")
    assert "96x64" in tiny["sizes"] and tiny["workers"]["ready"] == 0 and tiny["queue_depth"] == 1
    assert c.get("/healthz").json() == {"status": "ok"}
    r = c.get("/readyz")  # readiness is Redis only: no worker does not take the gateway out of service
    assert r.status_code == 200 and r.json()["redis"] is True
    r = c.get("/healthz/models")  # worker availability is reported per model
    assert r.status_code == 503 and r.json()["models"]["wan-tiny"]["ready"] == 0
    text = c.get("/metrics").text
    assert 'turbovid_http_requests_total{method="POST",route="/v1/videos",status="201"} 1.0' in text
    assert 'turbovid_jobs_created_total{model="wan-tiny"} 1.0' in text
    assert 'turbovid_queue_depth{model="wan-tiny"} 1.0' in text
    assert 'turbovid_workers{model="wan-tiny"} 0.0' in text
    assert "turbovid_http_request_duration_seconds_bucket" in text
    assert c.get("/docs").status_code == 200
    spec = c.get("/openapi.json")
    assert "/v1/videos" in spec.json()["paths"] and "$defs" not in spec.text
    create = spec.json()["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert set(create) == {"application/json", "multipart/form-data"}
    assert "num_steps" in create["application/json"]["schema"]["properties"]


def test_auth_is_off_only_in_dev_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dev mode"):
        make_settings(tmp_path, auth={"enabled": False})
    assert make_settings(tmp_path, auth={"enabled": False}, dev_mode=True).auth.enabled is False


def test_importing_the_app_does_not_import_torch() -> None:
    code = ("import sys, service.app, service.webhooks, service.auth; "
            "assert not {'torch', 'models', 'kernels', 'worker'} & set(sys.modules), sys.modules.keys()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr


def test_jobs_survive_a_gateway_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with clean_redis():
        with TestClient(create_app(settings)) as c1:
            vid = _create(c1)["id"]
        with TestClient(create_app(settings)) as c2:  # a new process would build exactly this
            got = c2.get(f"/v1/videos/{vid}", headers=A)
            assert got.status_code == 200 and got.json()["status"] == "queued"
            assert got.json()["queue_position"] == 0


def test_a_model_is_available_with_a_ready_worker(make_client) -> None:
    c = make_client(gateway={"models": ["wan-tiny"]})
    loading = advertise_worker(c.settings, "w-loading", ready=False)
    assert c.get("/healthz/models").status_code == 503  # a worker still loading its model does not count
    assert c.get("/v1/models", headers=A).json()["data"][0]["workers"]["loading"] == 1
    info = advertise_worker(c.settings, "w1")
    r = c.get("/healthz/models")
    assert r.status_code == 200 and r.json()["models"]["wan-tiny"]["ready"] == 1
    assert c.get("/v1/models", headers=A).json()["data"][0]["workers"]["ready"] == 1
    assert 'turbovid_workers{model="wan-tiny"} 1.0' in c.get("/metrics").text
    registry = c.app.state.turbovid.engine.workers
    registry.withdraw(info)
    registry.withdraw(loading)
    assert c.get("/healthz/models").status_code == 503
    assert c.get("/readyz").status_code == 200


def test_image_url_is_fetched_when_private_targets_are_allowed(make_client) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    payload = png_bytes(64, 64)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code = 200 if self.path == "/in.png" else 404
            self.send_response(code)
            self.send_header("content-length", str(len(payload) if code == 200 else 0))
            self.end_headers()
            if code == 200:
                self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        c = make_client(egress={"allow_private_targets": True})
        r = c.post("/v1/videos", json={"prompt": "x", "model": "wan-tiny-i2v", "image_url": f"{base}/in.png"},
                   headers=A)
        assert r.status_code == 201, r.text
        key = c.app.state.turbovid.engine.store.get(r.json()["id"]).spec.image_key
        assert c.app.state.turbovid.storage.get_bytes(key) == payload
        r = c.post("/v1/videos", json={"prompt": "x", "model": "wan-tiny-i2v",
                                       "input_reference": {"image_url": f"{base}/missing.png"}}, headers=A)
        assert r.status_code == 400 and r.json()["error"]["param"] == "input_reference.image_url"
        strict = make_client()
        r = strict.post("/v1/videos", json={"prompt": "x", "model": "wan-tiny-i2v", "image_url": f"{base}/in.png"},
                        headers=A)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image_url"
    finally:
        server.shutdown()
        server.server_close()


def test_a_killed_workers_stale_registration_is_not_counted(make_client) -> None:
    c = make_client(gateway={"models": ["wan-tiny"]})
    info = advertise_worker(c.settings, "w1")
    engine = c.app.state.turbovid.engine
    assert engine.ready_workers("wan-tiny") == 1
    keys = Keys(c.settings.redis.key_prefix)
    c.redis.delete(keys.worker(info.name))  # what expiry of the advertisement's TTL does after a SIGKILL
    assert c.redis.sismember(keys.workers("wan-tiny"), info.name)  # the name is still registered
    assert engine.ready_workers("wan-tiny") == 0
    assert c.get("/healthz/models").status_code == 503


def test_redis_down_is_a_503_not_a_500(tmp_path: Path) -> None:
    from gateway_support import free_port

    settings = make_settings(tmp_path, redis={"url": f"redis://127.0.0.1:{free_port()}/0"})
    c = TestClient(create_app(settings))  # no lifespan: bootstrap keys would need Redis
    r = c.post("/v1/videos", json={"prompt": "x"}, headers=A)
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_unavailable"
    assert r.headers["Retry-After"] == "5"
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["redis"] is False


def test_cli_created_key_is_stored_hashed_and_authenticates(make_client) -> None:
    from service.auth import create_api_key

    c = make_client()
    plaintext = create_api_key(c.settings, "carol")
    keys = Keys(c.settings.redis.key_prefix)
    stored = c.redis.hgetall(keys.api_keys())
    assert set(c.redis.hgetall(keys.api_key_names()).values()) >= {b"alice", b"bob", b"carol"}
    assert hash_key(plaintext).encode() in stored
    assert not any(plaintext.encode() in k or plaintext.encode() in v for k, v in stored.items())
    assert c.get("/v1/videos", headers=bearer(plaintext)).status_code == 200


def test_internal_errors_are_500s_in_the_error_shape_not_the_clients_fault(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with clean_redis(), TestClient(create_app(settings), raise_server_exceptions=False) as c:
        def broken(*args: object, **kwargs: object) -> None:
            raise ValueError("an internal bug, not bad input")

        c.app.state.turbovid.storage.put_bytes = broken
        r = c.post("/v1/videos", data={"prompt": "x", "model": "wan-tiny-i2v"},
                   files={"input_reference": ("a.png", png_bytes(64, 64), "image/png")}, headers=A)
        assert r.status_code == 500
        assert r.json() == {"error": {"code": "internal_error", "message": "internal server error", "param": None}}
        # the failed creation left nothing behind: no job, no held slot
        assert c.get("/v1/videos", headers=A).json()["data"] == []
        assert c.app.state.turbovid.engine.store.active_count("key_" + hash_key(KEY_A)[:12]) == 0

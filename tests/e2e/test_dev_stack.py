"""End to end through HTTP against `turbovid serve --dev` running the real wan-tiny model."""

from __future__ import annotations

import io
import time

import av
import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def _wait(client: httpx.Client, video_id: str, *, until: tuple[str, ...] = ("completed", "failed"),
          timeout: float = 120, poll: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = client.get(f"/v1/videos/{video_id}").json()
        if obj["status"] in until:
            return obj
        time.sleep(poll)
    raise AssertionError(f"{video_id} not in {until} after {timeout}s: {obj}")


def _frames(mp4: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(mp4)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture
def client(dev_stack):
    with httpx.Client(base_url=dev_stack.base_url, timeout=30) as c:
        yield c


def test_t2v_from_post_to_decoded_mp4(client):
    resp = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "a lighthouse at dusk",
                                           "size": "96x64", "num_frames": 5, "seed": 3})
    assert resp.status_code == 201, resp.text
    obj = _wait(client, resp.json()["id"])
    assert obj["status"] == "completed", obj
    assert obj["progress"] == 100
    for stage in ("queue_wait", "text_encode", "denoise", "vae_decode", "video_encode", "upload", "total"):
        assert obj["timings"][stage] >= 0
    content = client.get(f"/v1/videos/{obj['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    frames = _frames(content.content)
    assert len(frames) == 5 and frames[0].shape == (64, 96, 3)
    assert float(np.std(np.stack(frames))) > 1.0  # a generated video, not a blank one
    thumb = client.get(f"/v1/videos/{obj['id']}/content", params={"variant": "thumbnail"})
    assert Image.open(io.BytesIO(thumb.content)).size == (96, 64)


def test_i2v_multipart_upload_to_decoded_mp4(client):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    resp = client.post("/v1/videos", data={"model": "wan-tiny-i2v", "prompt": "make it move", "size": "64x64",
                                           "num_frames": "5"},
                       files={"input_reference": ("in.png", buf.getvalue(), "image/png")})
    assert resp.status_code == 201, resp.text
    obj = _wait(client, resp.json()["id"])
    assert obj["status"] == "completed", obj
    assert obj["timings"]["image_encode"] > 0
    frames = _frames(client.get(f"/v1/videos/{obj['id']}/content").content)
    assert len(frames) == 5 and frames[0].shape == (64, 64, 3)


def test_bad_input_is_a_4xx_json_error(client):
    resp = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "x", "size": "333x333"})
    assert 400 <= resp.status_code < 500
    err = resp.json()["error"]
    assert err["code"] and err["message"] and err["param"] == "size"


def test_cancel_queued_and_running_jobs(client, dev_stack):
    # A long job keeps the single worker busy; the second one waits in the queue.
    running = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "long", "size": "128x128",
                                              "num_frames": 33}).json()
    queued = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "queued", "size": "64x64",
                                             "num_frames": 5}).json()
    _wait(client, running["id"], until=("in_progress",), timeout=60, poll=0.01)
    assert client.get(f"/v1/videos/{queued['id']}").json()["status"] == "queued"

    assert client.delete(f"/v1/videos/{queued['id']}").status_code == 200
    assert client.delete(f"/v1/videos/{running['id']}").status_code == 200
    assert client.get(f"/v1/videos/{queued['id']}").status_code == 404
    assert client.get(f"/v1/videos/{running['id']}").status_code == 404

    # The worker stops the running job at a step boundary and runs nothing for either.
    after = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "after", "size": "64x64",
                                            "num_frames": 5}).json()
    assert _wait(client, after["id"])["status"] == "completed"
    metrics = httpx.get(dev_stack.metrics_url).text
    assert 'turbovid_jobs_finished_total{model="wan-tiny",status="cancelled"} 1.0' in metrics
    stored = {p.name for p in dev_stack.storage_dir.rglob("*") if p.is_file()}
    assert not any(running["id"] in n or queued["id"] in n for n in stored), stored


def test_metrics_after_a_job(client, dev_stack):
    obj = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "metrics", "size": "64x64",
                                          "num_frames": 5}).json()
    assert _wait(client, obj["id"])["status"] == "completed"
    worker = httpx.get(dev_stack.metrics_url).text
    for stage in ("queue_wait", "text_encode", "denoise", "vae_decode", "video_encode", "upload", "total"):
        assert f'turbovid_stage_duration_seconds_count{{model="wan-tiny",stage="{stage}"}}' in worker, stage
    assert 'turbovid_jobs_finished_total{model="wan-tiny",status="completed"}' in worker
    assert 'turbovid_worker_busy{model="wan-tiny"} 0.0' in worker
    gateway = client.get("/metrics").text
    assert "turbovid_http_requests_total" in gateway and 'turbovid_jobs_created_total{model="wan-tiny"}' in gateway
    assert 'turbovid_workers{model="wan-tiny"} 1.0' in gateway

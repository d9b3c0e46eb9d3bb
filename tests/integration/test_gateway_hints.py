"""Errors that point the way: an image sent to a T2V model names its I2V twin (and back); `seconds` a
model cannot do is answered with the allowed range, which /v1/models states too."""

from __future__ import annotations

import base64
from pathlib import Path

from fastapi.testclient import TestClient
from gateway_support import KEY_A, advertise_worker, bearer, clean_redis, make_settings, png_bytes

from service.app import create_app

A = bearer(KEY_A)


def test_kind_mismatch_points_to_the_other_model_and_seconds_are_stated(tmp_path: Path) -> None:
    with clean_redis():
        settings = make_settings(tmp_path)
        advertise_worker(settings)
        with TestClient(create_app(settings)) as client:
            image = "data:image/png;base64," + base64.b64encode(png_bytes(64, 64)).decode()
            resp = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "p", "image": image}, headers=A)
            assert resp.status_code == 400
            assert resp.json()["error"]["param"] == "input_reference"
            assert "use model 'wan-tiny-i2v'" in resp.json()["error"]["message"]

            resp = client.post("/v1/videos", json={"model": "wan-tiny-i2v", "prompt": "p"}, headers=A)
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "missing_image"
            assert "use model 'wan-tiny'" in resp.json()["error"]["message"]

            # the OpenAI SDK's typed values: "8" is longer than wan-tiny can make: refused with the range
            resp = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "p", "seconds": "8"}, headers=A)
            assert resp.status_code == 400 and resp.json()["error"]["param"] == "seconds"
            assert "(0, 2]" in resp.json()["error"]["message"]

            models = {m["id"]: m for m in client.get("/v1/models", headers=A).json()["data"]}
            assert models["wan-tiny"]["seconds"] == {"min_exclusive": 0, "max": 2.0, "default": "0.5", "fps": 16}
            ok = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "p", "seconds": "2"}, headers=A)
            assert ok.status_code == 201 and ok.json()["num_frames"] == 33 and ok.json()["seconds"] == "2"

"""Every knob of GenerationParams, sent twice with the same seed through the dev stack: either the two
decoded videos differ, or the gateway refuses the knob with a 400 whose `param` names it. Nothing a
client sends is accepted and then dropped."""

from __future__ import annotations

import io
import time

import av
import httpx
import numpy as np
import pytest

from contract.jobs import GenerationParams

pytestmark = pytest.mark.e2e

# 128x128, 9 frames: 192 latent tokens, so SLA has several key blocks and its Top-K ratio matters.
BASE = {"model": "wan-tiny", "prompt": "a fox in the snow", "seed": 5, "size": "128x128", "num_frames": 9}
TWO_VALUES = {
    "prompt": ("a red fox in the snow", "a blue whale in the sea"),
    "negative_prompt": ("blurry, low quality", "oversaturated"),
    "seed": (1, 2),
    "num_steps": (1, 3),
    "sampler": ("sde", "ode"),
    "sigma_max": (20.0, 200.0),
    "sla_topk": (0.05, 0.9),
    "guidance_scale": (2.0, 8.0),
    # the API's own fields that GenerationParams gets from the gateway
    "size": ("64x64", "96x64"),
    "num_frames": (5, 9),
}


def test_every_client_knob_of_generation_params_is_covered():
    assert set(GenerationParams.CLIENT_KNOBS) <= set(TWO_VALUES)


def _video(client: httpx.Client, body: dict) -> httpx.Response | list[np.ndarray]:
    resp = client.post("/v1/videos", json=body)
    if resp.status_code != 201:
        return resp
    video_id = resp.json()["id"]
    deadline = time.monotonic() + 120
    while (obj := client.get(f"/v1/videos/{video_id}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, obj
        time.sleep(0.2)
    assert obj["status"] == "completed", obj
    mp4 = client.get(f"/v1/videos/{video_id}/content").content
    with av.open(io.BytesIO(mp4)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("knob", sorted(TWO_VALUES))
def test_each_knob_changes_the_video_or_is_refused_by_name(dev_stack, knob):
    with httpx.Client(base_url=dev_stack.base_url, timeout=30) as client:
        a, b = (_video(client, {**BASE, knob: value}) for value in TWO_VALUES[knob])
    if isinstance(a, httpx.Response) or isinstance(b, httpx.Response):
        for r in (a, b):  # refused: both values, with a 400 that names the knob
            assert isinstance(r, httpx.Response), f"{knob}: one value accepted, the other refused"
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == knob, r.text
        return
    same_shape = len(a) == len(b) and a[0].shape == b[0].shape
    assert not same_shape or not np.array_equal(np.stack(a), np.stack(b)), f"{knob} was accepted and ignored"


def test_the_same_request_twice_gives_the_same_video(dev_stack):
    with httpx.Client(base_url=dev_stack.base_url, timeout=30) as client:
        a, b = _video(client, BASE), _video(client, BASE)
    assert np.array_equal(np.stack(a), np.stack(b))  # so a difference above is the knob's doing

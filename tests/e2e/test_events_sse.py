"""Live job events end to end: `turbovid serve --dev` (real wan-tiny worker on the CPU) streamed over SSE.

Checked: the events of a job in order (queued, started, the stages with their steps, previews, completed),
each stored event with a stream id, progress monotonic and 100 only with the content downloadable;
resume by Last-Event-ID; previews that decode as JPEG while the job still runs."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def stream_events(client: httpx.Client, video_id: str, *, last_event_id: str | None = None, timeout: float = 180,
                  on_event: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """The events of /v1/videos/{id}/events until the server closes the stream (`on_event` runs as each
    arrives, while the job goes on)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/v1/videos/{video_id}/events", headers=headers, timeout=30) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in resp.iter_lines():
            assert time.monotonic() < deadline, f"no terminal event after {timeout}s: {out[-3:]}"
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "data" in fields:
                event = {"id": fields.get("id"), "event": fields["event"], **json.loads(fields["data"])}
                out.append(event)
                if on_event is not None:
                    on_event(event)
            fields = {}
    return out


@pytest.fixture
def client(dev_stack):
    with httpx.Client(base_url=dev_stack.base_url, timeout=30) as c:
        yield c


def _create(client: httpx.Client, **body: Any) -> str:
    resp = client.post("/v1/videos", json={"model": "wan-tiny", "prompt": "a kite over the dunes", "seed": 5, **body})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_events_in_order_to_completed_then_resume_by_last_event_id(client):
    vid = _create(client, size="96x64", num_frames=9)
    downloadable_at_100: list[int] = []

    def check_content(event: dict[str, Any]) -> None:
        if event["event"] == "completed":  # 100 only when the content can be downloaded
            downloadable_at_100.append(client.get(f"/v1/videos/{vid}/content").status_code)

    events = stream_events(client, vid, on_event=check_content)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "completed", kinds
    assert "started" in kinds, f"the worker published no events (issue 11, producer side): {kinds}"
    assert kinds.index("started") < kinds.index("stage"), kinds
    assert kinds.count("completed") == 1 and "failed" not in kinds
    stored = [e for e in events if e["id"] is not None]
    assert stored[-1]["event"] == "completed", "the terminal event came from the job's stream, not the record"
    ids = [tuple(int(p) for p in e["id"].split("-")) for e in stored]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress), progress
    assert progress[-1] == 100 and all(p < 100 for p in progress[:-1])
    assert downloadable_at_100 == [200]
    elapsed = [e["elapsed_s"] for e in stored]
    assert elapsed == sorted(elapsed)
    stages = [e for e in events if e["event"] == "stage"]
    denoise = [(e["step"], e["steps"]) for e in stages if e.get("stage") == "denoise"]
    assert denoise and denoise[-1][0] == denoise[-1][1] == 4, denoise  # 4 rCM steps, each reported
    later = {e["stage"] for e in stages} - {"denoise"}
    assert {"vae_decode", "upload"} <= later, later  # progress goes on after denoising: decode, upload

    # a client that reconnects after the third stored event gets exactly the stored events after it
    cut = stored[2]["id"]
    resumed = stream_events(client, vid, last_event_id=cut, timeout=30)
    assert [e["id"] for e in resumed] == [e["id"] for e in stored[3:]]
    assert resumed[-1]["event"] == "completed"


def test_previews_decode_as_jpeg_while_the_job_runs(client):
    vid = _create(client, size="128x128", num_frames=33)
    seen: list[tuple[str, int, tuple[int, int]]] = []

    def fetch_preview(event: dict[str, Any]) -> None:
        if event["event"] != "preview":
            return
        resp = client.get(event["preview"])  # the event names the URL path of the JPEG
        status = client.get(f"/v1/videos/{vid}").json()["status"]
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg", resp.text
        image = Image.open(io.BytesIO(resp.content))
        assert image.format == "JPEG"
        image.load()  # decodes
        seen.append((status, len(resp.content), image.size))

    before = client.get(f"/v1/videos/{vid}/content", params={"variant": "preview"})
    events = stream_events(client, vid, on_event=fetch_preview)
    assert events[-1]["event"] == "completed"
    assert seen, f"no preview event (issue 11, producer side: worker previews): {[e['event'] for e in events]}"
    assert any(status == "in_progress" for status, _, _ in seen), seen
    assert all(size[0] > 0 and size[1] > 0 for _, _, size in seen)
    if before.status_code != 200:  # asked before the worker took the job
        assert before.status_code == 409 and before.json()["error"]["code"] == "preview_not_ready"

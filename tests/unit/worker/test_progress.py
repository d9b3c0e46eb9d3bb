"""worker/progress.JobProgress against real Redis and a local store: bands, cancel, shutdown, previews."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import redis

from contract.events import EventLog, preview_key
from contract.jobs import GenerationParams, JobSpec
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.storage import LocalStorage
from models.pipeline_types import StageEvent
from worker.progress import BANDS, JobCancelled, JobProgress, ShutdownRequeue, percent


@pytest.fixture
def job(tmp_path):
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    keys = Keys(f"tvtest-{uuid.uuid4().hex[:8]}")
    store, events = JobStore(client, keys), EventLog(client, keys)
    spec = JobSpec(job_id=f"video_{uuid.uuid4().hex[:16]}", owner="t", model="wan-tiny",
                   params=GenerationParams(prompt="p", width=64, height=48, num_frames=9, num_steps=4, seed=1),
                   output_key="outputs/x.mp4", created_at=time.time())
    store.create(spec, ttl_s=600)
    yield spec, store, events, LocalStorage(tmp_path / "store")
    client.delete(keys.job(spec.job_id), keys.events(spec.job_id), keys.cancel(spec.job_id),
                  keys.owner("t"), keys.active("t"))


def test_percent_walks_the_bands_in_order():
    seq = [StageEvent("text_encode", 0, 1), StageEvent("text_encode", 1, 1), StageEvent("image_encode", 1, 1),
           *[StageEvent("denoise", k, 4) for k in range(5)], *[StageEvent("vae_decode", i, 21) for i in range(22)],
           StageEvent("video_encode", 1, 1), StageEvent("upload", 0, 1), StageEvent("upload", 1, 1)]
    values = [percent(e) for e in seq]
    assert values == sorted(values) and values[0] == 1 and values[-1] == 99
    assert percent(StageEvent("denoise", 4, 4)) == BANDS["denoise"][1] == 80
    assert percent(StageEvent("vae_decode", 21, 21)) == 95


def test_stage_reports_set_progress_publish_and_honour_cancel(job):
    spec, store, events, storage = job
    p = JobProgress(spec, store=store, events=events, storage=storage, ttl_s=600)
    p.started()
    p.on_stage(StageEvent("denoise", 2, 4))
    p(3, 4)  # a Progress is also a plain step callback
    p.on_stage(StageEvent("text_encode", 1, 1))  # a late, lower report never takes progress back
    record = store.get(spec.job_id)
    assert record is not None and record.progress == percent(StageEvent("denoise", 3, 4))
    got = [(e.event, e.progress, e.stage, e.step) for _, e in events.read(spec.job_id)]
    assert got[0] == ("started", 1, None, None)
    assert got[1:3] == [("stage", 44, "denoise", 2), ("stage", 62, "denoise", 3)]
    assert got[3][1] == 62  # monotonic
    store.request_cancel(spec.job_id, ttl_s=60)
    with pytest.raises(JobCancelled):
        p.on_stage(StageEvent("vae_decode", 1, 3))


def test_deleted_job_stops_without_bringing_its_stream_back(job):
    spec, store, events, storage = job
    p = JobProgress(spec, store=store, events=events, storage=storage, ttl_s=600)
    store.delete(spec.job_id)
    with pytest.raises(JobCancelled):
        p.on_stage(StageEvent("vae_decode", 2, 3))
    assert not store.r.exists(store.keys.events(spec.job_id))


def test_shutdown_requeues_early_in_the_denoise_only(job):
    import threading

    spec, store, events, storage = job
    stop = threading.Event()
    p = JobProgress(spec, store=store, events=events, storage=storage, ttl_s=600, stop=stop)
    stop.set()
    with pytest.raises(ShutdownRequeue):
        p.on_stage(StageEvent("denoise", 1, 4))
    p.on_stage(StageEvent("denoise", 3, 4))  # nearly done: finish the job
    p.on_stage(StageEvent("vae_decode", 1, 3))


def test_previews_are_uploaded_then_announced_and_removed(job):
    spec, store, events, storage = job
    p = JobProgress(spec, store=store, events=events, storage=storage, ttl_s=600)
    p.on_preview(1, 4, np.full((6, 8, 3), 200, np.uint8))
    deadline = time.monotonic() + 5
    while not [e for _, e in events.read(spec.job_id) if e.event == "preview"] and time.monotonic() < deadline:
        time.sleep(0.02)
    (event,) = [e for _, e in events.read(spec.job_id) if e.event == "preview"]
    assert event.preview == f"/v1/videos/{spec.job_id}/content?variant=preview&v=1"
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(storage.get_bytes(preview_key(spec.output_key))))
    assert image.format == "JPEG" and image.size == (64, 48)  # the video's size (below PREVIEW_WIDTH)
    p.remove_preview()
    assert not storage.exists(preview_key(spec.output_key))

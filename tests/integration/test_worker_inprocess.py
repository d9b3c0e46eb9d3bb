"""The worker against real Redis, run in-process in burst mode with the numpy test pipeline."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
import redis
from PIL import Image
from pydantic import SecretStr
from rq import Queue
from worker_support import PatternPipeline, submit, test_settings

from contract.jobs import JobStatus
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.queue import RQ_SERIALIZER, WEBHOOK_QUEUE
from contract.storage import make_storage
from worker.main import run_worker


def _store(settings) -> JobStore:
    return JobStore(redis.Redis.from_url(settings.redis.url), Keys(settings.redis.key_prefix))


def _decode(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_t2v_job_completes_with_mp4_thumbnail_timings_and_progress(tmp_path):
    settings = test_settings(tmp_path)
    spec = submit(settings, frames=9, size=(64, 48))
    run_worker(settings, pipeline=PatternPipeline(), burst=True)

    record = _store(settings).get(spec.job_id)
    assert record is not None and record.status is JobStatus.completed, record
    assert record.progress == 100 and record.attempts == 1 and record.error is None
    out = record.output
    assert out is not None and (out.num_frames, out.width, out.height, out.fps) == (9, 64, 48, 16)
    storage = make_storage(settings.storage)
    frames = _decode(storage.get_bytes(out.key))
    assert len(frames) == 9 and frames[0].shape == (48, 64, 3)
    assert frames[-1].mean() > frames[0].mean() + 50  # the pipeline's frames, in order
    assert out.bytes == storage.size(out.key)
    assert Image.open(io.BytesIO(storage.get_bytes(out.thumbnail_key))).format == "JPEG"
    for stage in ("queue_wait", "text_encode", "denoise", "vae_decode", "video_encode", "upload", "total"):
        assert stage in record.timings, stage
    assert record.timings["total"] >= record.timings["queue_wait"] >= 0
    assert not _store(settings).r.zscore(_store(settings).keys.active("test"), spec.job_id) is not None


def test_failing_job_fails_with_reason_and_worker_continues(tmp_path):
    settings = test_settings(tmp_path)
    bad = submit(settings, prompt="boom please")
    missing = submit(settings, kind="i2v", image_key="inputs/nope.png")
    good = submit(settings)
    run_worker(settings, pipeline=PatternPipeline(), burst=True)

    store = _store(settings)
    rec = store.get(bad.job_id)
    assert rec is not None and rec.status is JobStatus.failed
    assert rec.error is not None and rec.error.code == "generation_failed" and "boom" in rec.error.message
    rec = store.get(missing.job_id)
    assert rec is not None and rec.status is JobStatus.failed
    assert rec.error is not None and rec.error.code == "invalid_input" and "image" in rec.error.message
    rec = store.get(good.job_id)
    assert rec is not None and rec.status is JobStatus.completed
    # RQ's own view agrees: the failed job is in its failed registry, the good one finished.
    q = Queue(settings.worker.queues[0], connection=store.r)
    assert bad.job_id in q.failed_job_registry.get_job_ids()


def test_i2v_uses_the_uploaded_image(tmp_path):
    settings = test_settings(tmp_path)
    storage = make_storage(settings.storage)
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (200, 40, 40)).save(buf, format="PNG")
    storage.put_bytes(buf.getvalue(), "inputs/red.png", "image/png")
    spec = submit(settings, kind="i2v", image_key="inputs/red.png", frames=5)
    run_worker(settings, pipeline=PatternPipeline(), burst=True)

    record = _store(settings).get(spec.job_id)
    assert record is not None and record.status is JobStatus.completed, record.error
    frames = _decode(storage.get_bytes(record.output.key))  # type: ignore[union-attr]
    r, g, _ = frames[2].reshape(-1, 3).mean(0)
    assert r > g + 40  # red conditioning image shows through
    assert "image_encode" in record.timings


class _CancelAfterFirstStep(PatternPipeline):
    def __init__(self, store: JobStore, job_id: str) -> None:
        super().__init__()
        self.store, self.job_id, self.steps_seen = store, job_id, 0

    def generate(self, params, *, image=None, on_step=None):
        def hook(done: int, total: int) -> None:
            self.steps_seen = done
            if done == 1:
                self.store.request_cancel(self.job_id, ttl_s=60)  # as the gateway does mid-run
            assert on_step is not None
            on_step(done, total)

        return super().generate(params, image=image, on_step=hook)


def test_cancel_queued_and_running_jobs(tmp_path):
    settings = test_settings(tmp_path)
    store = _store(settings)
    queued = submit(settings)
    store.request_cancel(queued.job_id, ttl_s=60)
    running = submit(settings)
    pipeline = _CancelAfterFirstStep(store, running.job_id)
    run_worker(settings, pipeline=pipeline, burst=True)

    rec = store.get(queued.job_id)
    assert rec is not None and rec.status is JobStatus.cancelled and rec.attempts == 0
    rec = store.get(running.job_id)
    assert rec is not None and rec.status is JobStatus.cancelled and rec.attempts == 1
    assert rec.error is not None and rec.error.code == "cancelled"
    assert pipeline.steps_seen == 1  # stopped at the first step boundary after the request
    assert not make_storage(settings.storage).exists(running.output_key)


def test_job_deleted_before_start_is_skipped(tmp_path):
    settings = test_settings(tmp_path)
    spec = submit(settings)
    _store(settings).delete(spec.job_id)
    run_worker(settings, pipeline=PatternPipeline(), burst=True)
    assert _store(settings).get(spec.job_id) is None
    assert not make_storage(settings.storage).exists(spec.output_key)


def test_terminal_jobs_with_webhook_url_enqueue_a_delivery(tmp_path):
    settings = test_settings(tmp_path)
    ok = submit(settings, webhook_url="https://hooks.example.com/ok")
    bad = submit(settings, prompt="boom", webhook_url="https://hooks.example.com/bad")
    plain = submit(settings)
    run_worker(settings, pipeline=PatternPipeline(), burst=True)

    q = Queue(WEBHOOK_QUEUE, connection=_store(settings).r, serializer=RQ_SERIALIZER)
    mine = {}
    for job in q.get_jobs():
        payload = json.loads(job.args[0])
        if payload["job_id"] in (ok.job_id, bad.job_id, plain.job_id):
            mine[payload["job_id"]] = payload
            job.delete(remove_from_queue=True)  # nobody should deliver to example.com
    assert set(mine) == {ok.job_id, bad.job_id}
    assert mine[ok.job_id]["url"] == "https://hooks.example.com/ok"
    assert mine[ok.job_id]["type"] == "video.completed"
    assert mine[bad.job_id]["type"] == "video.failed"
    # The worker sends the id and the event only: the deliverer renders the payload from the record.
    assert set(mine[ok.job_id]) == {"event_id", "type", "job_id", "url"}


@pytest.fixture
def s3_settings(tmp_path):
    """Settings whose storage is an S3 bucket on moto's server, reached over HTTP like MinIO."""
    import boto3
    from moto.server import ThreadedMotoServer
    from worker_support import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="tv-worker")
    base = test_settings(tmp_path)
    storage = base.storage.model_copy(update={
        "backend": "s3", "s3_bucket": "tv-worker", "s3_endpoint_url": endpoint, "s3_addressing_style": "path",
        "s3_access_key_id": SecretStr("test"), "s3_secret_access_key": SecretStr("test"), "s3_prefix": "jobs",
    })
    yield base.model_copy(update={"storage": storage})
    server.stop()


def test_i2v_job_with_s3_storage_over_http(s3_settings):
    storage = make_storage(s3_settings.storage)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 30, 220)).save(buf, format="JPEG")
    storage.put_bytes(buf.getvalue(), "inputs/blue.jpg", "image/jpeg")
    spec = submit(s3_settings, kind="i2v", image_key="inputs/blue.jpg", frames=9, size=(64, 64))
    run_worker(s3_settings, pipeline=PatternPipeline(), burst=True)

    record = _store(s3_settings).get(spec.job_id)
    assert record is not None and record.status is JobStatus.completed, record.error
    assert record.output is not None and storage.exists(record.output.key)
    frames = _decode(storage.get_bytes(record.output.key))
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)
    _, _, b = frames[4].reshape(-1, 3).mean(0)
    assert b > 100  # the blue conditioning image shows through
    url = storage.presigned_url(record.output.key)
    assert url is not None and "/tv-worker/jobs/outputs/" in url

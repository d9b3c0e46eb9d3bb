"""The worker against real Redis, run in-process in burst mode with the numpy test pipeline."""

from __future__ import annotations

import io
import json
import re
import threading
import time

import av
import numpy as np
import pytest
import redis
from PIL import Image
from pydantic import SecretStr
from rq import Queue
from worker_support import PatternPipeline, submit, test_settings

from contract.events import EventLog, JobEvent, preview_key
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


def test_t2v_job_completes_with_mp4_thumbnail_timings_and_progress(tmp_path, caplog):
    settings = test_settings(tmp_path)
    spec = submit(settings, frames=9, size=(64, 48))
    with caplog.at_level("INFO", logger="turbovid.worker"):
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
    # the worker's log has the job's wall-clock phases; they add up to the dequeue-to-finished time
    line = next(r.getMessage() for r in caplog.records if f"job {spec.job_id} wall s:" in r.getMessage())
    phases = dict(re.findall(r"(setup|generate|encode_tail|upload|finish) (\d+\.\d+)", line))
    assert set(phases) == {"setup", "generate", "encode_tail", "upload", "finish"}, line
    whole = float(re.search(r"dequeue to finished (\d+\.\d+)", line)[1])
    assert abs(sum(map(float, phases.values())) - whole) < 2e-3 and whole > 0


@pytest.mark.parametrize(("threads", "kind"), [(2, "slice"), (4, "slice"), (3, "frame")])
def test_the_encoder_threads_setting_reaches_the_jobs_x264(tmp_path, threads, kind):
    """worker.encoder_threads / encoder_thread_type are the job encoder's x264 threads (x264 writes its
    options, threads and slices included, into the stream; 256 rows allow 4 slices)."""
    settings = test_settings(tmp_path, encoder_threads=threads, encoder_thread_type=kind)
    spec = submit(settings, frames=5, size=(320, 256))
    run_worker(settings, pipeline=PatternPipeline(), burst=True)
    record = _store(settings).get(spec.job_id)
    assert record is not None and record.status is JobStatus.completed and record.output is not None, record
    data = make_storage(settings.storage).get_bytes(record.output.key)
    options = data[data.index(b"x264 - core") :].split(b"\x00")[0].decode()
    assert f" threads={threads} " in options
    if kind == "slice":
        assert " sliced_threads=1 " in options and f" slices={threads} " in options
    else:
        assert " sliced_threads=0 " in options and " slices=" not in options
    assert len(_decode(data)) == 5


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


# Live progress and events (contract/events.py), previews, cancel during the decode ------------------------
def _events(settings, job_id: str) -> list[JobEvent]:
    log = EventLog(redis.Redis.from_url(settings.redis.url), Keys(settings.redis.key_prefix))
    return [e for _, e in log.read(job_id, count=1000)]


def _stages(events: list[JobEvent]) -> list[tuple[str | None, int | None, int | None]]:
    return [(e.stage, e.step, e.steps) for e in events if e.event == "stage"]


def test_events_cover_every_stage_in_order_with_monotonic_progress(tmp_path):
    settings = test_settings(tmp_path)
    spec = submit(settings, frames=9, steps=3)
    run_worker(settings, pipeline=PatternPipeline(), burst=True)

    events = [e for e in _events(settings, spec.job_id) if e.event != "preview"]
    assert events[0].event == "started" and events[-1].event == "completed"
    progress = [e.progress for e in events]
    assert progress == sorted(progress), progress
    assert progress[-1] == 100 and all(p < 100 for p in progress[:-1])
    stages = _stages(events)
    assert [s for s in stages if s[0] == "denoise"] == [("denoise", k, 3) for k in range(4)]
    assert [s for s in stages if s[0] == "vae_decode"] == [("vae_decode", i, 3) for i in range(4)]  # 9 frames
    order = [s[0] for s in stages]
    firsts = sorted(set(order), key=order.index)
    assert firsts == ["text_encode", "denoise", "vae_decode", "video_encode", "upload"]
    assert order.index("video_encode") > len(order) - 5  # the encode tail and the upload come last
    by_stage = {s: max(e.progress for e in events if e.stage == s) for s in set(order)}
    assert by_stage["denoise"] == 80 and by_stage["vae_decode"] == 95 and by_stage["upload"] == 99
    record = _store(settings).get(spec.job_id)
    assert record is not None and record.status is JobStatus.completed and record.progress == 100
    storage = make_storage(settings.storage)
    assert record.output is not None and storage.exists(record.output.key)  # 100: the content is there
    assert not storage.exists(preview_key(spec.output_key))  # the video replaced the preview


def _watch(settings, job_id: str, on_event, *, timeout: float = 30.0) -> threading.Thread:
    """Follow a job's events on a thread (the worker runs on the main one) until its terminal event."""
    log = EventLog(redis.Redis.from_url(settings.redis.url), Keys(settings.redis.key_prefix))

    def run() -> None:
        after, deadline = "0", time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry_id, event in log.read(job_id, after=after, block_ms=200):
                after = entry_id
                on_event(event)
                if event.event in ("completed", "failed"):
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_previews_are_jpegs_while_the_job_runs(tmp_path):
    settings = test_settings(tmp_path)
    spec = submit(settings, frames=9, steps=4, size=(64, 48))
    storage, store = make_storage(settings.storage), _store(settings)
    seen: list[tuple[str, str, tuple[int, int], str]] = []

    def on_event(event: JobEvent) -> None:
        if event.event == "preview":
            image = Image.open(io.BytesIO(storage.get_bytes(preview_key(spec.output_key))))
            record = store.get(spec.job_id)
            seen.append((event.preview or "", image.format or "", image.size, record.status.value if record else ""))

    watcher = _watch(settings, spec.job_id, on_event)
    run_worker(settings, pipeline=PatternPipeline(step_delay=0.4), burst=True)
    watcher.join(10)

    assert seen, "no preview event"
    for url, fmt, size, status in seen:
        assert url.startswith(f"/v1/videos/{spec.job_id}/content?variant=preview&v=")
        assert fmt == "JPEG" and size == (64, 48) and status == "in_progress"
    steps = [int(url.rsplit("=", 1)[1]) for url, *_ in seen]
    assert steps == sorted(steps) and len(steps) >= 2
    assert not storage.exists(preview_key(spec.output_key))


@pytest.mark.parametrize("delete", [False, True], ids=["cancel", "delete"])
def test_cancel_or_delete_between_decode_chunks_stops_the_job(tmp_path, delete):
    settings = test_settings(tmp_path)
    spec = submit(settings, frames=17, steps=2)  # 5 latent frames: 5 decode chunks
    store, storage = _store(settings), make_storage(settings.storage)
    decoded: list[int] = []

    def on_event(event: JobEvent) -> None:
        if event.stage == "vae_decode" and event.event == "stage":
            decoded.append(event.step or 0)
            if event.step == 2:  # what the gateway does on POST .../cancel, or on DELETE
                store.request_cancel(spec.job_id, ttl_s=60)
                if delete:
                    store.delete(spec.job_id)

    watcher = _watch(settings, spec.job_id, on_event, timeout=15)
    run_worker(settings, pipeline=PatternPipeline(decode_delay=0.3), burst=True)
    watcher.join(1 if delete else 10)

    assert max(decoded) == 2  # the next chunk saw the flag: no further chunk, no encode, no upload
    for key in (spec.output_key, f"{spec.output_key}.jpg", preview_key(spec.output_key)):
        assert not storage.exists(key), key
    job = Queue(settings.worker.queues[0], connection=store.r, serializer=RQ_SERIALIZER).fetch_job(spec.job_id)
    assert job is not None and job.return_value() == {"status": "cancelled"}
    if delete:
        assert store.get(spec.job_id) is None
        assert not store.r.exists(store.keys.events(spec.job_id))  # the stream was not brought back
        return
    record = store.get(spec.job_id)
    assert record is not None and record.status is JobStatus.cancelled and record.progress < 100
    assert record.error is not None and record.error.code == "cancelled"
    events = _events(settings, spec.job_id)
    assert events[-1].event == "failed" and events[-1].error == {"code": "cancelled",
                                                                  "message": "cancelled while running"}
    assert not any(e.stage in ("video_encode", "upload") for e in events)


def test_a_rerun_never_shows_less_progress_than_its_stream_did(tmp_path):
    settings = test_settings(tmp_path)
    spec = submit(settings, frames=5, steps=2)
    log = EventLog(redis.Redis.from_url(settings.redis.url), Keys(settings.redis.key_prefix))
    log.publish(spec.job_id, JobEvent(event="stage", progress=60, elapsed_s=1.0, stage="denoise", step=1, steps=2),
                ttl_s=600)  # a first attempt that died mid-denoise
    run_worker(settings, pipeline=PatternPipeline(), burst=True)
    progress = [e.progress for e in _events(settings, spec.job_id)]
    assert progress == sorted(progress) and progress[0] == 60 and progress[-1] == 100


def test_a_second_delivery_of_a_running_job_is_skipped_and_a_later_one_of_an_ended_job_too(tmp_path, caplog):
    """A job can land on its queue twice (a client retry re-ran the enqueue of a transaction whose reply was
    lost). The delivery that finds the job's lease held by a live worker leaves it alone; one that comes
    after the job ended leaves it alone too."""
    settings = test_settings(tmp_path)
    store = _store(settings)
    q = Queue(settings.worker.queues[0], connection=store.r, serializer=RQ_SERIALIZER)
    spec = submit(settings, frames=5, size=(64, 48))
    store.r.set(store.keys.lease(spec.job_id), "w-elsewhere", ex=30)  # running on another worker now
    with caplog.at_level("WARNING", logger="turbovid.worker"):
        run_worker(settings, pipeline=PatternPipeline(), burst=True)
    record = store.get(spec.job_id)
    assert record is not None and record.status is JobStatus.queued and record.attempts == 0
    assert store.r.get(store.keys.lease(spec.job_id)) == b"w-elsewhere"  # not taken, not released
    assert any(f"job {spec.job_id} is being run by worker w-elsewhere" in r.getMessage() for r in caplog.records)

    # the other worker is gone (its lease with it); the job is on the queue twice: it runs once
    store.r.delete(store.keys.lease(spec.job_id))
    q.enqueue_call("worker.task.run_job", args=(spec.model_dump_json(),), job_id=spec.job_id)
    store.r.rpush(q.key, spec.job_id)
    assert q.get_job_ids() == [spec.job_id, spec.job_id]
    run_worker(settings, pipeline=PatternPipeline(), burst=True)
    record = store.get(spec.job_id)
    assert record is not None and record.status is JobStatus.completed and record.attempts == 1

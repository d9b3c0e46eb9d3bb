"""Helpers for the worker integration tests: a small numpy test pipeline, job submission the way the
gateway does it, and a script entry to run a worker subprocess with that pipeline.

The pipeline is a stand-in with the real pipeline's interface (frames [F, H, W, 3] uint8, per-step
callback, StageTimings); tests that need the real wan-tiny model live in tests/e2e.
"""

from __future__ import annotations

import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis
from rq import Queue

from models.pipeline_types import GenerationRequest, GenerationResult, StageTimings, StepCallback
from contract.jobs import RQ_SERIALIZER, JobSpec
from contract.jobstore import JobStore
from contract.settings import Settings
from worker.reaper import enqueue_spec


@dataclass
class PatternPipeline:
    """Deterministic frames whose brightness encodes the frame index; sleeps `step_delay` per step.

    A prompt containing "boom" raises RuntimeError (a generation failure); for I2V the frames take
    the mean colour of the conditioning image so tests can see the image was used.
    """

    step_delay: float = 0.0

    def generate(self, request: GenerationRequest, *, on_step: StepCallback | None = None) -> GenerationResult:
        timings = StageTimings()
        t0 = time.perf_counter()
        if "boom" in request.prompt:
            raise RuntimeError("synthetic generation failure (boom)")
        timings.text_encode = time.perf_counter() - t0
        base = np.zeros(3, np.float32)
        if request.kind == "i2v":
            if request.image is None:
                raise ValueError("i2v needs an image")
            base = request.image.reshape(-1, 3).mean(0).astype(np.float32)
            timings.image_encode = 0.001
        for i in range(request.num_steps):
            t = time.perf_counter()
            time.sleep(self.step_delay)
            timings.denoise_steps.append(time.perf_counter() - t)
            if on_step is not None:
                on_step(i + 1, request.num_steps)
        f, h, w = request.num_frames, request.height, request.width
        level = np.linspace(20, 230, f, dtype=np.float32)[:, None, None, None]
        frames = np.broadcast_to(0.5 * level + 0.5 * base, (f, h, w, 3)).clip(0, 255).astype(np.uint8)
        return GenerationResult(frames=np.ascontiguousarray(frames), timings=timings, seed=request.seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def submit(settings: Settings, *, kind: str = "t2v", prompt: str = "a red fox", frames: int = 5,
           size: tuple[int, int] = (64, 48), steps: int = 4, image_key: str | None = None,
           created_at: float | None = None, webhook_url: str | None = None) -> JobSpec:
    """Create the job record and enqueue it like the gateway does."""
    job_id = f"video_{uuid.uuid4().hex[:16]}"
    spec = JobSpec(
        job_id=job_id, owner="test", model=settings.worker.model, kind=kind,  # type: ignore[arg-type]
        prompt=prompt, width=size[0], height=size[1], num_frames=frames, num_steps=steps, seed=7,
        image_key=image_key, output_key=f"outputs/{job_id}.mp4",
        created_at=time.time() if created_at is None else created_at,
    )
    client = redis.Redis.from_url(settings.redis.url)
    JobStore(client, settings.redis.key_prefix).create(spec, ttl_s=3600, webhook_url=webhook_url)
    queue = Queue(settings.worker.model, connection=client, serializer=RQ_SERIALIZER)
    enqueue_spec(queue, job_id, spec.model_dump_json(), settings.queue)
    return spec


def test_settings(tmp: Path, *, model: str | None = None, **worker: object) -> Settings:
    model = model or f"test-{uuid.uuid4().hex[:8]}"
    return Settings(
        dev_mode=True,
        redis={"url": "redis://127.0.0.1:6379/0", "key_prefix": f"tvtest-{uuid.uuid4().hex[:8]}"},
        storage={"backend": "local", "local_dir": tmp / "storage"},
        auth={"enabled": False},
        queue={"heartbeat_s": 1, "max_requeues": 1, "job_timeout_s": 120},
        gateway={"models": [model], "default_model": model},
        worker={"model": model, "device": "cpu", "dtype": "float32", "metrics_port": 0, "warmup": False,
                **worker},
    )


test_settings.__test__ = False  # type: ignore[attr-defined]


def main() -> int:
    """`python tests/integration/worker_support.py STEP_DELAY`: a worker with PatternPipeline;
    settings come from TURBOVID_* like any worker."""
    from worker.main import run_worker

    delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    return run_worker(Settings(), pipeline=PatternPipeline(step_delay=delay))


if __name__ == "__main__":
    raise SystemExit(main())

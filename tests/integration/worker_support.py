"""Helpers for the worker integration tests: a small numpy test pipeline, job submission the way the
gateway does it, and a script entry to run a worker subprocess with that pipeline.

The pipeline is a stand-in with the real pipeline's interface (`card`, `solver`, `attention`,
`linear`, `capabilities()`, `generate(params, image=, on_step=)` → frames [F, H, W, 3] uint8 +
StageTimings; `on_step` a plain callback or a `Progress`, which hears the stages, previews and the
frames chunk by chunk like the real one reports them); tests that need the real wan-tiny model live
in tests/e2e. Each test serves its own
RQ queue (`settings.worker.queues`) so tests never take each other's jobs.
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

from contract.catalog import MODELS, ModelCard
from contract.jobs import Capabilities, GenerationParams, JobSpec
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.queue import JobQueue
from contract.settings import Settings
from models.pipeline_types import (
    GenerationResult,
    Progress,
    StageEvent,
    StageTimings,
    StepCallback,
    as_progress,
)

TEST_MODEL = "wan-tiny"  # the card the test pipeline plays: T2V and (via wan-tiny-i2v) I2V


@dataclass
class PatternPipeline:
    """Deterministic frames whose brightness encodes the frame index; sleeps `step_delay` per step and
    `decode_delay` per decode chunk (one latent frame: 1 frame, then 4 at a time).

    A prompt containing "boom" raises RuntimeError (a generation failure); for I2V the frames take
    the mean colour of the conditioning image so tests can see the image was used. It runs the rCM
    solver with dense attention unless told otherwise (`attention="sla"` honours `sla_topk`).
    """

    step_delay: float = 0.0
    card: ModelCard = MODELS[TEST_MODEL]
    solver: str = "rcm"
    attention: str = "dense"
    linear: str = "native"
    fail_with: BaseException | None = None  # raised from generate (e.g. an out-of-memory error)
    decode_delay: float = 0.0

    def capabilities(self) -> Capabilities:
        return Capabilities(solver=self.solver, sla=self.attention in ("sla", "sagesla"))  # type: ignore[arg-type]

    def generate(self, params: GenerationParams, *, image: np.ndarray | None = None,
                 on_step: StepCallback | Progress | None = None) -> GenerationResult:
        progress = as_progress(on_step)
        timings = StageTimings()
        t0 = time.perf_counter()
        if self.fail_with is not None:
            raise self.fail_with
        progress.on_stage(StageEvent("text_encode", 0, 1))
        if "boom" in params.prompt:
            raise RuntimeError("synthetic generation failure (boom)")
        timings.text_encode = time.perf_counter() - t0
        progress.on_stage(StageEvent("text_encode", 1, 1))
        base = np.zeros(3, np.float32)
        if params.kind == "i2v":
            if image is None:
                raise ValueError("i2v needs an image")
            progress.on_stage(StageEvent("image_encode", 0, 1))
            base = image.reshape(-1, 3).mean(0).astype(np.float32)
            timings.image_encode = 0.001
            progress.on_stage(StageEvent("image_encode", 1, 1))
        steps = params.num_steps or 4
        f, h, w = params.num_frames, params.height, params.width
        level = np.linspace(20, 230, f, dtype=np.float32)[:, None, None, None]
        frames = np.broadcast_to(0.5 * level + 0.5 * base, (f, h, w, 3)).clip(0, 255).astype(np.uint8)
        progress.on_stage(StageEvent("denoise", 0, steps))
        for i in range(steps):
            t = time.perf_counter()
            time.sleep(self.step_delay)
            timings.denoise_steps.append(time.perf_counter() - t)
            progress.on_stage(StageEvent("denoise", i + 1, steps))
            if progress.wants_preview:  # the middle frame at "latent" resolution, brighter each step
                small = frames[f // 2, ::8, ::8] * (i + 1) // steps
                progress.on_preview(i + 1, steps, np.ascontiguousarray(small, dtype=np.uint8))
        t = time.perf_counter()
        t_lat = (f - 1) // 4 + 1
        progress.on_stage(StageEvent("vae_decode", 0, t_lat))
        start = 0
        for k in range(t_lat):
            time.sleep(self.decode_delay)
            n = 1 if k == 0 else 4
            progress.on_frames(start, frames[start : start + n])
            progress.on_stage(StageEvent("vae_decode", k + 1, t_lat))
            start += n
        timings.vae_decode = time.perf_counter() - t
        return GenerationResult(frames=np.ascontiguousarray(frames), timings=timings, seed=params.seed or 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def submit(settings: Settings, *, kind: str = "t2v", prompt: str = "a red fox", frames: int = 5,
           size: tuple[int, int] = (64, 48), steps: int = 4, image_key: str | None = None,
           created_at: float | None = None, webhook_url: str | None = None, **knobs: object) -> JobSpec:
    """Create the job record and enqueue it like the gateway does (on the test's own queue)."""
    job_id = f"video_{uuid.uuid4().hex[:16]}"
    params = GenerationParams(kind=kind, prompt=prompt, width=size[0], height=size[1],  # type: ignore[arg-type]
                              num_frames=frames, num_steps=steps, seed=7, solver="rcm", **knobs)  # type: ignore[arg-type]
    spec = JobSpec(
        job_id=job_id, owner="test", model=TEST_MODEL if kind == "t2v" else "wan-tiny-i2v", params=params,
        image_key=image_key, output_key=f"outputs/{job_id}.mp4",
        created_at=time.time() if created_at is None else created_at,
    )
    client = redis.Redis.from_url(settings.redis.url)
    JobStore(client, Keys(settings.redis.key_prefix)).create(spec, ttl_s=3600, webhook_url=webhook_url)
    JobQueue(client, settings.queue).submit(spec, queue_name=settings.worker.queues[0])
    return spec


def test_settings(tmp: Path, **worker: object) -> Settings:
    queue = f"test-{uuid.uuid4().hex[:8]}"
    return Settings(
        dev_mode=True,
        redis={"url": "redis://127.0.0.1:6379/0", "key_prefix": f"tvtest-{uuid.uuid4().hex[:8]}"},
        storage={"backend": "local", "local_dir": tmp / "storage"},
        auth={"enabled": False},
        queue={"heartbeat_s": 1, "max_requeues": 1, "job_timeout_s": 120},
        worker={"model": TEST_MODEL, "queues": [queue], "device": "cpu", "dtype": "float32", "metrics_port": 0,
                "warmup": False, **worker},
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

"""A running job's progress: the percentage in the job hash, the live events, cancel checks, previews.

`JobProgress` is the `models.pipeline_types.Progress` the worker hands to `pipeline.generate`. Each
stage report becomes (1) the job hash's progress (`JobStore.set_progress`, what polling reads), (2) a
"stage" `JobEvent` on the job's stream (contract/events.py, what `GET /v1/videos/{id}/events` serves),
and (3) a check of the cancel flag (and of a worker shutdown while denoising): raising `JobCancelled` or
`ShutdownRequeue` from the callback stops the pipeline at that step or decode chunk.

Progress, monotonic, from the stage bands below (units within a stage are linear): started 1,
text_encode → 5, [image_encode → 8], denoise steps 8 → 80, VAE decode chunks 80 → 95, video_encode
(the encode tail after the last chunk) 95 → 97, upload 97 → 99; 100 is set by `JobStore.finish` with
the content in storage and published as "completed" after it. A job re-run after a crash continues
from the last progress its stream showed (it never goes back).

Previews: each step's x0 estimate (RGB at latent resolution, from the pipeline) is JPEG-encoded at
`PREVIEW_WIDTH` and uploaded to `preview_key(spec.output_key)` on a thread of its own (the newest
preview wins; the sampler never waits for storage), then published as a "preview" event whose
`preview` is `preview_url(job_id, step)`. `close()` stops that thread; `remove_preview()` deletes the
object (the worker does so when the job ends: the video replaces it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from contract.events import EventLog, EventType, JobEvent, preview_key, preview_url
from contract.jobs import JobSpec
from contract.jobstore import JobStore
from contract.storage import Storage
from models.pipeline_types import Progress, StageEvent
from worker.encode import encode_jpeg

log = logging.getLogger("turbovid.worker")

# (start, end) percent of each stage; a stage's units (steps, chunks) move linearly through its band.
BANDS: dict[str, tuple[int, int]] = {
    "text_encode": (1, 5),
    "image_encode": (5, 8),
    "denoise": (8, 80),
    "vae_decode": (80, 95),
    "video_encode": (95, 97),
    "upload": (97, 99),
}
STARTED = 1
PREVIEW_WIDTH = 320  # pixels (at most the video's width)
PREVIEW_QUALITY = 80
# A SIGTERM after this fraction of the denoise steps lets the job finish instead of re-queueing it.
NEARLY_DONE = 0.75


class JobCancelled(Exception):
    """Raised from a progress callback when the job's cancel flag is set or the job was deleted."""


class ShutdownRequeue(Exception):
    """Raised from a progress callback when the worker is asked to stop and the job is not nearly done."""


def percent(event: StageEvent) -> int:
    lo, hi = BANDS[event.stage]
    return lo + (hi - lo) * event.done // max(event.total, 1)


class JobProgress(Progress):
    """Progress, events, cancel checks and previews of one running job (see the module docstring).

    on_frames: where decoded frame chunks go (the MP4 encoder); refresh: called at every report (the
    job's lease); stop: the worker's shutdown flag."""

    wants_preview = True

    def __init__(self, spec: JobSpec, *, store: JobStore, events: EventLog, storage: Storage, ttl_s: int,
                 refresh: Callable[[], None] = lambda: None, stop: threading.Event | None = None,
                 on_frames: Callable[[int, np.ndarray], None] | None = None, previews: bool = True) -> None:
        self.spec, self.store, self.events, self.storage = spec, store, events, storage
        self.ttl_s, self.refresh, self.stop = ttl_s, refresh, stop
        self.frames_sink = on_frames
        self.wants_preview = previews
        last = events.last(spec.job_id)
        self.progress = last[1].progress if last is not None else 0  # a re-run never goes back
        self.stage: str | None = None
        self._lock = threading.Lock()  # one publisher at a time: the stream's progress stays ordered
        self._previews: _PreviewUploader | None = None
        self.preview_key = preview_key(spec.output_key)

    # events -------------------------------------------------------------------------------------
    def _emit(self, event: EventType, progress: int | None = None, **fields: Any) -> int:
        with self._lock:
            if progress is not None:
                self.progress = max(self.progress, min(99, progress))
            elapsed = round(time.time() - self.spec.created_at, 3)
            self.events.publish(self.spec.job_id, JobEvent(event=event, progress=self.progress,
                                                           elapsed_s=elapsed, **fields), ttl_s=self.ttl_s)
            return self.progress

    def started(self) -> None:
        self._emit("started", STARTED)

    def terminal(self, event: EventType, *, ttl_s: int, error: dict[str, str] | None = None) -> None:
        """The job's last event ("completed" at 100, after the record says so; or "failed")."""
        self.close()
        with self._lock:
            if event == "completed":
                self.progress = 100
            elapsed = round(time.time() - self.spec.created_at, 3)
            self.events.publish(self.spec.job_id, JobEvent(event=event, progress=self.progress, elapsed_s=elapsed,
                                                           error=error), ttl_s=ttl_s)

    # Progress callbacks (the pipeline's thread) -------------------------------------------------------
    def on_stage(self, event: StageEvent) -> None:
        self.refresh()
        self.stage = event.stage
        with self._lock:
            self.progress = max(self.progress, min(99, percent(event)))
            progress = self.progress
        job_id = self.spec.job_id
        # Checked before publishing: a deleted job's stream must not come back.
        if not self.store.set_progress(job_id, progress) or self.store.cancel_requested(job_id):
            raise JobCancelled(f"{job_id} during {event.stage} {event.done}/{event.total}")
        self._emit("stage", stage=event.stage, step=event.done, steps=event.total)
        if (self.stop is not None and self.stop.is_set() and event.stage in ("text_encode", "image_encode", "denoise")
                and event.done / max(event.total, 1) < NEARLY_DONE):
            raise ShutdownRequeue(job_id)

    def on_preview(self, step: int, total: int, image: np.ndarray) -> None:
        if self._previews is None:
            self._previews = _PreviewUploader(self)
        self._previews.submit(step, total, image)

    def on_frames(self, start: int, frames: np.ndarray) -> None:
        if self.frames_sink is not None:
            self.frames_sink(start, frames)

    # previews -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the preview thread (waits for an upload in flight)."""
        if self._previews is not None:
            self._previews.close()

    def remove_preview(self) -> None:
        self.close()
        if self._previews is not None:
            try:
                self.storage.delete(self.preview_key)
            except Exception:  # a stale preview is not worth failing a job for
                log.warning("could not delete preview %s", self.preview_key, exc_info=True)

    def _publish_preview(self, step: int, total: int, image: np.ndarray) -> None:
        width = min(PREVIEW_WIDTH, self.spec.params.width)
        self.storage.put_bytes(encode_jpeg(image, quality=PREVIEW_QUALITY, width=width), self.preview_key,
                               "image/jpeg")
        if not self.store.r.exists(self.store.keys.job(self.spec.job_id)):
            return  # deleted meanwhile: its stream is gone (the worker removes the object when it stops)
        self._emit("preview", stage="denoise", step=step, steps=total,
                   preview=preview_url(self.spec.job_id, step))


class _PreviewUploader:
    """One thread per job: JPEG + upload + "preview" event for the newest preview handed to it."""

    def __init__(self, owner: JobProgress) -> None:
        self.owner = owner
        self._cond = threading.Condition()
        self._latest: tuple[int, int, np.ndarray] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"preview-{owner.spec.job_id}", daemon=True)
        self._thread.start()

    def submit(self, step: int, total: int, image: np.ndarray) -> None:
        with self._cond:
            self._latest = (step, total, image)
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._latest is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return  # a preview not yet sent when the job ends is dropped
                item, self._latest = self._latest, None
            assert item is not None
            try:
                self.owner._publish_preview(*item)
            except Exception:
                log.warning("preview of job %s failed", self.owner.spec.job_id, exc_info=True)

"""The worker's side of the contract, in-process on real Redis: params checked against what the
pipeline runs, error codes by cause, and the advertisement of what the worker runs."""

from __future__ import annotations

import json

import redis
import torch
from worker_support import PatternPipeline, submit, test_settings

from contract.jobs import ErrorCode, JobStatus
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.workers import WorkerInfo, WorkerRegistry
from worker.main import run_worker


def _store(settings) -> JobStore:
    return JobStore(redis.Redis.from_url(settings.redis.url), Keys(settings.redis.key_prefix))


def _failed(settings, job_id: str):
    rec = _store(settings).get(job_id)
    assert rec is not None and rec.status is JobStatus.failed, rec
    assert rec.error is not None
    return rec.error


def test_params_the_pipeline_cannot_honour_fail_with_unsupported_param_naming_it(tmp_path):
    settings = test_settings(tmp_path)
    topk = submit(settings, sla_topk=0.2)  # the pipeline runs dense attention: topk would be dropped
    cfg = submit(settings, guidance_scale=5.0)  # rCM has no classifier-free guidance
    steps = submit(settings, steps=8)  # rCM takes 1-4 steps
    good = submit(settings)
    run_worker(settings, pipeline=PatternPipeline(), burst=True)

    for spec, param in ((topk, "sla_topk"), (cfg, "guidance_scale"), (steps, "num_steps")):
        err = _failed(settings, spec.job_id)
        assert err.code is ErrorCode.unsupported_param and err.message.startswith(f"{param}:"), err
    assert _store(settings).get(good.job_id).status is JobStatus.completed  # type: ignore[union-attr]

    # The same sla_topk runs on a worker whose pipeline runs SLA attention.
    settings2 = test_settings(tmp_path)
    ok = submit(settings2, sla_topk=0.2)
    run_worker(settings2, pipeline=PatternPipeline(attention="sla"), burst=True)
    assert _store(settings2).get(ok.job_id).status is JobStatus.completed  # type: ignore[union-attr]


def test_error_codes_by_type_oom_and_internal_value_errors(tmp_path):
    cases = [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), ErrorCode.out_of_memory),
        (torch.OutOfMemoryError("out of memory"), ErrorCode.out_of_memory),
        # a message that merely mentions memory is not an OOM; an internal ValueError is not the client's
        (RuntimeError("OutOfMemoryError in a log line"), ErrorCode.generation_failed),
        (ValueError("shapes do not match"), ErrorCode.generation_failed),
    ]
    for exc, code in cases:
        settings = test_settings(tmp_path)
        spec = submit(settings)
        run_worker(settings, pipeline=PatternPipeline(fail_with=exc), burst=True)
        err = _failed(settings, spec.job_id)
        assert err.code is code, (exc, err)
        assert str(exc) in err.message


class _Watching(PatternPipeline):
    """Reads the worker's advertisement (and its TTL) from Redis at each generate call; at the job's
    first step it deletes it, as a Redis that lost its data would, and checks it comes back."""

    def __init__(self, client: redis.Redis, keys: Keys, name: str, queue: str) -> None:
        super().__init__(step_delay=0.7)
        self.r, self.keys, self.name, self.queue = client, keys, name, queue
        self.seen: list[tuple[dict, int]] = []
        self.back_after_loss: bool | None = None

    def _look(self) -> None:
        raw = self.r.get(self.keys.worker(self.name))
        assert raw is not None
        self.seen.append((json.loads(raw), int(self.r.ttl(self.keys.worker(self.name)))))

    def generate(self, params, *, image=None, on_step=None):
        self._look()

        def hook(done: int, total: int) -> None:
            if done == 1 and params.prompt != "warm-up":
                self.r.delete(self.keys.worker(self.name), self.keys.workers(self.queue))
            if done == total and params.prompt != "warm-up":
                self.back_after_loss = bool(self.r.exists(self.keys.worker(self.name))) and bool(
                    self.r.sismember(self.keys.workers(self.queue), self.name))
            if on_step is not None:
                on_step(done, total)

        return super().generate(params, image=image, on_step=hook)


def test_worker_advertises_loading_then_ready_with_ttl_and_withdraws_on_exit(tmp_path):
    settings = test_settings(tmp_path, name="adv-worker", warmup=True, attention="sla")
    client = redis.Redis.from_url(settings.redis.url)
    keys = Keys(settings.redis.key_prefix)
    queue = settings.worker.queues[0]
    submit(settings, steps=3)
    pipeline = _Watching(client, keys, "adv-worker", queue)
    pipeline.attention = "sla"
    run_worker(settings, pipeline=pipeline, burst=True)

    (warm, warm_ttl), (job, job_ttl) = pipeline.seen
    ttl = 3 * settings.queue.heartbeat_s
    assert warm["ready"] is False and job["ready"] is True  # warm-up happens before ready
    assert 0 < warm_ttl <= ttl and 0 < job_ttl <= ttl
    info = WorkerInfo.model_validate(job)
    assert (info.name, info.models, info.solver, info.attention, info.linear, info.device, info.dtype) == (
        "adv-worker", [queue], "rcm", "sla", "native", "cpu", "float32")
    assert pipeline.back_after_loss is True  # the heartbeat re-registered after the keys vanished
    # Clean exit: withdrawn at once, not left to expire.
    assert not client.exists(keys.worker("adv-worker"))
    assert not client.sismember(keys.workers(queue), "adv-worker")
    assert WorkerRegistry(client, keys).live(queue) == []

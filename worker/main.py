"""The worker process: load the pipeline once, warm it up, serve the model's RQ queues in-process.

    settings → redis, JobStore, JobQueue, storage, metrics server (/metrics, /healthz, /ready)
    → advertise (ready=False) + heartbeat thread → pipeline (loaded ONCE) → warm-up → advertise (ready)
      + /ready 200 → reaper pass → TurboWorker(queues).work()  [heartbeat every
      settings.queue.heartbeat_s: advertisement, lease, RQ worker key, reaper, slot sweep] → withdraw

Jobs run in this process (rq's SimpleWorker: CUDA contexts and preloaded weights do not survive a
fork); the TurboWorker hands each job its `WorkerContext` (worker/task.py). The worker advertises
what it runs (`contract.workers.WorkerInfo`: queues, solver, attention, linear, device, dtype) under
a key whose TTL is three heartbeats, so the gateway sees a killed worker vanish and a worker
re-registers by itself after Redis lost its data. Signals: the first SIGTERM/SIGINT sets the stop
flag — an idle worker exits at once, a busy one stops at the next denoise step and re-queues the job
(or lets it finish when nearly done), then exits; a second signal is a cold shutdown whose job the
reaper recovers via its expired lease.

`worker.gpus` N > 1 (`turbovid worker --gpus N`): this process is rank 0 of N sequence-parallel ranks
and the only RQ consumer; worker/ranks.py starts and drives the other N-1 (one job at a time on all of
them) and a lost rank fails its job and makes the worker exit non-zero for a restart. The memory
budget (`worker.gpu_memory_gb`) decides what `load_model_pipeline` offloads (worker/memory.py).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job

from contract.catalog import get_card
from contract.jobs import ErrorCode, JobStatus
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.queue import RQ_SERIALIZER, JobQueue
from contract.settings import ConfigError, Settings
from contract.storage import make_storage
from contract.workers import WorkerInfo, WorkerRegistry
from worker import warmup
from worker.memory import GIB, checkpoint_gib, plan_memory
from worker.metrics import WorkerMetrics, cuda_memory_reader
from worker.ranks import Loader, RankedPipeline, check_world, start_ranks
from worker.reaper import Lease, lease_ttl_s, reap, sweep_slots
from worker.task import Pipeline, TurboJob, WorkerContext, fail_job

log = logging.getLogger("turbovid.worker")


def resolve_device(device: str) -> str:
    """ "auto" → "cuda" when a GPU is available, else "cpu"; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """ "auto" → bfloat16 on CUDA, float32 elsewhere (bf16 matmuls are slow or missing on CPUs)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def redis_client(url: str) -> redis.Redis:
    """The worker's Redis client: a command that meets a dropped connection (Redis restarting,
    failing over) is retried with backoff for ~15 s instead of failing the job it serves."""
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=12)
    return redis.Redis.from_url(url, retry=retry, retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                                health_check_interval=30)


def on_gpu(settings: Settings, index: int) -> Settings:
    """`turbovid worker --gpu N`: the worker on `cuda:N` with its metrics server on the configured port
    + N (0 stays 0: disabled), so one worker per GPU runs on a host without colliding."""
    if index < 0:
        raise ConfigError(f"--gpu: {index} is not a GPU index (0, 1, ...)")
    w = settings.worker
    port = w.metrics_port + index if w.metrics_port else 0
    return settings.model_copy(update={"worker": w.model_copy(update={"device": f"cuda:{index}",
                                                                      "metrics_port": port})})


def load_model_pipeline(settings: Settings, device: str, dtype: str) -> Pipeline:
    """The real pipeline for `settings.worker` (imports torch and models lazily), offloading what the
    memory budget wants (worker/memory.py: `worker.gpu_memory_gb`, else the device's own memory)."""
    import torch

    from kernels.adaln import KERNEL_ENV as NORM_KERNEL_ENV
    from kernels.conv3d_igemm import KERNEL_ENV as CONV_KERNEL_ENV
    from kernels.int8_quant import KERNEL_ENV as QUANT_KERNEL_ENV
    from kernels.sagesla import KERNEL_ENV
    from kernels.w8a8 import BACKEND_ENV, gemm_kernel
    from kernels.w8a8_blockq import FFN_ENV
    from models.pipeline import load_pipeline

    w = settings.worker
    os.environ[BACKEND_ENV] = w.w8a8_backend  # the kernels read it (this process, and the ranks it starts)
    os.environ[FFN_ENV] = w.w8a8_ffn
    os.environ[KERNEL_ENV] = w.sagesla_kernel
    os.environ[QUANT_KERNEL_ENV] = w.quant_kernel
    os.environ[CONV_KERNEL_ENV] = w.conv_kernel
    os.environ[NORM_KERNEL_ENV] = w.norm_kernel
    torch_dtype = getattr(torch, dtype)
    cuda = device.startswith("cuda")
    device_gib = torch.cuda.get_device_properties(device).total_memory / GIB if cuda else None
    card, dtype_bytes = get_card(w.model), torch.finfo(torch_dtype).bits // 8
    weights = checkpoint_gib(card, list(w.checkpoint), linear=w.linear, dtype_bytes=dtype_bytes, solver=w.solver)
    plan = plan_memory(card, budget_gib=w.gpu_memory_gb, device_gib=device_gib, linear=w.linear,
                       dtype_bytes=dtype_bytes, weights=weights)
    log.info("%s (%s)", plan.describe(), device)
    if plan.fraction is not None:
        index = torch.device(device).index  # "cuda": the current device (torch.cuda wants an index here)
        torch.cuda.set_per_process_memory_fraction(plan.fraction, torch.cuda.current_device() if index is None else index)
    pipeline = load_pipeline(
        w.model, list(w.checkpoint), device=device, dtype=torch_dtype, attention=w.attention,
        linear=w.linear, cache_dir=w.cache_dir, solver=w.solver, offload_experts=plan.offload_experts,
        offload_text_encoder=plan.offload_text_encoder,
    )
    if cuda and pipeline.linear == "w8a8":
        log.info("int8 GEMM kernel: %s (worker.w8a8_backend %s)", gemm_kernel(torch.device(device)), w.w8a8_backend)
    if plan.vae_budget_gib is not None:  # VAE decode/encode chunks sized to what the budget leaves
        pipeline.vae.memory_budget = int(plan.vae_budget_gib * GIB)
    pipeline.vae.conv_impl = w.vae_conv
    # CUDA graphs keep the DiT forward's activations reserved: not under a memory budget
    pipeline.cuda_graphs = w.cuda_graphs and cuda and plan.fraction is None
    if w.cuda_graphs and cuda and plan.fraction is not None:
        log.info("CUDA graphs off: worker.gpu_memory_gb caps this worker's memory")
    return pipeline  # type: ignore[no-any-return]


def offloads(pipeline: Any) -> list[str]:
    """What the loaded pipeline keeps off the device between uses (its memory plan's offloads), as advertised
    in /v1/models: "experts" (two-expert models: one device slot), "text_encoder"."""
    pipe = pipeline.pipe if isinstance(pipeline, RankedPipeline) else pipeline  # ranks: rank 0's, planned alike
    return [name for name, attr in (("experts", "expert_offload"), ("text_encoder", "text_encoder_offload"))
            if getattr(pipe, attr, None) is not None]


def kernels_in_use(pipeline: Any, device: str) -> dict[str, str]:
    """Which implementation runs each fast-path op in this process once warm, as /v1/models shows it, so that a
    fallback to the slower kernels is visible (e.g. a Triton upgrade whose Gluon kernels fail their first-call
    checks): "gemm" gluon | triton-tma | portable, "quant" gluon | mixed | triton and "norm" gluon | mixed | triton
    (W8A8: the activation quantization, the fused residual norms), "attention" gluon |
    triton (SageSLA), "conv" gluon | mixed | triton (the VAE's 96- and 192-channel convs, sm90+). Empty on the CPU
    and for a ranked worker (its ranks run the kernels); call it after the warm-up, which makes the kernels'
    choices."""
    if not device.startswith("cuda") or isinstance(pipeline, RankedPipeline):
        return {}
    import torch

    from kernels.w8a8 import _device_index

    dev = torch.device(device)
    index = _device_index(dev)
    out: dict[str, str] = {}
    if pipeline.linear == "w8a8":
        from kernels import adaln, int8_quant, w8a8

        out["gemm"] = w8a8.gemm_kernel(dev)
        out["quant"] = int8_quant.kernel_in_use(index)
        out["norm"] = adaln.kernel_in_use(index)
    if pipeline.attention == "sagesla":
        from kernels import sagesla

        out["attention"] = sagesla.kernel_in_use(index)
    from kernels import conv3d_igemm

    vae = getattr(pipeline, "vae", None)
    if getattr(vae, "conv_impl", None) == "igemm" and conv3d_igemm.available(dev):  # older GPUs, taps2d: cuDNN
        out["conv"] = conv3d_igemm.kernel_in_use(index)
    return out


class TurboWorker(SimpleWorker):
    """SimpleWorker that runs each job with its WorkerContext, shares its stop flag with the job and
    re-queues interrupted jobs."""

    job_class = TurboJob

    def __init__(self, *args: Any, ctx: WorkerContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx = ctx

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.ctx.stop.set()
        super().request_stop(signum, frame)

    def execute_job(self, job: Job, queue: Queue) -> None:
        assert isinstance(job, TurboJob)
        job.ctx = self.ctx
        self.ctx.requeue_after = None
        super().execute_job(job, queue)
        if self.ctx.requeue_after == job.id:
            record = self.ctx.store.get(job.id)
            if record is not None and record.status is JobStatus.queued:
                self.ctx.jobs.submit(record.spec, at_front=True, queue_name=queue.name)
            self.ctx.requeue_after = None
        broken = getattr(self.ctx.pipeline, "broken", None)  # a RankedPipeline that lost a rank
        if broken is not None:
            log.error("worker %s: %s; exiting for a restart", self.name, broken)
            raise StopRequested()


class Heartbeat(threading.Thread):
    """Every `interval` s: renew the advertisement (re-creating it if Redis lost it); once serving,
    also refresh the running job's lease and the RQ worker key, run the reaper and (one worker of the
    fleet per interval) the slot sweep."""

    def __init__(self, settings: Settings, registry: WorkerRegistry, info: WorkerInfo) -> None:
        super().__init__(name="turbovid-heartbeat", daemon=True)
        self.settings = settings
        self.registry = registry
        self.info = info  # replaced (ready=True) once the pipeline is warm
        self.worker: TurboWorker | None = None  # set once the RQ worker exists
        self.done = threading.Event()

    def advertise(self) -> None:
        self.registry.advertise(self.info, ttl_s=lease_ttl_s(self.settings.queue))

    def run(self) -> None:
        q = self.settings.queue
        while not self.done.wait(q.heartbeat_s):
            try:
                self.advertise()
            except Exception:
                log.exception("heartbeat: cannot advertise worker %s", self.info.name)
                continue
            try:
                worker = self.worker
                if worker is None:
                    continue
                ctx = worker.ctx
                ctx.lease.refresh()
                if ctx.lease.job_id is not None:
                    # SimpleWorker sets its key's TTL to the job timeout while busy; keep it short so
                    # a dead worker disappears from the worker count within a few heartbeats.
                    worker.heartbeat(timeout=max(lease_ttl_s(q), 15))
                for queue in worker.queues:
                    reap(queue, ctx.store, ctx.jobs, q, self.settings.webhooks)
                sweep_slots(ctx.store, ctx.jobs, q, self.settings.webhooks)
            except Exception:
                log.exception("heartbeat/reaper tick failed")


def run_worker(
    settings: Settings,
    *,
    pipeline: Pipeline | None = None,
    burst: bool = False,
    metrics: WorkerMetrics | None = None,
    load: Loader = load_model_pipeline,
) -> int:
    """Serve the queues of `settings.worker.model` (its id and the ids its card also serves, or
    `settings.worker.queues`) until stopped; returns a process exit code. `pipeline`: an already
    loaded pipeline (tests, benchmarks) instead of loading `settings.worker.model`; `load`: what loads
    it (on every rank with `worker.gpus` > 1, worker/ranks.py)."""
    w, q = settings.worker, settings.queue
    if w.gpus > 1 and pipeline is not None:
        raise ValueError("a loaded pipeline runs on one rank; worker.gpus > 1 loads its own on each")
    client = redis_client(settings.redis.url)
    client.ping()
    keys = Keys(settings.redis.key_prefix)
    store = JobStore(client, keys)
    jobs = JobQueue(client, q)
    storage = make_storage(settings.storage)
    registry = WorkerRegistry(client, keys)
    device = resolve_device(w.device)
    dtype = resolve_dtype(w.dtype, device)
    card = pipeline.card if pipeline is not None else get_card(w.model)
    check_world(card, w.gpus, device)
    if w.gpus > 1 and device.startswith("cuda"):
        device = "cuda:0"  # rank 0; rank i runs on cuda:i
    if device.startswith("cuda:"):  # `turbovid worker --gpu N`: kernels launch on the current device
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if torch.device(device).index is None or torch.device(device).index >= count:
            raise ConfigError(f"TURBOVID_WORKER__DEVICE (--gpu): {device} does not exist on this host "
                              f"({count} CUDA device(s))")
        torch.cuda.set_device(device)
    queue_names = list(dict.fromkeys(w.queues or [card.id, *card.also_serves]))
    name = w.name or f"{socket.gethostname()}:{os.getpid()}"
    if metrics is None:
        metrics = WorkerMetrics(w.model, gpu_memory=cuda_memory_reader(device))
    server = metrics.serve(w.metrics_port) if w.metrics_port else None

    # 1. advertise (loading), then the model, once ---------------------------------------------------
    info = WorkerInfo(name=name, models=queue_names, solver=card.solver if w.solver == "auto" else w.solver,
                      attention=w.attention, linear=w.linear, device=device, dtype=dtype, started_at=time.time(),
                      ready=False, ranks=w.gpus)
    beat = Heartbeat(settings, registry, info)
    beat.advertise()
    beat.start()
    ranks: RankedPipeline | None = None
    try:
        kernels = None
        if pipeline is None:
            if w.warmup and device.startswith("cuda"):  # kernel caches; recorded kernels compile during the load
                kernels = warmup.start_kernels(w)
            log.info("loading pipeline %s (device=%s dtype=%s ranks=%d)", w.model, device, dtype, w.gpus)
            if w.gpus > 1:
                pipeline = ranks = start_ranks(settings, "cuda" if device.startswith("cuda") else device, dtype,
                                               world_size=w.gpus, load=load)
            else:
                pipeline = load(settings, device, dtype)
        codec = warmup.warm_up(pipeline, w, kernels).codec if w.warmup else None  # served sizes, kernel caches
        beat.info = info.model_copy(update={"solver": pipeline.solver, "attention": pipeline.attention,
                                            "linear": pipeline.linear, "ready": True,
                                            "gpu_memory_gb": w.gpu_memory_gb, "offload": offloads(pipeline),
                                            "kernels": kernels_in_use(pipeline, device) if w.warmup else {}})
        beat.advertise()
        metrics.ready.set()  # the metrics server's /ready (the k8s startupProbe) now answers 200
        ctx = WorkerContext(settings=settings, pipeline=pipeline, store=store, jobs=jobs, storage=storage,
                            metrics=metrics, worker_name=name, lease=Lease(client, keys, name, lease_ttl_s(q)),
                            video_codec=codec)

        # 2. the queues ---------------------------------------------------------------------------------
        worker = TurboWorker(queue_names, ctx=ctx, name=name, connection=client, worker_ttl=max(30, lease_ttl_s(q)),
                             default_result_ttl=q.result_ttl_s, serializer=RQ_SERIALIZER)
        for queue in worker.queues:
            reap(queue, store, jobs, q, settings.webhooks)  # jobs of a worker that died before we started
        beat.worker = worker
        if ranks is not None:
            # a rank lost between jobs stops the worker as a SIGTERM would (withdrawn, then exit 1 below);
            # one lost while the main thread stays blocked fails the job from the watchdog and exits
            ranks.on_idle_failure = lambda: os.kill(os.getpid(), signal.SIGTERM)
            ranks.on_fatal = lambda message: _fail_and_exit(ctx, registry, beat.info, message)
        log.info("worker %s serving queues %s", name, queue_names)
        if ranks is None or ranks.broken is None:
            worker.work(burst=burst, logging_level="INFO")
        if ranks is not None and ranks.broken is not None:
            log.error("worker %s: %s; exiting for a restart", name, ranks.broken)
            return 1
        if not burst and not ctx.stop.is_set():  # set by a SIGTERM/SIGINT (TurboWorker.request_stop)
            # RQ's loop gave up (e.g. Redis unreachable mid-job): exit non-zero so that the supervisor
            # (k8s, compose, systemd) restarts the process; the reaper recovers the job it held.
            log.error("worker %s: the RQ loop ended without a stop request; exiting for a restart", name)
            return 1
    finally:
        beat.done.set()
        beat.join(timeout=5)
        try:
            registry.withdraw(beat.info)
        except redis.RedisError:  # the advertisement expires by itself within one TTL
            log.warning("could not withdraw worker %s from the registry", name)
        if ranks is not None:
            ranks.close()
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0


def _fail_and_exit(ctx: WorkerContext, registry: WorkerRegistry, info: WorkerInfo, message: str) -> None:
    """A rank was lost and the main thread stays blocked (a device sync behind an NCCL op that never
    completes): fail the running job visibly, withdraw the worker and exit non-zero at once."""
    try:
        job_id = ctx.lease.job_id
        record = ctx.store.get(job_id) if job_id is not None else None
        if record is not None:
            fail_job(ctx, record.spec, ErrorCode.generation_failed, message)
            ctx.lease.release()
        registry.withdraw(info)
    except Exception:  # exiting matters more: the reaper recovers the job from its lease
        log.exception("could not fail the running job before exiting")
    finally:
        logging.shutdown()
        os._exit(1)

"""`turbovid worker --gpus N`: one RQ consumer driving N sequence-parallel ranks (models/parallel.py).

    rank 0: the worker process (RQ consumer)             ranks 1..N-1: spawned processes
    RankedPipeline.generate(params, image, on_step)      wait on their job pipe (no timeout)
      job pipe ── ("job", n, params JSON, image) ──▶      generate(params, image) with sp
      its own generate with sp: progress, frames          frames dropped
      ◀── status pipe ── ("done"|"stopped"|"error", n)

Every rank loads the same pipeline (`load(settings, device, dtype)`: cuda:i and NCCL on GPUs, the CPU
and gloo elsewhere) and joins one process group whose timeout bounds every collective. An idle rank
waits on a pipe, never in a collective, so it can wait forever.

Stopping together: at every sync point — before every DiT forward (a forward pre-hook) and at every
VAE decode report (the decode may be split across the ranks too, models/vae_parallel.py) — the ranks
broadcast rank 0's stop flag over a gloo group of their own, on the host, so it never waits behind
queued device work. These points come in the same order on every rank. Rank 0's job progress
(worker/progress.py) still decides: what it raises (cancel, shutdown, a Redis or encoder error) is
held back and raised on every rank at the next sync point. Denoise step reports cannot carry the
flag: on a GPU a step is reported when its CUDA event has completed, at a different moment on each
rank.

Failures: a rank that raises sends its error and exits. Rank 0's watchdog thread follows the ranks'
exits and messages. A rank lost during a job fails the job (`generation_failed`, naming the rank):
from the main thread when its collective raises (gloo: at once), or from the watchdog after
`GRACE_S` when the main thread stays blocked (a device sync behind an NCCL op that never completes).
The worker then exits non-zero so that its supervisor restarts every rank (a broken communicator
cannot be reused). A rank lost while idle stops the worker at once. Ranks ignore SIGINT/SIGTERM
(rank 0 stops them) and exit when rank 0 is gone.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection, wait
from typing import Any, cast

import numpy as np

from contract.catalog import ModelCard
from contract.jobs import Capabilities, ErrorCode, GenerationParams
from contract.settings import ConfigError, Settings
from models.pipeline_types import GenerationResult, Progress, StageEvent, StepCallback, as_progress
from worker.progress import ShutdownRequeue
from worker.task import JobFailed, Pipeline

log = logging.getLogger("turbovid.worker")

Loader = Callable[[Settings, str, str], Pipeline]  # worker.main.load_model_pipeline
TIMEOUT_S = 300.0  # bounds the rendezvous and every collective (a lost peer fails the others)
GRACE_S = 5.0  # a rank lost mid-job: how long the main thread may stay blocked before the watchdog fails the job
POLL_S = 0.5


class RankStopped(Exception):
    """Raised on ranks 1..N-1 at the forward where rank 0 stopped the job."""


def check_world(card: ModelCard, world_size: int, device: str) -> None:
    """ConfigError unless `world_size` ranks can split `card`'s DiT on `device`'s kind of host."""
    from models.config import WanConfig

    if world_size < 1:
        raise ConfigError(f"--gpus: {world_size} is not a number of ranks (1, 2, ...)")
    if world_size == 1:
        return
    heads = WanConfig.from_name(card.architecture).num_heads
    if heads % world_size:
        fits = [n for n in range(2, heads + 1) if heads % n == 0 and n <= 8]
        raise ConfigError(f"--gpus {world_size}: {card.id} has {heads} attention heads, not divisible by "
                          f"{world_size} (the ranks split the heads); use one of {fits}")
    if device.startswith("cuda"):
        import torch

        if device not in ("cuda", "cuda:0"):
            raise ConfigError(f"--gpus {world_size} runs on cuda:0..{world_size - 1}, not on {device} "
                              "(choose the GPUs with CUDA_VISIBLE_DEVICES)")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if world_size > count:
            raise ConfigError(f"--gpus {world_size}: this host has {count} CUDA device(s)")
    elif device != "cpu":
        raise ConfigError(f"--gpus {world_size} needs the device cuda or cpu, not {device}")


# the stop flag, broadcast at every sync point -------------------------------------------------------
class _StopSync:
    """The ranks' sync points: before every DiT forward (a forward pre-hook) and at every VAE decode
    report, each rank takes part in a broadcast of rank 0's stop flag and raises when it is set."""

    def __init__(self, rank: int, group: Any) -> None:
        self.rank, self.group = rank, group
        self.job: _Held | None = None  # rank 0: the running job's progress
        self.forwards = 0  # DiT forwards (calls as a forward pre-hook) since the last `take_forwards`

    def take_forwards(self) -> int:
        n, self.forwards = self.forwards, 0
        return n

    def __call__(self, *hook_args: Any) -> None:
        import torch
        import torch.distributed as dist

        if hook_args:  # (module, args): a DiT forward is about to run
            self.forwards += 1
        held = self.job.held if self.job is not None else None
        flag = torch.tensor([int(held is not None)], dtype=torch.int32)
        dist.broadcast(flag, src=0, group=self.group)
        if flag.item():
            raise held if held is not None else RankStopped()


class _Held(Progress):
    """Rank 0's view of the job's Progress: what it raises (cancel, shutdown, a Redis or encoder error)
    is held until the next sync point, where every rank stops; nothing more is reported meanwhile."""

    def __init__(self, inner: Progress, sync: _StopSync) -> None:
        self.inner, self.sync = inner, sync
        self.wants_preview = inner.wants_preview
        self.held: BaseException | None = None

    def _forward(self, fn: Callable[..., None], *args: Any) -> None:
        if self.held is None:
            try:
                fn(*args)
            except Exception as exc:
                self.held = exc

    def on_stage(self, event: StageEvent) -> None:
        self._forward(self.inner.on_stage, event)
        if event.stage == "vae_decode":
            self.sync()

    def on_preview(self, step: int, total: int, image: np.ndarray) -> None:
        self._forward(self.inner.on_preview, step, total, image)

    def on_frames(self, start: int, frames: np.ndarray) -> None:
        self._forward(self.inner.on_frames, start, frames)


class _Follow(Progress):
    """Ranks 1..N-1's Progress: nothing is reported, the decode reports are sync points."""

    def __init__(self, sync: _StopSync) -> None:
        self.sync = sync

    def on_stage(self, event: StageEvent) -> None:
        if event.stage == "vae_decode":
            self.sync()


def _join_group(rank: int, world_size: int, backend: str, timeout_s: float, store: Any) -> Any:
    """Join the ranks' process group (rendezvous: rank 0's TCP store; an int: its port) and the gloo
    group of the stop flag."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if isinstance(store, int):
        store = dist.TCPStore("127.0.0.1", store, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return dist.new_group(backend="gloo", timeout=timeout)


def exchange_for(setting: str) -> str:
    """worker.sp_exchange resolved: "auto" is bf16. Measured on 2 H200s (NVLink) since the bf16 exchange needs
    no packing (session 17: the projections write the send layout, the output projection gathers the way
    back): the 14B 720p split took 0.548x one GPU against 0.565x with int8, and 1.3B guided steps were
    slower with int8 too. int8 halves the bytes, for hosts whose GPUs talk over PCIe (unmeasured here: set
    it explicitly)."""
    return "bf16" if setting == "auto" else setting


def _attach(pipe: Any, rank: int, world_size: int, control: Any, exchange: str = "bf16") -> _StopSync:
    """Give this rank's pipeline its splits (collective: every rank calls it, after joining the group).
    A guided flow job runs CFG parallel (WanPipeline.cfg_parallel): with 2 ranks cond on rank 0
    and uncond on rank 1, with 2·k ranks each call sequence parallel over k of them (SP × CFG); every
    other job is sequence parallel over all the ranks. exchange: worker.sp_exchange ("auto" resolved
    here by `exchange_for`, the same on every rank)."""
    from models.parallel import SequenceParallel, cfg_sequence_parallel

    exchange = exchange_for(exchange)
    log.info("rank %d: sequence parallel over %d ranks, q/k/v exchanged as %s", rank, world_size, exchange)
    pipe.sp = SequenceParallel(rank=rank, world_size=world_size, exchange=exchange)  # q/k/v: worker.sp_exchange
    if world_size % 2 == 0:
        pipe.cfg_parallel = cfg_sequence_parallel(pipe.sp)
    sync = _StopSync(rank, control)
    for module in pipe.transformers.values():
        module.register_forward_pre_hook(sync)
    return sync


def _cpu_threads(world_size: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


# rank 0 ------------------------------------------------------------------------------------------------
class RankedPipeline:
    """Rank 0's pipeline (worker/task.py's `Pipeline`): each generate runs on every rank. See the module
    docstring. `broken` names the lost rank once the group cannot be used again; `on_idle_failure`
    (called from the watchdog when a rank is lost between jobs) and `on_fatal` (a rank lost while the
    main thread stays blocked; must not return) are set by the worker."""

    def __init__(self, pipe: Any, procs: list[Any], jobs: list[Connection], status: list[Connection],
                 sync: _StopSync) -> None:
        self.pipe, self.procs, self.jobs, self.status, self.sync = pipe, procs, jobs, status, sync
        self.card: ModelCard = pipe.card
        self.solver: str = pipe.solver
        self.attention: str = pipe.attention
        self.linear: str = pipe.linear
        self.device = pipe.device
        self.world_size = len(procs) + 1
        self.broken: str | None = None
        self.lost: str | None = None  # the first rank the watchdog saw exit, described
        self.on_idle_failure: Callable[[], None] | None = None
        self.on_fatal: Callable[[str], None] = _exit_now
        self._seq = 0
        self._busy: int | None = None  # the job number while generate runs
        self._errors: dict[int, str] = {}  # rank -> the error it sent before exiting
        self._lost: tuple[float, int | None] | None = None  # (when, the job then running)
        self._lock = threading.Lock()
        self._closing = False
        self._watch = threading.Thread(target=self._watchdog, name="turbovid-ranks", daemon=True)
        self._watch.start()

    def capabilities(self) -> Capabilities:
        return self.pipe.capabilities()  # type: ignore[no-any-return]

    def generate(self, params: GenerationParams, *, image: np.ndarray | None = None,
                 on_step: StepCallback | Progress | None = None) -> GenerationResult:
        if self.broken is not None:  # lost between jobs: nothing ran, the job goes back to the queue
            raise ShutdownRequeue(f"the worker's ranks are broken ({self.broken})")
        params, image = self.pipe.resolve(params, image)  # a bad knob fails here, before any rank starts
        with self._lock:
            self._seq += 1
            self._busy = self._seq
        job = _Held(as_progress(on_step), self.sync)
        self.sync.job = job
        self.sync.take_forwards()  # count this job's forwards only
        try:
            for conn in self.jobs:
                conn.send(("job", self._seq, params.model_dump_json(), image))
            result = _profiled(0, self._seq, lambda: self.pipe.generate(params, image=image, on_step=job))
        except BaseException as exc:
            if exc is job.held:
                raise  # every rank stopped at the same sync point
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                self.broken = self.broken or "rank 0 interrupted mid-job"
                raise
            lost = self._wait_lost(2.0)
            self.broken = self.broken or lost or f"rank 0 failed mid-job: {type(exc).__name__}"
            if lost is not None:
                raise JobFailed(ErrorCode.generation_failed,
                                f"{lost}; the worker restarts its ranks ({type(exc).__name__}: {exc})") from exc
            raise
        finally:
            with self._lock:
                self._busy = None
            self.sync.job = None
        if job.held is not None:  # raised after the last sync point (a pipeline without decode reports)
            raise job.held
        log.info("rank 0: job %d: %s", self._seq, _stage_line(result, self.sync.take_forwards()))
        return result

    # watching the ranks ------------------------------------------------------------------------------
    def _describe(self, rank: int) -> str:
        proc = self.procs[rank - 1]
        text = f"rank {rank} (pid {proc.pid}) exited with code {proc.exitcode}"
        error = self._errors.get(rank)
        return f"{text}: {error}" if error else text

    def _wait_lost(self, wait_s: float) -> str | None:
        """The lost rank as the watchdog saw it, waiting up to `wait_s` (a collective fails first)."""
        deadline = time.monotonic() + wait_s
        while self.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.lost

    def _drain(self, rank: int) -> None:
        conn = self.status[rank - 1]
        try:
            while not conn.closed and conn.poll(0):
                self._message(rank, conn.recv())
        except (EOFError, OSError):
            conn.close()

    def _message(self, rank: int, msg: tuple[Any, ...]) -> None:
        if msg[0] == "error":
            self._errors[rank] = str(msg[2])

    def _watchdog(self) -> None:
        """Follow the ranks until close. If this thread itself fails, nothing would notice a lost rank any
        more (a blocked job would stay "in progress"): that is fatal too."""
        try:
            self._watch_ranks()
        except Exception as exc:
            if self._closing:
                return
            log.critical("the ranks' watchdog failed: exiting", exc_info=True)
            self.broken = self.broken or f"the ranks' watchdog failed ({type(exc).__name__}: {exc})"
            self.on_fatal(f"{self.broken}; the worker restarts its ranks")

    def _watch_ranks(self) -> None:
        conns = {conn: rank for rank, conn in enumerate(self.status, start=1)}
        exits: dict[int, int] = {proc.sentinel: rank for rank, proc in enumerate(self.procs, start=1)}
        while not self._closing:
            # a pipe `_drain` closed (its rank exited, the sentinel came first) is done with
            conns = {conn: rank for conn, rank in conns.items() if not conn.closed}
            for ready in wait([*conns, *exits], timeout=POLL_S):
                if isinstance(ready, int):  # a process sentinel: that rank exited
                    self._rank_exited(exits.pop(ready))
                    continue
                conn = cast(Connection, ready)
                try:
                    self._message(conns[conn], conn.recv())
                except (EOFError, OSError):
                    conns.pop(conn)
            with self._lock:
                lost, busy = self._lost, self._busy
            if lost is not None and busy is not None and busy == lost[1] and time.monotonic() - lost[0] > GRACE_S:
                log.critical("%s; the main thread is still blocked %.0f s later: failing the job and exiting",
                             self.broken, GRACE_S)
                self.on_fatal(f"{self.broken}; the worker restarts its ranks")
                return

    def _rank_exited(self, rank: int) -> None:
        if self._closing:
            return
        self.procs[rank - 1].join(1.0)  # its pipe closes a moment before the exit status can be read
        self._drain(rank)
        message = self._describe(rank)
        self.broken = self.broken or message
        self.lost = self.lost or message
        with self._lock:
            busy = self._busy
            self._lost = (time.monotonic(), busy)
        log.error("%s (%s)", message, "mid-job" if busy is not None else "idle")
        if busy is None and self.on_idle_failure is not None:
            self.on_idle_failure()

    # shutdown ------------------------------------------------------------------------------------------
    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the ranks: a clean group teardown when they are idle and whole, else kill them."""
        import torch.distributed as dist

        self._closing = True
        clean = self.broken is None and self._busy is None and all(p.is_alive() for p in self.procs)
        if clean:
            try:
                for conn in self.jobs:
                    conn.send(("exit",))
                dist.barrier(group=self.sync.group)  # no rank tears the group down while another uses it
                dist.destroy_process_group()
            except Exception:  # a rank lost meanwhile: kill the rest below
                log.exception("ranks: clean shutdown failed")
                clean = False
        deadline = time.monotonic() + (timeout_s if clean else 0.0)
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self._watch.join(2 * POLL_S)
        for conn in [*self.jobs, *self.status]:
            conn.close()


def _exit_now(message: str) -> None:
    os._exit(1)


def start_ranks(settings: Settings, device: str, dtype: str, *, world_size: int, load: Loader,
                timeout_s: float = TIMEOUT_S) -> RankedPipeline:
    """Start ranks 1..world_size-1 (first: they import and load while rank 0 does), load rank 0's
    pipeline, wait until every rank has loaded, join the group: rank 0's `RankedPipeline`. `device` is
    "cuda" (rank i on cuda:i) or "cpu"."""
    import multiprocessing

    cuda = device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    spawn = multiprocessing.get_context("spawn")  # CUDA does not survive a fork
    procs, jobs, status = [], [], []
    try:
        for rank in range(1, world_size):
            job_out, job_in = spawn.Pipe(duplex=False)
            status_out, status_in = spawn.Pipe(duplex=False)
            proc = spawn.Process(target=_rank_main, name=f"turbovid-rank-{rank}",
                                 args=(rank, world_size, settings, f"cuda:{rank}" if cuda else device, dtype, load,
                                       backend, timeout_s, job_out, status_in, os.getpid()))
            proc.start()
            job_out.close()
            status_in.close()
            procs.append(proc)
            jobs.append(job_in)
            status.append(status_out)
            log.info("rank %d/%d started (pid %d, %s)", rank, world_size, proc.pid, backend)
        import torch.distributed as dist

        if not cuda:
            _cpu_threads(world_size)
        store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        for conn in jobs:
            conn.send(("store", store.port))
        pipe = load(settings, "cuda:0" if cuda else device, dtype)
        _wait_ready(procs, status)
        control = _join_group(0, world_size, backend, timeout_s, store)
        sync = _attach(pipe, 0, world_size, control, settings.worker.sp_exchange)
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.join(5)
        raise
    log.info("%d ranks ready (%s, %s; q/k/v exchanged as %s)", world_size, backend, "cuda:0.." if cuda else device,
             settings.worker.sp_exchange)
    return RankedPipeline(pipe, procs, jobs, status, sync)


def _wait_ready(procs: list[Any], status: list[Connection]) -> None:
    """Wait until every rank has loaded its pipeline; RuntimeError naming a rank that failed."""
    waiting = dict(enumerate(status, start=1))
    while waiting:
        for rank, conn in list(waiting.items()):
            proc = procs[rank - 1]
            if conn.poll(0):
                msg = conn.recv()
                if msg[0] == "ready":
                    del waiting[rank]
                    continue
                raise RuntimeError(f"rank {rank} failed to load: {msg[2]}")
            if proc.exitcode is not None:
                raise RuntimeError(f"rank {rank} (pid {proc.pid}) exited with code {proc.exitcode} while loading")
        wait([*waiting.values(), *(procs[r - 1].sentinel for r in waiting)], timeout=POLL_S)


# ranks 1..N-1 ----------------------------------------------------------------------------------------
def _rank_main(rank: int, world_size: int, settings: Settings, device: str, dtype: str, load: Loader,
               backend: str, timeout_s: float, jobs: Connection, status: Connection, parent: int) -> None:
    """A rank process: load, join the group, then run each job rank 0 sends until told to exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when the ranks stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), name="turbovid-parent", daemon=True).start()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s rank {rank}: %(message)s")
    import torch
    import torch.distributed as dist

    try:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        else:
            _cpu_threads(world_size)
        kernels = None
        if device.startswith("cuda"):  # rank 0's compiled kernels and autotune choices (worker/warmup.py);
            from worker.warmup import start_kernels  # the kernels rank 0 recorded compile during the load

            kernels = start_kernels(settings.worker, record=False)
        pipe = load(settings, device, dtype)
        if kernels is not None and kernels.precompile is not None:
            kernels.precompile.wait()
    except BaseException as exc:
        log.exception("rank %d: loading failed", rank)
        _send(status, ("error", 0, f"{type(exc).__name__}: {exc}"))
        os._exit(3)
    status.send(("ready", 0))
    try:
        _, port = jobs.recv()  # ("store", port): where rank 0's rendezvous listens
        control = _join_group(rank, world_size, backend, timeout_s, port)
    except EOFError:
        os._exit(1)  # rank 0 is gone
    sync = _attach(pipe, rank, world_size, control, settings.worker.sp_exchange)
    while True:
        try:
            msg = jobs.recv()  # idle: blocks here, in no collective
        except EOFError:
            os._exit(1)  # rank 0 is gone
        if msg[0] == "exit":
            dist.barrier(group=control)
            dist.destroy_process_group()
            return
        _, seq, params_json, image = msg
        sync.take_forwards()  # count this job's forwards only
        try:
            params = GenerationParams.model_validate_json(params_json)
            result = _profiled(rank, seq, partial(pipe.generate, params, image=image, on_step=_Follow(sync)))
            log.info("job %d: %s", seq, _stage_line(result, sync.take_forwards()))
            status.send(("done", seq))
        except RankStopped:
            status.send(("stopped", seq))
        except BaseException as exc:  # the group is in an unknown state: leave it, rank 0 restarts the worker
            log.exception("rank %d: job %d failed", rank, seq)
            _send(status, ("error", seq, f"{type(exc).__name__}: {exc}"))
            os._exit(3)


PROFILE_ENV = "TURBOVID_RANK_PROFILE"  # a folder: each rank writes a kernel table per job there (diagnosis)


def _profiled(rank: int, seq: int, generate: Callable[[], GenerationResult]) -> GenerationResult:
    """`generate()`, under torch.profiler when $TURBOVID_RANK_PROFILE names a folder: the rank's op/kernel
    table for the job goes to `<folder>/rank<r>-job<n>.txt` (where a rank's time goes, e.g. waiting in
    the exchanges; the profiler slows the job, so it is for diagnosis only)."""
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        return generate()
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        result = generate()
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=50, max_name_column_width=90)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"rank{rank}-job{seq}.txt")
    with open(f"{path}.tmp", "w") as f:  # whole or absent: a reader may look while a rank still writes
        f.write(f"rank {rank}, job {seq}: {_stage_line(result)}\n{table}")
    os.replace(f"{path}.tmp", path)
    return result


def _stage_line(result: GenerationResult, forwards: int | None = None) -> str:
    """One rank's job for the log: its DiT forwards and stage seconds, each denoise step apart (where a
    rank waits shows up here)."""
    t = result.timings
    steps = " ".join(f"{s:.3f}" for s in t.denoise_steps)
    line = f"text_encode {t.text_encode:.3f} s, denoise steps [{steps}] s, vae_decode {t.vae_decode:.3f} s"
    return line if forwards is None else f"{forwards} DiT forwards, {line}"


def _send(conn: Connection, msg: tuple[Any, ...]) -> None:
    try:
        conn.send(msg)
    except OSError:  # rank 0 is gone: nobody to tell
        pass


def _exit_with(parent: int) -> None:
    """No orphans: exit as soon as rank 0 (the parent) is gone, even in the middle of a collective."""
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os._exit(1)

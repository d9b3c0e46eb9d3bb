"""`turbovid worker --gpus 2` on CPU: one RQ consumer (rank 0) and a rank process joined over gloo, the
real wan-tiny pipeline, real Redis, MP4s decoded with PyAV (worker/ranks.py).

Workers run `rank_worker.py` (the real worker with a sleep before every DiT forward, so that a job's
denoise lasts long enough to cancel or to kill a rank in) or the `turbovid worker` CLI. The one-rank
reference is `run_worker` in this process, in burst mode.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import redis
import torch
from worker_procs import REPO, record, stop, wait_for, worker_env
from worker_support import submit, test_settings

from contract.events import EventLog
from contract.jobs import JobSpec, JobStatus
from contract.jobstore import JobStore
from contract.keys import Keys
from contract.settings import Settings
from contract.storage import make_storage
from contract.workers import WorkerInfo, WorkerRegistry

RANK_WORKER = Path(__file__).with_name("rank_worker.py")
DELAY_S = 0.3  # per DiT forward, on every rank: a 4-step job denoises for ~1.2 s
JOB = {"size": (64, 64), "frames": 9, "steps": 4}  # seed 7 (worker_support.submit)


def _spawn(settings: Settings, log_dir: Path, name: str, *, cli: bool = False, **env: str) -> subprocess.Popen[bytes]:
    full = {**worker_env(settings, name=name), "TURBOVID_WORKER__CACHE_DIR": str(settings.worker.cache_dir),
            "RANK_TEST_DELAY_S": str(DELAY_S), **env}
    args = ["-m", "cli.main", "worker", "--gpus", "2"] if cli else [str(RANK_WORKER)]
    if not cli:
        full["TURBOVID_WORKER__GPUS"] = "2"
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=full, stdout=(log_dir / f"{name}.log").open("wb"),
                            stderr=subprocess.STDOUT)


def _registry(settings: Settings) -> WorkerRegistry:
    return WorkerRegistry(redis.Redis.from_url(settings.redis.url), Keys(settings.redis.key_prefix))


def _advertised(w: Worker) -> WorkerInfo | None:
    return next((i for i in _registry(w.settings).live(w.settings.worker.queues[0]) if i.name == w.name), None)


def _ready(w: Worker) -> WorkerInfo:
    wait_for(lambda: (info := _advertised(w)) is not None and info.ready, timeout=120,
             what=f"worker {w.name} ready", proc=w.proc)
    info = _advertised(w)
    assert info is not None
    return info


def _rank_pids(pid: int) -> list[int]:
    """The worker's rank processes (its spawned children other than multiprocessing's resource tracker)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmd and b"resource_tracker" not in cmd:
                out.append(int(child))
    return out


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # a zombie is dead
    except FileNotFoundError:
        return True


def _frames(settings: Settings, spec: JobSpec) -> np.ndarray:
    data = make_storage(settings.storage).get_bytes(spec.output_key)
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _finished(w: Worker, job_id: str, timeout: float = 30) -> JobStatus:
    wait_for(lambda: record(w.settings, job_id).status in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled),
             timeout=timeout, what=f"job {job_id} finished", proc=w.proc)
    return record(w.settings, job_id).status


def _events(settings: Settings, job_id: str) -> list:
    log = EventLog(redis.Redis.from_url(settings.redis.url), Keys(settings.redis.key_prefix))
    return [e for _, e in log.read(job_id, count=1000)]


@dataclass
class Worker:
    settings: Settings
    name: str
    proc: subprocess.Popen[bytes]
    stall: Path  # RANK_TEST_STALL: rank 0 blocks at a forward while this file exists
    slow_decode: Path  # RANK_TEST_SLOW_DECODE: every rank sleeps before each decoded chunk while it exists


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> Iterator[dict[str, Worker]]:
    """Every `--gpus 2` worker of this module, started at once (their start-ups overlap): "shared" (warm-up
    on: it runs through both ranks too) serves several tests; each other one is ended by one test."""
    cache = tmp_path_factory.mktemp("cache")  # the tiny weights, built once, shared by every worker here
    from models.tiny import ensure_tiny_checkpoints

    ensure_tiny_checkpoints(cache / "wan-tiny")
    started = {}
    for role in ("shared", "killed", "stalled", "cli", "orphan"):
        tmp = tmp_path_factory.mktemp(role)
        settings = test_settings(tmp, cache_dir=cache)
        name = f"{role}-{uuid.uuid4().hex[:6]}"
        env = {"TURBOVID_WORKER__WARMUP": "true"} if role == "shared" else {}
        if role == "cli":
            env["TURBOVID_WORKER__SP_EXCHANGE"] = "int8"
            env["TURBOVID_RANK_PROFILE"] = str(tmp / "profiles")  # every rank's kernel table per job
        proc = _spawn(settings, tmp, name, cli=role == "cli", RANK_TEST_STALL=str(tmp / "stall"),
                      RANK_TEST_SLOW_DECODE=str(tmp / "slow-decode"), **env)
        started[role] = Worker(settings, name, proc, tmp / "stall", tmp / "slow-decode")
    try:
        yield started
    finally:
        for w in started.values():
            stop(w.proc)


def _one_rank_video(settings: Settings, **job: object) -> np.ndarray:
    """The reference: `job` through a one-rank worker (`run_worker` here, burst mode), decoded."""
    from worker.main import run_worker

    spec = submit(settings, **{**JOB, **job})  # type: ignore[arg-type]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs on this 2-core box (and no spinning threads meanwhile)
    try:
        assert run_worker(settings, burst=True) == 0
    finally:
        torch.set_num_threads(threads)
    assert record(settings, spec.job_id).status is JobStatus.completed
    return _frames(settings, spec)


@pytest.fixture(scope="module")
def one_rank_frames(workers, tmp_path_factory) -> np.ndarray:
    """The T2V job through a one-rank worker."""
    cache = workers["shared"].settings.worker.cache_dir
    return _one_rank_video(test_settings(tmp_path_factory.mktemp("one"), cache_dir=cache))


def _put_image(settings: Settings) -> str:
    """A colour gradient (not flat: the conditioning shows) in the settings' storage; returns its key."""
    from PIL import Image

    y, x = np.mgrid[0:80, 0:96]
    rgb = np.stack([x * 2, y * 3, 255 - x * 2], axis=-1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    make_storage(settings.storage).put_bytes(buf.getvalue(), "inputs/gradient.png", "image/png")
    return "inputs/gradient.png"


@pytest.fixture(scope="module")
def one_rank_i2v_frames(workers, tmp_path_factory) -> np.ndarray:
    """An I2V job (wan-tiny-i2v, the tiny pipeline's second DiT) through a one-rank worker."""
    settings = test_settings(tmp_path_factory.mktemp("one-i2v"), cache_dir=workers["shared"].settings.worker.cache_dir)
    return _one_rank_video(settings, kind="i2v", image_key=_put_image(settings))


def _same_video(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape == (9, 64, 64, 3)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())
    assert want.std() > 10  # a real picture, not a flat frame both could agree on


def test_a_job_on_two_ranks_gives_the_one_rank_video(workers, one_rank_frames):
    w = workers["shared"]
    info = _ready(w)
    assert info.ranks == 2 and len(_rank_pids(w.proc.pid)) == 1  # advertised, and the rank process runs
    spec = submit(w.settings, **JOB)
    assert _finished(w, spec.job_id) is JobStatus.completed
    _same_video(_frames(w.settings, spec), one_rank_frames)


def test_an_i2v_job_on_two_ranks_gives_the_one_rank_video(workers, one_rank_i2v_frames, one_rank_frames):
    w = workers["shared"]
    spec = submit(w.settings, kind="i2v", image_key=_put_image(w.settings), **JOB)
    assert _finished(w, spec.job_id) is JobStatus.completed, record(w.settings, spec.job_id).error
    _same_video(_frames(w.settings, spec), one_rank_i2v_frames)
    assert np.abs(one_rank_i2v_frames.astype(int) - one_rank_frames.astype(int)).mean() > 5  # the image counts


def test_cancel_stops_every_rank_and_the_next_job_still_works(workers, one_rank_frames):
    w = workers["shared"]
    _ready(w)
    spec = submit(w.settings, **JOB)
    wait_for(lambda: record(w.settings, spec.job_id).progress >= 26, timeout=30, what="denoise step 1", proc=w.proc)
    JobStore(redis.Redis.from_url(w.settings.redis.url), Keys(w.settings.redis.key_prefix)).request_cancel(
        spec.job_id, ttl_s=600)
    assert _finished(w, spec.job_id, timeout=10) is JobStatus.cancelled
    steps = [e.step for e in _events(w.settings, spec.job_id) if e.stage == "denoise"]
    assert max(steps) < 4, steps  # stopped inside the denoise
    assert not [e for e in _events(w.settings, spec.job_id) if e.stage == "vae_decode"]
    # both ranks stopped at the same forward: otherwise the next job's collectives would not match
    nxt = submit(w.settings, **JOB)
    assert _finished(w, nxt.job_id) is JobStatus.completed
    _same_video(_frames(w.settings, nxt), one_rank_frames)
    assert w.proc.poll() is None and len(_rank_pids(w.proc.pid)) == 1


def test_cancel_during_the_decode_stops_every_rank_and_the_next_job_still_works(workers, one_rank_frames):
    w = workers["shared"]
    _ready(w)
    w.slow_decode.touch()
    try:
        spec = submit(w.settings, **JOB)
        wait_for(lambda: any(e.stage == "vae_decode" for e in _events(w.settings, spec.job_id)), timeout=30,
                 what="decode started", proc=w.proc)
        JobStore(redis.Redis.from_url(w.settings.redis.url), Keys(w.settings.redis.key_prefix)).request_cancel(
            spec.job_id, ttl_s=600)
        assert _finished(w, spec.job_id, timeout=10) is JobStatus.cancelled
    finally:
        w.slow_decode.unlink()
    decoded = [(e.step, e.steps) for e in _events(w.settings, spec.job_id) if e.stage == "vae_decode"]
    assert decoded and all(step < steps for step, steps in decoded), decoded  # stopped inside the decode
    # the decode may be split across the ranks (models/vae_parallel): they must have stopped together
    nxt = submit(w.settings, **JOB)
    assert _finished(w, nxt.job_id) is JobStatus.completed
    _same_video(_frames(w.settings, nxt), one_rank_frames)


def test_sigterm_mid_job_requeues_it_and_stops_every_rank_cleanly(workers):
    w = workers["shared"]  # the last test of this worker
    _ready(w)
    (rank1,) = _rank_pids(w.proc.pid)
    spec = submit(w.settings, **JOB)
    wait_for(lambda: record(w.settings, spec.job_id).progress >= 26, timeout=30, what="denoise step 1", proc=w.proc)
    w.proc.send_signal(signal.SIGTERM)  # what Kubernetes sends on a rollout; the ranks ignore it, rank 0 decides
    assert w.proc.wait(timeout=20) == 0
    rec = record(w.settings, spec.job_id)
    assert rec.status is JobStatus.queued and rec.progress < 80, rec  # back on the queue, not finished
    wait_for(lambda: _gone(rank1), timeout=5, what="rank 1 exited")


def test_killing_rank0_takes_its_rank_down(workers):
    w = workers["orphan"]
    _ready(w)
    (rank1,) = _rank_pids(w.proc.pid)
    w.proc.send_signal(signal.SIGKILL)
    w.proc.wait(timeout=10)
    killed = time.monotonic()
    wait_for(lambda: _gone(rank1), timeout=5, what="rank 1 gone with rank 0")  # no orphan holding a GPU
    assert time.monotonic() - killed < 5


def _kill_rank1_mid_job(w: Worker) -> tuple[str, float]:
    _ready(w)
    (rank1,) = _rank_pids(w.proc.pid)
    spec = submit(w.settings, **JOB)
    wait_for(lambda: record(w.settings, spec.job_id).progress >= 8, timeout=30, what="denoise started", proc=w.proc)
    time.sleep(DELAY_S)  # inside the first forwards
    os.kill(rank1, signal.SIGKILL)
    return spec.job_id, time.monotonic()


def _failed_naming_rank1(w: Worker, job_id: str, killed: float, within_s: float) -> None:
    wait_for(lambda: record(w.settings, job_id).status is not JobStatus.in_progress, timeout=within_s,
             what="job failed")
    rec = record(w.settings, job_id)
    assert rec.status is JobStatus.failed and rec.error is not None, rec
    assert rec.error.code == "generation_failed"
    assert "rank 1" in rec.error.message and "code -9" in rec.error.message, rec.error.message
    events = _events(w.settings, job_id)
    assert rec.attempts == 1 and [e.event for e in events].count("started") == 1 and events[-1].event == "failed"
    assert w.proc.wait(timeout=15) != 0, "the worker must exit for a restart"
    assert time.monotonic() - killed < within_s + 10
    assert _advertised(w) is None  # withdrawn, not left to expire


def test_a_rank_killed_mid_job_fails_the_job_and_the_worker_exits(workers):
    w = workers["killed"]
    job_id, killed = _kill_rank1_mid_job(w)
    _failed_naming_rank1(w, job_id, killed, within_s=5)  # rank 0's collective raised


def test_a_rank_killed_while_rank0_is_blocked_is_failed_by_the_watchdog(workers):
    from worker.ranks import GRACE_S

    w = workers["stalled"]
    _ready(w)
    w.stall.touch()  # rank 0 blocks at its first forward (what a device sync behind a lost NCCL peer does)
    job_id, killed = _kill_rank1_mid_job(w)
    _failed_naming_rank1(w, job_id, killed, within_s=GRACE_S + 5)
    assert w.proc.returncode == 1 and w.stall.exists()  # the watchdog ended it: the main thread never came back


def test_cli_worker_with_int8_exchange_then_a_rank_lost_while_idle_exits_nonzero(workers, one_rank_frames):
    w = workers["cli"]  # `turbovid worker --gpus 2` with TURBOVID_WORKER__SP_EXCHANGE=int8
    assert _ready(w).ranks == 2
    log = (w.settings.storage.local_dir.parent / f"{w.name}.log").read_text()
    assert "2 ranks ready (gloo, cpu; q/k/v exchanged as int8)" in log
    # a job with q/k/v sent as int8 (codes within half a step): close to the one-rank video, not equal (the
    # random tiny model amplifies the difference over its 4 steps: ~2/255 on average here)
    spec = submit(w.settings, **JOB)
    assert _finished(w, spec.job_id, timeout=60) is JobStatus.completed, record(w.settings, spec.job_id).error
    got = _frames(w.settings, spec).astype(np.float64)
    mse = ((got - one_rank_frames) ** 2).mean()
    assert got.shape == one_rank_frames.shape and 0 < mse and 10 * np.log10(255**2 / mse) >= 30, mse
    # TURBOVID_RANK_PROFILE: each rank wrote its profile of the job (the diagnosis of a slow split). Rank 0
    # does not wait for the other ranks' tables before completing the job, so rank 1's may land a moment later.
    for rank in (0, 1):
        path = w.settings.storage.local_dir.parent / "profiles" / f"rank{rank}-job1.txt"
        wait_for(path.exists, timeout=30, what=f"rank {rank}'s profile", proc=w.proc)
        table = path.read_text()
        assert table.startswith(f"rank {rank}, job 1: ") and "denoise steps" in table, table[:300]
        assert "alltoall" in table.replace("_", "").lower(), table  # the exchanges show up
    # then rank 1 is lost while the worker idles
    (rank1,) = _rank_pids(w.proc.pid)
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    assert w.proc.wait(timeout=10) == 1
    assert time.monotonic() - killed < 5
    assert _advertised(w) is None


# configuration errors: one line, exit status 2 ------------------------------------------------------------
@pytest.mark.parametrize(("args", "env", "says"), [
    (["--gpus", "3"], {}, "wan-tiny has 2 attention heads, not divisible by 3"),
    (["--gpus", "0"], {}, "--gpus: 0 is not a number of ranks"),
    (["--gpu", "0", "--gpus", "2"], {}, "--gpu and --gpus together"),
    (["--gpus", "2"], {"TURBOVID_WORKER__DEVICE": "cuda"}, "--gpus 2: this host has 0 CUDA device(s)"),
    (["--gpu", "1"], {"TURBOVID_WORKER__GPUS": "2", "TURBOVID_WORKER__DEVICE": "cuda"}, "not on cuda:1"),
    ([], {"TURBOVID_WORKER__GPUS": "0"}, "TURBOVID_WORKER__GPUS: Input should be greater than or equal to 1"),
])
def test_worker_gpus_configuration_errors(tmp_path, monkeypatch, capsys, args, env, says):
    from cli.main import main

    if torch.cuda.is_available() and "CUDA device" in says:
        pytest.skip("this host has CUDA devices")
    settings = test_settings(tmp_path)
    for key, value in {**worker_env(settings, name="config"), **env}.items():
        monkeypatch.setenv(key, value)
    assert main(["worker", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err

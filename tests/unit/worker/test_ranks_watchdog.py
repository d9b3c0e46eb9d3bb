"""worker/ranks.py's watchdog on its own: real child processes stand in for the ranks (no pipeline, no
process group), so that the order in which it sees a rank's exit can be set by the test."""

from __future__ import annotations

import multiprocessing
import queue
import time
from types import SimpleNamespace

import pytest

from worker import ranks


@pytest.fixture
def watched(monkeypatch):
    """A RankedPipeline watching one sleeping child as rank 1, with a job running (`_busy`); its
    `on_fatal` puts the message on a queue instead of exiting. A second child, `holder`, keeps the write
    end of rank 1's status pipe open, so the test decides when that pipe reaches its end of file."""
    monkeypatch.setattr(ranks, "GRACE_S", 0.3)
    ctx = multiprocessing.get_context("fork")
    job_out, job_in = ctx.Pipe(duplex=False)
    status_out, status_in = ctx.Pipe(duplex=False)
    child = ctx.Process(target=time.sleep, args=(60,))
    holder = ctx.Process(target=time.sleep, args=(60,))
    child.start()
    holder.start()
    job_out.close()
    status_in.close()
    pipe = SimpleNamespace(card=None, solver="rcm", attention="dense", linear="native", device="cpu")
    fatal: queue.Queue[str] = queue.Queue()
    rp = ranks.RankedPipeline(pipe, [child], [job_in], [status_out], sync=SimpleNamespace())
    rp.on_fatal = fatal.put
    with rp._lock:
        rp._busy = 1
    try:
        yield rp, child, holder, fatal
    finally:
        child.kill()
        holder.kill()
        rp._busy = None
        rp.close(timeout_s=0)
        holder.join(5)


def test_a_rank_whose_exit_is_seen_before_its_pipe_closes_still_fails_the_blocked_job(watched):
    rp, child, holder, fatal = watched
    drain = rp._drain

    def drain_at_end_of_file(rank: int) -> None:
        holder.kill()  # the pipe's last writer: it reaches its end of file only now
        holder.join(5)
        drain(rank)  # reads the end of file and closes the pipe

    rp._drain = drain_at_end_of_file  # type: ignore[method-assign]
    # The order seen on a real worker: the watchdog wakes on the rank's exit sentinel alone, and
    # `_rank_exited` drains and closes the pipe. The watchdog must go on without it: it used to die on
    # "handle is closed", and the job blocked behind the lost rank then stayed "in progress" for good.
    child.kill()
    message = fatal.get(timeout=ranks.GRACE_S + 5)
    assert message.startswith(f"rank 1 (pid {child.pid}) exited with code -9"), message
    assert rp.status[0].closed and holder.exitcode is not None  # the order above did happen


def test_the_watchdog_failing_is_fatal_not_silent(watched, monkeypatch):
    rp, child, _, fatal = watched

    def broken_wait(*args, **kwargs):
        raise RuntimeError("selector exploded")

    monkeypatch.setattr(ranks, "wait", broken_wait)
    message = fatal.get(timeout=5)
    assert "watchdog failed" in message and "selector exploded" in message
    assert rp.broken is not None and child.is_alive()  # it failed on its own: no rank was lost

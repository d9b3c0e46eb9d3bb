"""worker/ranks.py `_attach`: what each rank's pipeline is given (no process group needed to check it)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from models.parallel import CfgParallel, SequenceParallel
from worker.ranks import _attach


def _pipe() -> SimpleNamespace:
    return SimpleNamespace(transformers={"t2v": torch.nn.Linear(2, 2)}, sp=None, cfg_parallel=None)


def test_two_ranks_get_sequence_and_cfg_parallel_more_get_sequence_parallel_only():
    two = _pipe()
    _attach(two, 1, 2, None)
    assert two.sp == SequenceParallel(rank=1, world_size=2)
    assert isinstance(two.cfg_parallel, CfgParallel) and two.cfg_parallel.rank == 1  # guided flow jobs
    four = _pipe()
    _attach(four, 3, 4, None)
    assert four.sp == SequenceParallel(rank=3, world_size=4) and four.cfg_parallel is None  # SP x CFG: not built


def test_the_stop_sync_counts_the_dit_forwards_of_a_job(tmp_path):
    import torch.distributed as dist

    # a real gloo group of one (rank 0 alone: the broadcast of the stop flag is real, nothing stops)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        pipe = _pipe()
        sync = _attach(pipe, 0, 2, dist.new_group(backend="gloo"))
        for _ in range(3):
            pipe.transformers["t2v"](torch.zeros(1, 2))
        sync()  # a decode report is a sync point too, not a forward
        assert sync.take_forwards() == 3 and sync.take_forwards() == 0
    finally:
        dist.destroy_process_group()

"""models.bench_a14b at tiny size on CPU: the whole I2V job (umT5 encode, VAE encode of the image, two
W8A8 experts, VAE decode) resident and then with the experts and the text encoder offloaded gives the
same frames, the offloaded run really swapped, and the row has every field the GPU run reports.

What CPU cannot prove (no CUDA): the memory peak under the budget and the time ratio; those are the
GPU command's (`python3 -m models.bench_a14b`, docs/multi_gpu.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from models.bench_a14b import GIB, bench
from models.vae import DEFAULT_MEMORY_BUDGET

STAGES = {"text_encode", "image_encode", "denoise", "vae_decode"}
REPO = Path(__file__).resolve().parents[3]
FIELDS = {"resident_s", "budget_s", "ratio", "resident_peak_gib", "resident_reserved_gib", "budget_peak_gib",
          "budget_reserved_gib", "resident_stages", "budget_stages", "expert_swaps", "text_encoder_swaps",
          "frames_cos", "frames_max_abs", "frames_std", "vae_budget_gib", "pass"}


def test_whole_job_under_the_budget_gives_the_resident_frames_and_swaps():
    row = bench("tiny", device="cpu", log=lambda _msg: None)

    assert FIELDS <= set(json.loads(json.dumps(row)))  # one JSON line with every field
    assert row["frames_max_abs"] == 0.0 and row["frames_cos"] == 1.0  # offloaded == resident, exactly
    assert row["frames_std"] > 10.0  # the video has content: equal constant frames would prove nothing
    assert row["expert_swaps"] == 4  # each of the two runs swapped "high" in, then "low"
    assert row["text_encoder_swaps"] == 2  # each run's new prompt: swapped in to encode, released after
    # the VAE's chunk budget from the device budget, per encode and decode (at most the VAE's default)
    assert row["vae_budget_gib"] == [round(DEFAULT_MEMORY_BUDGET / GIB, 2)] * 4
    for stages in (row["resident_stages"], row["budget_stages"]):
        assert set(stages) == STAGES and all(stages[s] > 0 for s in STAGES)
    assert row["resident_s"] > 0 and row["budget_s"] > 0
    assert abs(row["ratio"] - row["budget_s"] / row["resident_s"]) < 0.01
    assert row["budget_peak_gib"] is None and row["pass"] is None  # CPU: no device memory to judge


@pytest.mark.slow
def test_the_ranks_bench_splits_the_whole_job_over_two_gloo_ranks(tmp_path):
    """`torchrun --nproc-per-node 2 -m models.bench_a14b --ranks` at tiny size on CPU (gloo): the job on one
    rank, then split over both (sequence parallel DiT, split VAE decode) with each q/k/v wire format; rank 0
    prints one row whose split frames match the one-rank frames (bf16 on the wire: exactly the same math)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "models.bench_a14b", "--ranks", "--size", "tiny", "--device", "cpu", "--steps", "2",
         "--exchange", "bf16,int8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1  # rank 0 only
    row = rows[0]
    assert row["ranks"] == 2 and row["one_s"] > 0 and set(row["one_stages"]) == STAGES
    for exchange in ("bf16", "int8"):
        split = row[f"split_{exchange}"]
        # ratio, s and one_s are each rounded to 3 decimals: allow exactly that rounding (the tiny runs take
        # fractions of a second, so a fixed 0.01 failed now and then)
        rounding = 0.0005 + split["ratio"] * (0.0005 / row["one_s"] + 0.0005 / split["s"])
        assert split["s"] > 0 and abs(split["ratio"] - split["s"] / row["one_s"]) <= rounding
        assert set(split["stages"]) == STAGES and split["frames_std"] > 10.0
        assert split["frames_cos"] >= 0.999, exchange
    assert row["split_bf16"]["frames_max_abs"] <= 1.0  # float sums on other threads may round one step apart


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

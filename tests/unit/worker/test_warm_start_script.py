"""scripts/warm_start_inprocess.py (the A14B fresh-start measurement of gpu_verify s24e) on the tiny I2V card on
CPU: the worker's kernel set-up, warm-up and two jobs run, and the result line says what happened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_warm_start_script_runs_a_tiny_i2v_start_and_two_jobs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "scripts/warm_start_inprocess.py", "--model", "wan-tiny-i2v", "--device", "cpu",
                           "--steps", "1", "--out", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    row = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("{")))
    assert row["model"] == "wan-tiny-i2v" and row["size"] == "64x64" and len(row["jobs"]) == 2, row
    for job in row["jobs"]:  # a whole I2V job: the image encoded, then denoised and decoded
        assert job["s"] > 0 and {"image_encode", "denoise", "vae_decode"} <= set(job["stages"]), row
    assert row["start_to_ready_s"] >= row["build_s"] > 0 and row["first_over_second"] > 0, row
    assert row["compiled_at_launch"] == 0 and row["precompiled"] == 0, row  # no GPU: nothing to compile

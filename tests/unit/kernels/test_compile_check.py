"""kernels.compile_check: the GPU-only forms of the kernels (TMA, wgmma, FP8, inline asm, every autotune
config) compile for sm_90 with the installed Triton, without a GPU; and a kernel that only a GPU compile can
reject is reported. Subprocesses: the interpreter (TRITON_INTERPRET=1, set for the other tests) never compiles."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_every_gpu_kernel_form_compiles_for_sm90() -> None:
    from kernels.compile_check import CASES

    proc = _run(["-m", "kernels.compile_check"], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert len(ok) == len(CASES), proc.stdout
    # each case compiled several configs (the autotuners' whole lists, not one)
    counts = [int(line.split(": ")[1].split()[0]) for line in ok]
    assert min(counts) >= 3 and sum(counts) > 50, proc.stdout


def test_the_compiles_split_over_processes_add_up_to_one_process() -> None:
    # process k of n compiles every n-th config; the summed counts and largest shared memory equal one process's
    cases = ["softmax_rows", "int8_quant"]
    one, two = (_run(["-m", "kernels.compile_check", *cases, "--jobs", n], timeout=300) for n in ("1", "2"))
    assert one.returncode == 0 and two.returncode == 0, one.stdout + one.stderr + two.stdout + two.stderr

    def verdicts(proc: subprocess.CompletedProcess[str]) -> list[str]:
        return [line for line in proc.stdout.splitlines() if line.startswith(("ok ", "FAILED"))]

    assert len(verdicts(one)) == len(cases) and verdicts(one) == verdicts(two), (one.stdout, two.stdout)
    assert "2 processes" in two.stdout


def test_a_kernel_only_a_gpu_compile_rejects_is_reported(tmp_path: Path) -> None:
    # Inline PTX that ptxas rejects: the interpreter cannot run inline asm at all, so only a compile sees it.
    script = textwrap.dedent("""
        import torch, triton, triton.language as tl
        from kernels import compile_check as cc

        @triton.jit
        def bad(x_ptr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            x = tl.load(x_ptr + offs)
            y = tl.inline_asm_elementwise("not.an.instruction.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                          is_pure=True, pack=1)
            tl.store(x_ptr + offs, y)

        @triton.jit
        def good(x_ptr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2)

        cc.use_target(90)
        x = torch.zeros(128)
        for fn in (bad, good):
            res = cc.Result(fn.__name__)
            cc._compile(res, fn, {"num_warps": 4}, (1,), cc._SMEM, x_ptr=x, BLOCK=128)
            print(res.case, res.compiled, len(res.errors))
    """)
    path = tmp_path / "bad_kernel.py"  # @triton.jit needs its source in a file
    path.write_text(script)
    proc = _run([str(path)], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # (Triton also prints the failing compile's reproducer; the verdict lines are the script's own)
    verdicts = [line for line in proc.stdout.splitlines() if line.startswith(("bad ", "good "))]
    assert verdicts == ["bad 0 1", "good 1 0"], proc.stdout


def test_refuses_to_run_under_the_interpreter() -> None:
    from kernels.compile_check import run

    assert os.environ.get("TRITON_INTERPRET") == "1"  # conftest sets it for CPU runs
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=0"):
        run(["softmax_rows"])

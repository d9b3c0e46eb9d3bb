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


def test_a_constexpr_a_recording_worker_cannot_serialize_is_reported(tmp_path: Path) -> None:
    # A worker records every compiled specialization through Triton's post-compile hook, and with a hook set Triton
    # serializes the launch's constexprs to JSON: a layout object there made the Gluon conv's launch fail in the worker
    # only (session 33). compile_check compiles with a hook set, so CI sees it too; a hook set before its own (a
    # recording's) still sees every compile.
    script = textwrap.dedent("""
        import torch
        from triton import knobs
        from triton.experimental import gluon
        from triton.experimental.gluon import language as gl
        from kernels import compile_check as cc

        @gluon.jit
        def kernel(x_ptr, WHAT: gl.constexpr):
            gl.store(x_ptr + gl.arange(0, 32, gl.BlockedLayout([1], [32], [1], [0])), 1.0)

        cc.use_target(90)
        seen = []
        x = torch.zeros(32)
        layout = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=16, rank=2)
        for name, what in (("object", layout), ("int", 64)):
            if name == "int":  # a recording's hook, set before compile_check's
                knobs.runtime.jit_post_compile_hook = lambda **kw: seen.append(kw["fn"].name)
            else:
                assert knobs.runtime.jit_post_compile_hook is None  # no hook of the caller's: only compile_check's
            res = cc.Result(name)
            cc._compile(res, kernel, {"num_warps": 1}, (1,), cc._SMEM, x_ptr=x, WHAT=what)
            print(name, res.compiled, " | ".join(res.errors)[:120])
        print("recorded", len(seen), knobs.runtime.jit_post_compile_hook is not None)
    """)
    path = tmp_path / "constexpr_kernel.py"
    path.write_text(script)
    proc = _run([str(path)], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split(" ", 1)[0]: line for line in proc.stdout.splitlines()
             if line.startswith(("object ", "int ", "recorded "))}
    assert lines["object"].startswith("object 0 ") and "not JSON serializable" in lines["object"], proc.stdout
    assert lines["int"] == "int 1 ", proc.stdout
    assert lines["recorded"] == "recorded 1 True", proc.stdout  # the earlier hook saw the good compile, and is back

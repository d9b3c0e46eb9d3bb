"""Sequence parallel (models.parallel) on CPU: gloo, world size 2, the tiny model in fp32.

Each test starts two real rank processes: this file run as a script (``python test_parallel.py MODE
RANK WORLD PORT OUT``), which write their results to OUT; the test compares them with the same work
done here in one process. Modes: ``equal`` (DiT forwards, dense and SLA, at a sequence length that 2
does not divide, a whole 2-step rCM generation through `WanPipeline.sp`, and a 3-step flow-matching
generation with CFG parallel through `WanPipeline.cfg_parallel`, both with the VAE decode split across
the ranks), ``cfgsp`` (4 ranks: a guided flow generation with SP × CFG, each call sequence parallel
over 2 ranks) and ``kill`` (rank 1 exits in the middle of a forward: rank 0 must raise within seconds,
not hang).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import WanConfig
from models.dit import WanTransformer
from models.parallel import CfgParallel, SequenceParallel, pad_to_multiple

REPO = Path(__file__).resolve().parents[3]
TINY = WanConfig.from_name("wan-tiny")  # 2 heads: world size 2 gives each rank one head
SLA_CFG = TINY.with_(sla_block_q=4, sla_block_k=4, sla_topk=0.34)
# 4 heads: 2 per rank, so the attention and its way back are pipelined over 2 head groups per rank
SLA_CFG4 = SLA_CFG.with_(num_heads=4)
LATENT = (1, 16, 1, 6, 6)  # grid 1×3×3: 9 tokens, not divisible by the 2 ranks (padding path)
DIT_VARIANTS = ("dense", "sla", "dense4", "sla4")
KILL_TIMEOUT_S = 20.0  # the group's timeout; gloo should notice a closed peer much sooner


def _dit(attention: str) -> WanTransformer:
    torch.manual_seed(0)
    cfg = {"sla": SLA_CFG, "sla4": SLA_CFG4, "dense4": TINY.with_(num_heads=4)}.get(attention, TINY)
    model = WanTransformer(cfg, attention=attention.rstrip("4")).eval()
    if attention.startswith("sla"):  # a live linear branch, so the SLA path is exercised in full
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for block in model.blocks:
                proj = block.self_attn.attn_op.local_attn.proj_l
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) * 0.3)
    return model


def _kernel_dit() -> WanTransformer:
    """SLA_CFG4 on the fast path's structure: W8A8 block Linears on the Triton kernels (int8 GEMM, norms with
    int8 output, rmsnorm_rope; the interpreter on CPU) in bf16. Under sequence parallel with the bf16
    exchange its projections write the send layout themselves and the output projection gathers the way
    back's received parts in its quantization pass (models/parallel.py)."""
    from models.bench_dit import random_model

    return random_model(SLA_CFG4, device="cpu", dtype=torch.bfloat16, attention="sla", linear="w8a8", kernels=True)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    latents = torch.randn(LATENT, generator=gen)
    ctx = torch.randn(1, 7, TINY.text_dim, generator=gen)
    return latents, torch.tensor([900.0]), ctx


def _gen_params():
    from contract.jobs import GenerationParams

    return GenerationParams(prompt="a red fox", width=48, height=48, num_frames=5, seed=5, num_steps=2)


def _flow_params():
    return _gen_params().model_copy(update={"num_steps": 3, "negative_prompt": "blurry", "guidance_scale": 4.0})


def _unguided_params():
    return _flow_params().model_copy(update={"guidance_scale": 1.0})


# the rank processes ------------------------------------------------------------------------------------
def _load(solver: str, head_rows: list[int]):  # type: ignore[no-untyped-def]
    """The tiny pipeline; the row count of every input of the VAE's RGB head goes to `head_rows`."""
    from models.pipeline import load_pipeline

    pipe = load_pipeline("wan-tiny", [Path(os.environ["TINY_DIR"])], solver=solver)
    pipe.vae.decoder.head[2].register_forward_pre_hook(lambda _m, a: head_rows.append(a[0].shape[3]))
    return pipe


def _rank_main(mode: str, rank: int, world: int, port: int, out: Path) -> None:
    from models.parallel import init_sequence_parallel

    torch.set_num_threads(1)
    timeout = KILL_TIMEOUT_S if mode == "kill" else 60.0
    sp = init_sequence_parallel(rank, world, port=port, backend="gloo", timeout_s=timeout)
    latents, t, ctx = _inputs()
    if mode == "equal":
        import models.parallel

        models.parallel.MIN_GROUP_HEADS = 1  # a speed threshold: let the tiny models' 2 heads a rank form 2 groups
        with torch.inference_mode():
            result = {f"dit_{a}": _dit(a)(latents, t, ctx, sp=sp) for a in DIT_VARIANTS}
            int8 = dataclasses.replace(sp, exchange="int8")  # q/k/v packed to int8 on the wire
            result.update({f"int8_{a}": _dit(a)(latents, t, ctx, sp=int8) for a in ("dense", "sla4")})
            fast = _kernel_dit()
            result["kernels_bf16"] = fast(latents, t, ctx.bfloat16(), sp=sp)
            result["kernels_int8"] = fast(latents, t, ctx.bfloat16(), sp=int8)
            head_rows: dict[str, list[int]] = {"rcm": [], "flow": []}  # rows the VAE's RGB head saw
            pipe = _load("rcm", head_rows["rcm"])
            pipe.sp = sp
            result["frames"] = torch.from_numpy(pipe.generate(_gen_params()).frames.copy())
            flow = _load("flow", head_rows["flow"])
            flow.cfg_parallel = CfgParallel(rank)
            result["flow"] = torch.from_numpy(flow.generate(_flow_params()).frames.copy())
            result.update({f"head_rows_{k}": torch.tensor(v) for k, v in head_rows.items()})
            # a worker's ranks set both: a guided flow job takes CFG parallel, an unguided one sequence parallel
            flow.sp = sp
            forwards: list[int] = []
            for module in flow.transformers.values():
                module.register_forward_pre_hook(lambda *_: forwards.append(1))
            result["both_guided"] = torch.from_numpy(flow.generate(_flow_params()).frames.copy())
            result["both_guided_forwards"] = torch.tensor(len(forwards))
            forwards.clear()
            result["both_unguided"] = torch.from_numpy(flow.generate(_unguided_params()).frames.copy())
            result["both_unguided_forwards"] = torch.tensor(len(forwards))
        torch.save(result, out / f"rank{rank}.pt")
    elif mode == "cfgsp":  # 2·k ranks, as a `turbovid worker --gpus 4` sets them up (worker/ranks.py)
        from models.parallel import cfg_sequence_parallel

        rows: list[int] = []
        flow = _load("flow", rows)
        flow.sp, flow.cfg_parallel = sp, cfg_sequence_parallel(sp)
        tokens: list[int] = []  # the tokens each DiT call's first block holds on this rank
        for module in flow.transformers.values():
            module.blocks[0].register_forward_pre_hook(lambda _m, a: tokens.append(a[0].shape[1]))
        with torch.inference_mode():
            frames = torch.from_numpy(flow.generate(_flow_params()).frames.copy())
        torch.save({"flow": frames, "tokens": torch.tensor(tokens), "head_rows": torch.tensor(rows),
                    "role": torch.tensor(flow.cfg_parallel.rank)}, out / f"rank{rank}.pt")
    elif mode == "kill":
        model = _dit("dense")
        if rank == 1:  # dies in the middle of the forward: after block 0, before block 1's all-to-all
            model.blocks[1].register_forward_pre_hook(lambda *_: os._exit(3))
        start = time.monotonic()
        try:
            with torch.inference_mode():
                model(latents, t, ctx, sp=sp)
            outcome = "returned"
        except Exception as exc:  # noqa: BLE001 - what the surviving rank saw is the result
            outcome = f"raised {type(exc).__name__}: {exc}"
        (out / f"rank{rank}.txt").write_text(f"{time.monotonic() - start:.3f}\n{outcome}\n")
        os._exit(0)  # the group is broken; skip its teardown
    torch.distributed.barrier()  # no rank tears the group down while another still uses it
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(mode: str, out: Path, env: dict[str, str] | None = None, world: int = 2,
               script: str = __file__) -> list[int]:
    """Run `script MODE RANK WORLD PORT OUT` as `world` rank processes; their exit codes."""
    port = _free_port()
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    procs = [subprocess.Popen([sys.executable, script, mode, str(r), str(world), str(port), str(out)],
                              cwd=REPO, env=full_env) for r in range(world)]
    try:
        return [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


# tests -----------------------------------------------------------------------------------------------------
def test_shard_and_pad_cover_the_sequence_once():
    x = torch.arange(9.0).view(1, 9, 1)
    parts = [SequenceParallel(rank=r, world_size=2).shard(x, 1) for r in range(2)]
    assert [p.shape[1] for p in parts] == [5, 5]
    assert torch.equal(torch.cat(parts, 1)[:, :9], x) and parts[1][0, -1, 0] == 0  # one zero pad at the end
    assert pad_to_multiple(x, 1, 3) is x


@pytest.mark.slow
def test_two_ranks_equal_one_process_dense_sla_rcm_generation_and_cfg_parallel(tmp_path):
    pytest.importorskip("kernels.sagesla")
    from models.pipeline import load_pipeline
    from models.tiny import ensure_tiny_checkpoints

    tiny = ensure_tiny_checkpoints(tmp_path / "wan-tiny")
    out = tmp_path / "out"
    out.mkdir()
    assert _run_ranks("equal", out, {"TINY_DIR": str(tiny)}) == [0, 0]

    latents, t, ctx = _inputs()
    with torch.inference_mode():
        want = {f"dit_{a}": _dit(a)(latents, t, ctx) for a in DIT_VARIANTS}
        fast = _kernel_dit()(latents, t, ctx.bfloat16())
        frames = torch.from_numpy(load_pipeline("wan-tiny", [tiny]).generate(_gen_params()).frames.copy())
        flow_pipe = load_pipeline("wan-tiny", [tiny], solver="flow")
        flow = flow_pipe.generate(_flow_params()).frames
        unguided = flow_pipe.generate(_unguided_params()).frames
    for rank in range(2):
        got = torch.load(out / f"rank{rank}.pt")
        for name, ref in want.items():
            assert got[name].shape == ref.shape
            assert torch.allclose(got[name], ref, atol=1e-5, rtol=1e-4), name
            assert _cos(got[name], ref) >= 0.99999, name
        # a whole generation: text encode, 2 rCM steps through the split DiT, VAE decode
        diff = (got["frames"].int() - frames.int()).abs()
        assert got["frames"].shape == frames.shape and diff.max() <= 1 and diff.float().mean() < 0.01
        # CFG parallel: cond on rank 0, uncond on rank 1, the guided velocity exchanged every step
        # (the ranks run 1 thread, this process several: float sums may round differently, hence ±1)
        diff = np.abs(got["flow"].numpy().astype(int) - flow.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, "CFG parallel"
        # sp and cfg_parallel both set: guided → CFG parallel (one DiT forward a step on each rank, not the
        # cond + uncond of sequence parallel), unguided → sequence parallel (cond only); same frames
        for key, ref in (("both_guided", flow), ("both_unguided", unguided)):
            diff = np.abs(got[key].numpy().astype(int) - ref.astype(int))
            assert diff.max() <= 1 and diff.mean() < 0.01, key
        assert int(got["both_guided_forwards"]) == 3 and int(got["both_unguided_forwards"]) == 3
        # both generations decode split across the 2 ranks (models.vae_parallel): each rank's RGB head ran
        # on its band of the 48 rows (+ halo), never on whole frames
        for solver in ("rcm", "flow"):
            assert 0 < got[f"head_rows_{solver}"].max() < 48, solver
        # q/k/v exchanged as int8 + per (token, head) scales: close to one process, and really quantized
        for a in ("dense", "sla4"):
            assert _cos(got[f"int8_{a}"], want[f"dit_{a}"]) >= 0.999, a
            assert not torch.allclose(got[f"int8_{a}"], want[f"dit_{a}"], atol=1e-5, rtol=1e-4), a
        # the kernel path (W8A8, Triton norms): with bf16 on the wire the split is exact per token (the send
        # layout written by the projections, the way back gathered by o's quantization pass); int8 is close
        assert torch.allclose(got["kernels_bf16"], fast, atol=1e-4, rtol=1e-3), "kernels bf16"
        assert _cos(got["kernels_bf16"], fast) >= 0.99999
        assert _cos(got["kernels_int8"], fast) >= 0.999 and not torch.equal(got["kernels_int8"], fast)
    assert torch.equal(torch.load(out / "rank0.pt")["dit_sla"], torch.load(out / "rank1.pt")["dit_sla"])
    assert not torch.allclose(want["dit_sla"], want["dit_dense"], atol=1e-3)  # SLA really is another path


@pytest.mark.slow
def test_four_ranks_sp_times_cfg_equal_one_process(tmp_path):
    """SP × CFG: ranks 0-1 run the conditional call of every step sequence parallel, ranks 2-3 the
    unconditional one, rank i and i+2 exchange velocities; the VAE decode is split over all four."""
    from models.pipeline import load_pipeline
    from models.tiny import ensure_tiny_checkpoints

    tiny = ensure_tiny_checkpoints(tmp_path / "wan-tiny")
    out = tmp_path / "out"
    out.mkdir()
    assert _run_ranks("cfgsp", out, {"TINY_DIR": str(tiny)}, world=4) == [0, 0, 0, 0]
    with torch.inference_mode():
        want = load_pipeline("wan-tiny", [tiny], solver="flow").generate(_flow_params()).frames
    head_rows = set()
    for rank in range(4):
        got = torch.load(out / f"rank{rank}.pt")
        diff = np.abs(got["flow"].numpy().astype(int) - want.astype(int))
        assert got["flow"].shape == want.shape and diff.max() <= 1 and diff.mean() < 0.01, rank
        assert int(got["role"]) == rank // 2  # 0: cond, 1: uncond
        # one DiT call a step (3 steps), on half of the 18 tokens (48×48, 5 frames: 2×3×3 patches): split
        # over the 2 ranks of its half, not unsplit (18) nor over all 4 (5)
        assert got["tokens"].tolist() == [9, 9, 9], rank
        assert 0 < got["head_rows"].max() < 48, rank  # the decode split: a band of rows (+ halo) each
        head_rows.add(int(got["head_rows"].max()))
    assert len(head_rows) >= 3  # four bands (of 1, 2, 1, 2 latent rows, + halos), not the two of 2 ranks


@pytest.mark.slow
def test_the_bench_compares_guided_steps_sequence_parallel_and_cfg_parallel():
    """`torchrun -m models.parallel --guided` (the GPU bench, here on CPU with gloo): one JSON line per
    split, both giving the one-process guided velocity."""
    import json

    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
         "models.parallel", "--size", "tiny", "--device", "cpu", "--steps", "2", "--guided"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [(r["mode"], r["ranks"], r["steps"]) for r in rows] == [("sp", 2, 2), ("cfg", 2, 2)]
    assert rows[1]["cfg_sp_ranks"] == 1  # 2 ranks: each call on one rank
    assert all(r["cos_min"] >= 0.99999 and r["split_s"] > 0 and r["one_s"] > 0 for r in rows), rows


@pytest.mark.slow
def test_a_rank_that_dies_mid_forward_makes_the_other_raise_within_seconds(tmp_path):
    start = time.monotonic()
    codes = _run_ranks("kill", tmp_path)
    assert codes == [0, 3]  # rank 0 finished (having raised), rank 1 died
    elapsed, outcome = (tmp_path / "rank0.txt").read_text().splitlines()
    assert outcome.startswith("raised"), outcome
    assert float(elapsed) < 10.0, f"rank 0 waited {elapsed} s for a dead peer"
    assert not (tmp_path / "rank1.txt").exists()
    assert time.monotonic() - start < 60


if __name__ == "__main__":
    _mode, _rank, _world, _port, _out = sys.argv[1:]
    _rank_main(_mode, int(_rank), int(_world), int(_port), Path(_out))

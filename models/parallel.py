"""Sequence parallel (Ulysses) for the Wan DiT: one job's forward across the N ranks of one host.

    sp = init_sequence_parallel(rank, world_size, port=29511)   # gloo on CPU, nccl on CUDA
    v = model(latents, t, ctx, cond, sp=sp)                      # every rank: the same inputs and output

Every rank gets the whole inputs (latents, timestep, text) and returns the whole velocity; inside the
forward each rank holds L/N tokens of the residual stream (token-parallel patch/time/text embedding
results are sliced, the blocks' norms, cross-attention to the text and FFN run on the rank's tokens
only). Self-attention is Ulysses (DeepSpeed-Ulysses, arXiv 2309.14509):

    q/k/v [B, H, L/N, D] on each rank ──all-to-all──▶ [B, H/N, L, D] (the full sequence, H/N heads)
    attention (dense / sla / sagesla: the SLA block map is over the full sequence, as on one rank)
    o [B, H/N, L, D] ──all-to-all──▶ [B, H, L/N, D]

`SequenceParallel(exchange="int8")` sends q/k/v and the attention output as int8 codes plus one fp32
scale per (token, head) (kernels/exchange_int8.py: about half the bytes on a PCIe-class link; the default
"bf16" sends them as computed). The exchanges are token-major (q/k/v as the projections leave them, [B, L/N, H, D]) and asynchronous:
the model starts each projection's all-to-all as soon as it is computed (v, then q, then k), so NCCL moves
it while the next projection runs; the attention then runs in two groups of the rank's heads and the
first group's way back is in flight while the second computes. For B = 1 the received q/k/v and the
attention output need no copies (one pack per exchange out, one unpack of the output back).

RoPE angles are computed for the whole grid and sliced to the rank's tokens. When N does not divide L
the sequence is zero-padded to a multiple of N; the padding is dropped before attention (so it never
enters a softmax or an SLA block) and after the final all-gather. H must be divisible by N.

No module-global state: the process group lives in the `SequenceParallel` object that the caller holds
and passes to each forward; `Ops.sequence` carries one forward's `SequenceShard` (the group plus the
true length) to the attention dispatch.

CFG parallel (`CfgParallel`, flow solver): the conditional and the unconditional DiT calls of a step on
two ranks, their velocities exchanged with one all-gather (`WanPipeline.cfg_parallel`). With 2·k ranks
(`cfg_sequence_parallel`) the two combine: ranks 0..k-1 run the conditional call sequence parallel among
themselves, ranks k..2k-1 the unconditional one, and rank i exchanges its velocity with rank i+k:

    4 ranks:   cond  = SP over {0, 1}      uncond = SP over {2, 3}      pairs {0, 2}, {1, 3}

Failure: the group is created with a `timeout`; a rank that dies makes the others' next collective
raise (gloo: the peer's socket closes, at once; otherwise the timeout) instead of hanging.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from models.ops import HeadChunks
from models.samplers import cfg_combine

__all__ = ["CfgParallel", "SequenceParallel", "SequenceShard", "cfg_layout", "cfg_sequence_parallel",
           "init_sequence_parallel", "pad_to_multiple"]

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EXCHANGES = ("bf16", "int8")
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]  # models.samplers.VelocityFn


# Fewer heads than this per attention call: one call (no head-group pipelining). Measured on 2×H200
# (models.parallel bench, 4 steps): 1.3B 480p, 6 heads a rank: 1 group 0.541 s, 2 groups 0.681 s, 4 groups
# 0.589 s (1 GPU 0.836 s); 14B 720p, 20 heads a rank: 2 groups 7.48 s against 7.76 s for the earlier
# blocking exchanges (1 GPU 13.36 s). Small calls lose more to per-call overhead than the overlap gains.
MIN_GROUP_HEADS = 8


def pad_to_multiple(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """x zero-padded along `dim` to the next multiple of n (x itself when already a multiple)."""
    extra = -x.shape[dim] % n
    if not extra:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


@dataclass(frozen=True)
class SequenceParallel:
    """A process group of `world_size` ranks that split one DiT forward over the sequence."""

    rank: int
    world_size: int
    group: dist.ProcessGroup | None = None  # None: the default group
    head_groups: int = 2  # the attention and its way back pipelined over this many groups of each rank's heads
    # q/k/v and the attention output on the wire: "bf16" (as computed) or "int8" (per token and head, with
    # its fp32 scale: about half the bytes, error ≤ half a step; kernels/exchange_int8.py)
    exchange: str = "bf16"

    def __post_init__(self) -> None:
        if self.exchange not in EXCHANGES:
            raise ValueError(f"unknown exchange {self.exchange!r}; known: {EXCHANGES}")

    def local_len(self, length: int) -> int:
        """Tokens per rank for a sequence of `length` (padded up to a multiple of world_size)."""
        return math.ceil(length / self.world_size)

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's slice of x along `dim` (padded to a multiple of world_size first)."""
        x = pad_to_multiple(x, dim, self.world_size)
        n = x.shape[dim] // self.world_size
        return x.narrow(dim, self.rank * n, n)

    def gather(self, x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
        """Every rank's slice concatenated along `dim`, padding dropped: the full `length` tokens."""
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim).narrow(dim, 0, length)

    def for_length(self, length: int) -> SequenceShard:
        """This group's plan for one forward over `length` tokens (what `Ops.sequence` carries)."""
        return SequenceShard(self, length, self.head_groups)

    # the two all-to-alls of Ulysses, token-major ------------------------------------------------------
    # q/k/v leave the projections token-major ([B, L/N, H, D]); the layouts below are chosen so that for
    # B == 1 the received q/k/v and the attention output are plain views (one packing copy per tensor on
    # the way out, one unpacking copy for the output on the way back), and every exchange is started
    # asynchronously so it runs on NCCL's stream under the compute that follows it.
    def start_heads(self, x: torch.Tensor) -> PendingExchange:
        """Start the exchange [B, L/N, H, D] (this rank's tokens, all heads) -> all tokens of this rank's
        H/N heads; `finish_heads` waits for it."""
        B, Ls, H, D = x.shape
        N = self.world_size
        if H % N:
            raise ValueError(f"sequence parallel needs the heads ({H}) divisible by the ranks ({N})")
        if self.exchange == "int8":
            from kernels.exchange_int8 import pack_int8

            return self._exchange(pack_int8(x, N), unpack_to=x.dtype)  # [N, B, Ls, H/N, D + 4] uint8
        send = x.reshape(B, Ls, N, H // N, D).permute(2, 0, 1, 3, 4).contiguous()  # [N, B, Ls, H/N, D]
        return self._exchange(send)

    def start_packed(self, send: torch.Tensor) -> PendingExchange:
        """Start the exchange of q/k/v already in the send layout [N, B, L/N, H/N, D] (send[j]: rank j's heads of
        this rank's tokens), as the bf16 path's projections write it (`Ops.rmsnorm_rope(chunks=N)`,
        `Ops.linear_heads`): no packing copy; `finish_heads` waits for it."""
        if self.exchange != "bf16" or send.dim() != 5 or send.shape[0] != self.world_size:
            raise ValueError(f"start_packed sends bf16 [{self.world_size}, B, L/N, H/N, D], got "
                             f"{self.exchange} {tuple(send.shape)}")
        return self._exchange(send.contiguous())

    def finish_heads(self, pending: PendingExchange, length: int) -> torch.Tensor:
        """-> [B, H/N, length, D] (the padding dropped): a view of token-major storage when B == 1."""
        recv = pending.wait()
        if pending.unpack_to is not None:
            from kernels.exchange_int8 import unpack_int8

            full = unpack_int8(recv, pending.unpack_to)  # [B, N·Ls, H/N, D]
        else:
            N, B, Ls, Hn, D = recv.shape
            full = recv.transpose(0, 1).reshape(B, N * Ls, Hn, D)  # recv[j]: rank j's tokens, in order
        return full.narrow(1, 0, length).transpose(1, 2)

    def start_tokens(self, o: torch.Tensor, recv: torch.Tensor | None = None) -> PendingExchange:
        """Start the way back: o [B, h, L, D] (all tokens of h of this rank's heads) -> every rank's h heads
        of its own tokens; `finish_tokens` waits for the parts and assembles them. With bf16, o stored
        token-major ([B, L, h, D], as SageSLA writes it) and L a multiple of N, B = 1 needs no packing copy;
        recv: where the received parts go (bf16; default a new buffer)."""
        B, h, L, D = o.shape
        N = self.world_size
        if self.exchange == "int8":
            from kernels.exchange_int8 import pack_tokens_int8

            return self._exchange(pack_tokens_int8(o, N), unpack_to=o.dtype)  # [N, B, Ls, h, D + 4] uint8
        t = pad_to_multiple(o.transpose(1, 2), 1, N)  # [B, L_pad, h, D]
        send = t.reshape(B, N, t.shape[1] // N, h, D).transpose(0, 1).contiguous()  # [N, B, Ls, h, D]
        return self._exchange(send, recv=recv)

    def finish_tokens(self, parts: list[PendingExchange], stacked: torch.Tensor | None = None,
                      ) -> torch.Tensor | HeadChunks:
        """The head groups' exchanges (group i: heads i·h ... of each rank's H/N) -> [B, H, L/N, D], a view of
        token-major [B, L/N, H, D] storage (what the output projection reads). stacked (bf16): the buffer
        [G, N, B, L/N, h, D] the parts were received into (`start_tokens(recv=stacked[i])`): returned as it
        is, as `HeadChunks` (the output projection's quantization pass gathers it; no unpacking copy)."""
        if stacked is not None:
            for part in parts:
                part.wait()
            G, N, B, Ls, h, D = stacked.shape
            return HeadChunks(stacked.view(G, N, B, Ls, h * D))
        N, B, Ls, h, D = parts[0].recv.shape
        dtype = parts[0].unpack_to
        if dtype is not None:  # int8-packed rows of D + 4 bytes
            from kernels.exchange_int8 import SCALE_BYTES, unpack_tokens_int8

            D -= SCALE_BYTES
            out = torch.empty(B, Ls, N, len(parts), h, D, dtype=dtype, device=parts[0].recv.device)
            for i, part in enumerate(parts):
                unpack_tokens_int8(part.wait(), out, i)
        else:
            out = parts[0].recv.new_empty(B, Ls, N, len(parts), h, D)  # head index = (rank, group, h)
            for i, part in enumerate(parts):
                out[:, :, :, i] = part.wait().permute(1, 2, 0, 3, 4)
        return out.view(B, Ls, N * len(parts) * h, D).transpose(1, 2)

    def _exchange(self, send: torch.Tensor, unpack_to: torch.dtype | None = None,
                  recv: torch.Tensor | None = None) -> PendingExchange:
        recv = torch.empty_like(send) if recv is None else recv
        work = dist.all_to_all_single(recv, send, group=self.group, async_op=True)
        return PendingExchange(work, send, recv, unpack_to)


@dataclass
class PendingExchange:
    """One started all-to-all: `send` is held until it is done, `recv` is valid after `wait`."""

    work: dist.Work | None
    send: torch.Tensor
    recv: torch.Tensor
    unpack_to: torch.dtype | None = None  # set: the payload is int8-packed (kernels/exchange_int8.py)

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()  # on CUDA: the current stream waits for NCCL's; the CPU does not block
            self.work = None
        return self.recv


@dataclass(frozen=True)
class SequenceShard:
    """One forward's sequence split: the group and the true (unpadded) sequence length."""

    sp: SequenceParallel
    length: int
    head_groups: int = 2  # attention + return exchange pipelined over this many groups of the rank's heads

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fn: AttentionFn) -> torch.Tensor:
        """Ulysses attention: q, k, v [B, H, L/N, D] (this rank's tokens) -> o [B, H, L/N, D]; `fn` runs the
        attention of H/N heads over the full, unpadded sequence."""
        sp = self.sp
        B, H, Ls, D = q.shape
        pending = [sp.start_heads(t.transpose(1, 2)) for t in (q, k, v)]
        o = self.attend_started(*pending, fn)
        return o.dense().view(B, Ls, H, D).transpose(1, 2) if isinstance(o, HeadChunks) else o

    def attend_started(self, q: PendingExchange, k: PendingExchange, v: PendingExchange,
                       fn: AttentionFn) -> torch.Tensor | HeadChunks:
        """The rest of `attend` once q/k/v's exchanges are started (`SequenceParallel.start_heads`, called by
        the model right after each projection so the exchange overlaps the next projection): the attention
        runs per group of heads and each group's way back starts while the next group computes. Returns
        [B, H, L/N, D] (int8 exchange) or, bf16, the received parts as `HeadChunks` [B, L/N, H·D]."""
        sp, L = self.sp, self.length
        qf, kf, vf = (sp.finish_heads(t, L) for t in (q, k, v))  # [B, H/N, L, D]
        B, Hn, _, D = qf.shape
        groups = self.head_groups if Hn % self.head_groups == 0 and Hn // self.head_groups >= MIN_GROUP_HEADS else 1
        h = Hn // groups
        # bf16: every group's way back lands in one buffer [G, N, B, L/N, h, D], read as it is by the output
        # projection (`finish_tokens(stacked=...)`)
        stacked = qf.new_empty(groups, sp.world_size, B, sp.local_len(L), h, D) if sp.exchange == "bf16" else None
        back = [sp.start_tokens(fn(qf[:, i * h:(i + 1) * h], kf[:, i * h:(i + 1) * h], vf[:, i * h:(i + 1) * h]),
                                recv=None if stacked is None else stacked[i])
                for i in range(groups)]
        return sp.finish_tokens(back, stacked)


@dataclass(frozen=True)
class CfgParallel:
    """Classifier-free guidance across a pair of ranks: rank 0 of the pair runs the conditional DiT call,
    rank 1 the unconditional one, and both get the guided velocity (one all-gather of the velocities per
    step). `sp`: the sequence split of this rank's call among the ranks that run the same call (SP × CFG,
    `cfg_sequence_parallel`); None: each call on one rank."""

    rank: int
    world_size: int = 2
    group: dist.ProcessGroup | None = None  # the pair (None: the default group of 2)
    sp: SequenceParallel | None = None

    def __post_init__(self) -> None:
        if self.world_size != 2:
            raise ValueError(f"CFG parallel splits cond/uncond over 2 ranks, got {self.world_size}")

    def guided(self, cond: VelocityFn, uncond: VelocityFn, guidance_scale: float) -> VelocityFn:
        """velocity(x, t) = v_u + g·(v_c − v_u), the same formula as `models.samplers.sample_flow_cfg`,
        with each rank computing one of the two."""

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            mine = (cond if self.rank == 0 else uncond)(x, t).float().contiguous()
            parts = [torch.empty_like(mine) for _ in range(2)]
            dist.all_gather(parts, mine, group=self.group)
            return cfg_combine(*parts, guidance_scale)  # parts: [v_cond, v_uncond]

        return velocity


def cfg_layout(rank: int, world_size: int) -> tuple[int, list[int], list[int]]:
    """SP × CFG over `world_size` = 2·k ranks: for `rank`, (its role: 0 conditional / 1 unconditional, the
    ranks of its sequence-parallel group, its pair [cond rank, uncond rank])."""
    if world_size < 2 or world_size % 2:
        raise ValueError(f"CFG parallel needs an even number of ranks, got {world_size}")
    k = world_size // 2
    role, index = divmod(rank, k)
    return role, list(range(role * k, role * k + k)), [index, index + k]


def cfg_sequence_parallel(sp: SequenceParallel) -> CfgParallel:
    """CFG parallel for the ranks of `sp` (the default group, an even number of them): 2 ranks are one
    pair (each call unsplit); 2·k ranks run each call sequence parallel over k ranks (`cfg_layout`).
    Collective: every rank of the default group calls it, in the same order (it creates the subgroups)."""
    if sp.group is not None:
        raise ValueError("cfg_sequence_parallel splits the default group; sp.group must be None")
    role, _, _ = cfg_layout(sp.rank, sp.world_size)
    if sp.world_size == 2:
        return CfgParallel(role)
    k = sp.world_size // 2
    halves = [dist.new_group(list(range(h * k, h * k + k))) for h in range(2)]  # every rank creates every group
    pairs = [dist.new_group([i, i + k]) for i in range(k)]
    index = sp.rank % k
    inner = SequenceParallel(rank=index, world_size=k, group=halves[role], head_groups=sp.head_groups,
                             exchange=sp.exchange)
    return CfgParallel(role, group=pairs[index], sp=inner)


def init_sequence_parallel(
    rank: int, world_size: int, *, port: int, host: str = "127.0.0.1", backend: str | None = None,
    timeout_s: float = 60.0,
) -> SequenceParallel:
    """Join (or create, on rank 0) the default process group over TCP at host:port and return its
    `SequenceParallel`. backend None: nccl when CUDA is available, else gloo. `timeout_s` bounds the
    rendezvous and every collective, so a lost rank fails the others instead of hanging them."""
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return SequenceParallel(rank=rank, world_size=world_size)


# bench: N ranks vs one ------------------------------------------------------------------------------------
def bench() -> None:
    """Sequence-parallel DiT vs one GPU, random weights (run under torchrun, one process per GPU):

        torchrun --nproc-per-node 2 -m models.parallel --size 14b --steps 4            # H200 ×2
        torchrun --nproc-per-node 2 -m models.parallel --size tiny --device cpu        # CPU smoke (gloo)
        torchrun --nproc-per-node 2 -m models.parallel --size 14b --steps 4 --guided   # flow + CFG

    Rank 0 first runs `steps` forwards alone (the 1-GPU time and reference), then every rank runs them
    split; rank 0 prints one JSON line: seconds for both, their ratio and the minimum cosine similarity of
    the outputs (Done-when: ratio ≤ 0.55 on 2 GPUs, cos ≥ 0.999). `--guided`: each step is a guided
    velocity instead (a conditional and an unconditional call, the flow solver's CFG), run split two ways,
    one line each: "sp" (both calls sequence parallel over every rank) and "cfg" (CFG parallel: each call
    on half of the ranks, `cfg_sequence_parallel`; what a `--gpus N` worker runs for guided jobs).
    `--exchange bf16,int8`: one split run per q/k/v wire format (`SequenceParallel.exchange`)."""
    import argparse
    import dataclasses
    import json
    import os
    import time

    from models.bench_dit import SIZES, inputs, random_model
    from models.config import WanConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="14b", choices=sorted(SIZES))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--attention", default="sagesla")
    ap.add_argument("--linear", default="w8a8")
    ap.add_argument("--head-groups", default="2", help="comma-separated: one split run per value")
    ap.add_argument("--profile", default=None, help="file: rank 0's kernel table of one split forward")
    ap.add_argument("--guided", action="store_true", help="guided steps (cond + uncond): SP vs CFG parallel")
    ap.add_argument("--exchange", default="bf16", help="q/k/v on the wire, comma-separated: bf16,int8")
    args = ap.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    sp = init_sequence_parallel(rank, world, host=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                                port=int(os.environ["MASTER_PORT"]), backend="nccl" if cuda else "gloo",
                                timeout_s=900)
    arch, shape = SIZES[args.size]
    cfg = WanConfig.from_name(arch)
    attention = args.attention if cuda else ("sla" if args.attention != "dense" else "dense")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = random_model(cfg, device=args.device, dtype=dtype, attention=attention,
                         linear=args.linear if cuda else "native", kernels=cuda)
    latents, _, ctx, cond = inputs(cfg, shape, args.device, dtype)
    times = [torch.full((1,), 1000.0 * t, device=args.device) for t in (0.99, 0.93, 0.85, 0.61)[: args.steps]]

    negative = ctx.roll(1, dims=1)  # --guided: another text for the unconditional call
    guidance = 5.0

    def step_fn(split: SequenceParallel | None, cfg: CfgParallel | None = None) -> VelocityFn:
        """One step's output: the conditional velocity, or (--guided) the guided one."""
        def call(text: torch.Tensor, part: SequenceParallel | None) -> VelocityFn:
            return lambda x, t: model(x, t, text, cond, sp=part)

        if not args.guided:
            return call(ctx, split)
        if cfg is not None:
            return cfg.guided(call(ctx, cfg.sp), call(negative, cfg.sp), guidance)
        c, u = call(ctx, split), call(negative, split)

        return lambda x, t: cfg_combine(c(x, t).float(), u(x, t).float(), guidance)

    def run(fn: VelocityFn, together: bool) -> tuple[float, list[torch.Tensor]]:
        with torch.inference_mode():
            fn(latents, times[0])  # type: ignore[arg-type]  # warm-up (autotune, NCCL communicators)
            if cuda:
                torch.cuda.synchronize()
            if together:
                dist.barrier()
            t0 = time.perf_counter()
            outs = [fn(latents, t) for t in times]  # type: ignore[arg-type]
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - t0, outs

    def report(outs: list[torch.Tensor], split_s: float, **extra: object) -> None:
        cos = min(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()
                  for a, b in zip(outs, ref, strict=True))
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        row = {"size": args.size, "ranks": world, "steps": args.steps, "attention": attention, **extra,
               "one_s": round(one_s, 3), "split_s": round(split_s, 3), "ratio": round(split_s / one_s, 3),
               "cos_min": round(cos, 6), "peak_gib_rank0": round(peak, 2)}
        print(json.dumps(row), flush=True)  # noqa: T201 - the bench's result line

    one_s, ref = run(step_fn(None), False) if rank == 0 else (0.0, [])
    dist.barrier()
    for exchange in args.exchange.split(","):
        for groups in (int(g) for g in args.head_groups.split(",")):
            split = dataclasses.replace(sp, head_groups=groups, exchange=exchange)
            split_s, outs = run(step_fn(split), True)
            if rank == 0:
                report(outs, split_s, **({"mode": "sp"} if args.guided else {}), head_groups=groups,
                       exchange=exchange)
            del outs
    if args.guided and world % 2 == 0:  # CFG parallel (× SP over half of the ranks from 4 ranks on)
        cfg = cfg_sequence_parallel(sp)
        split_s, outs = run(step_fn(None, cfg), True)
        if rank == 0:
            report(outs, split_s, mode="cfg", cfg_sp_ranks=cfg.sp.world_size if cfg.sp is not None else 1)
        del outs
    if args.profile:  # one split forward under the profiler (every rank runs it; rank 0 writes the table)
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        profiled = dataclasses.replace(sp, exchange=args.exchange.split(",")[-1])  # the last --exchange
        with torch.inference_mode(), profile(activities=activities) as prof:
            model(latents, times[0], ctx, cond, sp=profiled)
            if cuda:
                torch.cuda.synchronize()
        if rank == 0:
            key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=key, row_limit=45, max_name_column_width=80)
            with open(args.profile, "w") as f:
                f.write(table)
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    bench()

"""Expert offload for the A14B two-expert pipeline: one expert's weights on the device at a time.

Wan2.2 A14B runs a high-noise expert while t ≥ 0.9 and a low-noise expert below (the same architecture,
different weights). Both resident cost two W8A8 14B DiTs (~2 × 15 GB); under a 32 GB budget only one fits
beside the activations, the VAE and the text embeddings. `ExpertOffloader` keeps every expert's weights
in host memory (pinned on CUDA) and one device *slot*: a tensor per parameter/buffer, allocated once.
The active expert's parameters point into the slot; the others' point at their host copies (weights are
never written at inference, so nothing is copied back).

    off = ExpertOffloader(torch.device("cuda"))
    high = off.add("high", load_transformer(...))   # weights moved to pinned host memory at once
    low = off.add("low", load_transformer(...))     # so loading peaks at one expert on the device
    off.activate("high")                            # before the expert's forward (WanPipeline does it)

A switch is overlapped with compute: `activate` queues the copies on a side stream (the slot is reused
only after the previous expert's queued work, via `wait_stream`), embeddings and head first, then block by
block with an event after each block; a forward pre-hook on block i makes the compute stream wait for
block i's event only. So block 0 starts as soon as its weights are in, and the copy of the later blocks
runs under the compute of the earlier ones: a switch costs about one block's copy, not the whole model's
(at ~25 GB/s pinned H2D, 15 GB would be ~0.6 s if waited for in full).

On CPU the same code runs with plain (synchronous) copies and no streams or events: the tests there
prove the bookkeeping (outputs equal to no offload; the inactive expert's tensors are not the slot's;
one slot, allocated once) but not the overlap or the device memory, which need a GPU
(`docs/multi_gpu.md`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["ExpertOffloader"]


def _tensors(module: nn.Module) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
    """(qualified name, owner module, local name, tensor) of every parameter and buffer, in a fixed order."""
    for mod_name, mod in module.named_modules():
        for local, p in mod.named_parameters(recurse=False):
            yield f"{mod_name}.{local}" if mod_name else local, mod, local, p
        for local, b in mod.named_buffers(recurse=False):
            if b is not None:
                yield f"{mod_name}.{local}" if mod_name else local, mod, local, b


def _bind(owner: nn.Module, local: str, tensor: torch.Tensor) -> None:
    """Point owner's parameter or buffer `local` at `tensor` (a parameter keeps its Parameter object)."""
    if local in owner._parameters:
        param = owner._parameters[local]
        assert param is not None
        param.data = tensor
    else:
        owner._buffers[local] = tensor


def _block_index(name: str) -> int | None:
    """i for a tensor of ``blocks.i.…``, None for the embeddings and the head."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() else None


def _plain_tensors() -> contextlib.ExitStack:
    """Normal (not inference-mode) tensors without autograd: weights made or written here stay usable
    both inside and outside `torch.inference_mode` blocks."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.no_grad())
    return stack


class ExpertOffloader:
    """Experts of one architecture sharing one device slot; `activate(name)` swaps an expert in."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.experts: dict[str, nn.Module] = {}
        self._host: dict[str, dict[str, torch.Tensor]] = {}  # expert -> tensor name -> host copy
        self._slot: dict[str, torch.Tensor] = {}  # tensor name -> device tensor (allocated on first activate)
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._block_ready: dict[int, torch.cuda.Event] = {}  # block i -> its copy done (CUDA only)
        self._hooks: dict[str, list[torch.utils.hooks.RemovableHandle]] = {}
        self.active: str | None = None
        self.swaps = 0  # activations that copied weights (a switch), for tests and logs

    def add(self, name: str, module: nn.Module) -> nn.Module:
        """Take `module` (wherever its weights are) under offload: its weights move to host memory now."""
        if name in self.experts:
            raise ValueError(f"expert {name!r} was already added")
        host: dict[str, torch.Tensor] = {}
        for full, owner, local, t in _tensors(module):
            with _plain_tensors():  # straight into pinned memory on CUDA: one copy, no pageable staging
                h = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.cuda)
                h.copy_(t.detach())
            host[full] = h
            _bind(owner, local, h)  # the device copy (if any) is freed with its last reference
        if self.experts:
            first = next(iter(self._host.values()))
            shapes = {k: (v.shape, v.dtype) for k, v in first.items()}
            if shapes != {k: (v.shape, v.dtype) for k, v in host.items()}:
                raise ValueError(f"expert {name!r} does not have the same tensors as the others")
        self.experts[name], self._host[name] = module, host
        self._hooks[name] = [
            block.register_forward_pre_hook(self._wait_for_block(i))
            for i, block in enumerate(getattr(module, "blocks", []))
        ]
        return module

    def activate(self, name: str) -> nn.Module:
        """Make `name` the expert on the device (a no-op when it already is); returns it. The copies are
        queued, not waited for: its forward waits for each block's weights as it reaches the block."""
        if name not in self.experts:
            raise KeyError(f"unknown expert {name!r}; known: {sorted(self.experts)}")
        if name == self.active:
            return self.experts[name]
        if self.active is not None:  # the old expert goes back to its host copies (never written)
            for full, owner, local, _ in list(_tensors(self.experts[self.active])):
                _bind(owner, local, self._host[self.active][full])
        host = self._host[name]
        with _plain_tensors():  # the slot outlives any inference_mode block it is first filled in
            if not self._slot:
                self._slot = {k: torch.empty(v.shape, dtype=v.dtype, device=self.device) for k, v in host.items()}
            self._copy_in(host)
        for full, owner, local, _ in list(_tensors(self.experts[name])):
            _bind(owner, local, self._slot[full])
        self.active = name
        self.swaps += 1
        return self.experts[name]

    def _copy_in(self, host: dict[str, torch.Tensor]) -> None:
        """Host copies -> slot: embeddings/head first, then block by block (an event after each on CUDA)."""
        groups: dict[int | None, list[str]] = {None: []}
        for k in host:
            groups.setdefault(_block_index(k), []).append(k)
        if self._stream is None:
            for keys in groups.values():
                for k in keys:
                    self._slot[k].copy_(host[k])
            return
        self._block_ready.clear()
        compute = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(compute)  # the old expert's queued work is done with the slot first
        first: torch.cuda.Event | None = None
        with torch.cuda.stream(self._stream):
            for i, keys in groups.items():  # None (embeddings, head) first, then blocks 0, 1, ...
                for k in keys:
                    self._slot[k].copy_(host[k], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(self._stream)
                if i is None:
                    first = ev
                else:
                    self._block_ready[i] = ev
        assert first is not None
        compute.wait_event(first)  # the forward starts with the embeddings; each block waits in its pre-hook

    def _wait_for_block(self, i: int):  # noqa: ANN202 - a forward pre-hook
        def hook(_module: nn.Module, _args: object) -> None:
            ev = self._block_ready.pop(i, None)
            if ev is not None:
                torch.cuda.current_stream(self.device).wait_event(ev)

        return hook

    def release(self) -> None:
        """No expert on the device: the active one back on its host copies and the slot freed (the text
        encoder between prompts, when the budget wants its memory for the DiT)."""
        if self.active is not None:
            for full, owner, local, _ in list(_tensors(self.experts[self.active])):
                _bind(owner, local, self._host[self.active][full])
        if self._stream is not None:  # the slot's memory is reused only after the copies into it
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
        self._slot, self._block_ready, self.active = {}, {}, None

    def device_bytes(self) -> int:
        """Bytes of the device slot (one expert's weights)."""
        return sum(t.numel() * t.element_size() for t in self._slot.values())

    def slot_pointers(self) -> set[int]:
        return {t.data_ptr() for t in self._slot.values()}


# bench: the A14B denoise with offloaded experts vs resident ----------------------------------------------
def bench() -> None:
    """Two random-weight experts (A14B I2V shape), 4 steps (2 high-noise, 2 low-noise), resident vs
    offloaded, the offloaded run under a memory budget; one JSON line (seconds, ratio, peaks, cosine):

        python -m models.offload --size a14b --budget-gb 32          # H200: Done-when time ≤ 1.3×
        python -m models.offload --size tiny --device cpu            # CPU smoke test

    The budget is `torch.cuda.set_per_process_memory_fraction(budget / total)`, set after the resident
    run (which holds both experts). This covers the DiT part of the job only; `python -m models.bench_a14b`
    runs the whole job (umT5, VAE encode, both experts, VAE decode) under the budget."""
    import argparse
    import json
    import time

    from models.bench_dit import inputs, random_model
    from models.config import WanConfig

    sizes = {"tiny": ("wan-tiny", (1, 16, 3, 8, 8)), "a14b": ("wan2.2-i2v-a14b", (1, 16, 21, 90, 160))}
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="a14b", choices=sorted(sizes))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--budget-gb", type=float, default=32.0)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    arch, shape = sizes[args.size]
    cfg = WanConfig.from_name(arch)
    if args.size == "tiny":
        cfg = cfg.with_(in_dim=cfg.out_dim + 20)  # the I2V shape, as the A14B experts
    dtype = torch.bfloat16 if cuda else torch.float32
    kw = dict(device=args.device, dtype=dtype, attention="sagesla" if cuda else "dense",
              linear="w8a8" if cuda else "native", kernels=cuda)
    experts = {"high": random_model(cfg, seed=0, **kw), "low": random_model(cfg, seed=1, **kw)}  # type: ignore[arg-type]
    latents, _, ctx, cond = inputs(cfg, shape, args.device, dtype)
    steps = [("high", 990.0), ("high", 930.0), ("low", 850.0), ("low", 610.0)]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def run(pick) -> tuple[float, list[torch.Tensor]]:  # noqa: ANN001
        with torch.inference_mode():
            t0 = time.perf_counter()
            outs = [pick(name)(latents, torch.full((1,), t, device=args.device), ctx, cond) for name, t in steps]
            sync()
            return time.perf_counter() - t0, outs

    run(lambda name: experts[name])  # warm-up: autotune
    resident_s, want = run(lambda name: experts[name])
    resident_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    want = [w.cpu() for w in want]
    off = ExpertOffloader(args.device)
    for name, module in experts.items():
        off.add(name, module)
    sync()
    if cuda:
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget_gb / total))
        torch.cuda.reset_peak_memory_stats()
    run(off.activate)  # warm-up of the swap path
    offload_s, got = run(off.activate)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    cos = min(torch.nn.functional.cosine_similarity(a.double().flatten(), b.cpu().double().flatten(), dim=0).item()
              for a, b in zip(want, got, strict=True))
    row = {"size": args.size, "budget_gb": args.budget_gb, "resident_s": round(resident_s, 3),
           "offload_s": round(offload_s, 3), "ratio": round(offload_s / resident_s, 3),
           "resident_peak_gib": round(resident_peak, 2), "offload_peak_gib": round(peak, 2),
           "slot_gib": round(off.device_bytes() / 2**30, 2), "swaps": off.swaps, "cos_min": round(cos, 6)}
    print(json.dumps(row), flush=True)  # noqa: T201 - the bench's result line


if __name__ == "__main__":
    bench()

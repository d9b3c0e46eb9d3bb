"""CUDA graphs around the DiT forward: one graph per input signature, replayed at every denoise step.

A 1.3B forward launches ~750 kernels (Triton norms, W8A8 GEMMs and quant passes, SageSLA's passes); eager,
each is a Python call through the ops and a launch, and the GPU waits whenever the launching thread falls
behind (in the worker it shares the GIL with the progress, preview and encoder threads). A replayed graph
launches the whole forward at once.

`ForwardGraphs(module)` is called like the module: ``graphs(latents, timestep, context, cond, sla_topk=)``.
The signature (shapes, dtypes and devices of the tensors, and sla_topk) picks a graph; a new one is run
once eagerly (which autotunes and compiles every kernel at that shape, on a side stream as capture
requires), then captured. Each call copies its inputs into the graph's static inputs, replays it and
returns a copy of its output, so the result outlives the next replay. All graphs of one module share a
memory pool: the forward's activations stay reserved for it (a 1.3B 480p forward: ~2.8 GiB).

Where a capture fails (an op that cannot be captured, a host sync), that signature runs eagerly from
then on and the reason is logged once: a graph is only ever a faster way to run the same forward. The
forward must not read anything but its inputs and parameters that changes between calls (true of
`models.dit.WanTransformer`); a module whose parameters are replaced must get a new `ForwardGraphs`.

Measured on an H200 (`python3 -m models.bench_dit --graphs --variants sagesla/w8a8/fused`, random weights,
outputs bit-equal to the eager forward): 1.3B 480p 0.1748 -> 0.1662 s per forward (0.951x); 14B 720p
2.804 vs 2.809 s (GPU-bound: nothing to gain). `turbovid bench`'s in-process denoise (4 steps) took
0.679 s with graphs against 0.721 s without in the run before; the worker's denoise stage stayed at
0.705-0.733 s in both runs (with graphs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["ForwardGraphs"]


def _signature(tensors: tuple[torch.Tensor | None, ...], static: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in tensors) + static


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor | None, ...]
    output: torch.Tensor


class ForwardGraphs:
    """CUDA graphs of `module(*tensors, **static)`, one per signature (see the module docstring).

    max_graphs: signatures kept as graphs (a worker serves a few sizes); beyond it, new signatures run
    eagerly. `captured` / `eager` list the signatures of each kind (for tests and logs)."""

    def __init__(self, module: Callable[..., torch.Tensor], *, max_graphs: int = 8) -> None:
        self.module = module
        self.max_graphs = max_graphs
        self.graphs: dict[tuple[Any, ...], _Graph] = {}
        self.eager: set[tuple[Any, ...]] = set()
        self._pool: Any = None

    @property
    def captured(self) -> list[tuple[Any, ...]]:
        return list(self.graphs)

    def __call__(self, *tensors: torch.Tensor | None, **static: Any) -> torch.Tensor:
        first = next(t for t in tensors if t is not None)
        key = _signature(tensors, tuple(sorted(static.items())))
        if not first.is_cuda or key in self.eager:
            return self.module(*tensors, **static)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                self.eager.add(key)
                log.info("CUDA graphs: %d signatures captured already; %s runs eagerly", self.max_graphs, key)
                return self.module(*tensors, **static)
            try:
                entry = self._capture(tensors, static)
            except Exception as exc:  # noqa: BLE001 - any failure means: run this signature eagerly
                self.eager.add(key)
                log.warning("CUDA graph capture failed for %s, running it eagerly: %s", key, exc)
                torch.cuda.synchronize(first.device)
                return self.module(*tensors, **static)
            self.graphs[key] = entry
            log.info("CUDA graph captured for %s (%d kept)", key, len(self.graphs))
        for dst, src in zip(entry.inputs, tensors, strict=True):
            if dst is not None and src is not None:
                dst.copy_(src)
        entry.graph.replay()
        return entry.output.clone()

    def _capture(self, tensors: tuple[torch.Tensor | None, ...], static: dict[str, Any]) -> _Graph:
        first = next(t for t in tensors if t is not None)
        inputs = tuple(None if t is None else t.clone() for t in tensors)
        side = torch.cuda.Stream(first.device)
        side.wait_stream(torch.cuda.current_stream(first.device))
        with torch.cuda.stream(side):  # warm-up: autotuning, compiling, cuDNN plans; not captured
            self.module(*inputs, **static)
        torch.cuda.current_stream(first.device).wait_stream(side)
        torch.cuda.synchronize(first.device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.module(*inputs, **static)
        return _Graph(graph, inputs, output)

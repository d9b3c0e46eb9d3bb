"""models.cuda_graphs: the DiT forward replayed as CUDA graphs. On CPU the wrapper calls the module as it is;
the GPU tests check the replay against the eager forward on wan-tiny through the Triton paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.jobs import GenerationParams
from contract.settings import WorkerSettings
from models.cuda_graphs import ForwardGraphs
from models.pipeline import load_pipeline


def _params(**kw) -> GenerationParams:
    base = dict(prompt="a lighthouse at dusk", width=64, height=64, num_frames=9, seed=5, num_steps=4)
    base.update(kw)
    return GenerationParams(**base)


def test_on_cpu_the_module_runs_as_it_is():
    calls = []

    def fn(x: torch.Tensor, y: torch.Tensor | None, *, scale: float) -> torch.Tensor:
        calls.append(scale)
        return x * scale

    graphs = ForwardGraphs(fn)
    out = graphs(torch.ones(3), None, scale=2.0)
    assert torch.equal(out, torch.full((3,), 2.0)) and calls == [2.0]
    assert graphs.captured == [] and not graphs.eager


def test_workers_default_to_graphs_and_a_cpu_pipeline_ignores_the_flag(tmp_path):
    assert WorkerSettings().cuda_graphs is True
    pipe = load_pipeline("wan-tiny", [], cache_dir=tmp_path)
    plain = pipe.generate(_params()).frames
    pipe.cuda_graphs = True  # asked for, but there is no CUDA device: eager, the same frames
    assert np.array_equal(pipe.generate(_params()).frames, plain)
    assert pipe._graphs == {}


@pytest.fixture(scope="module")
def gpu_pipe(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny")
    return load_pipeline("wan-tiny", [], cache_dir=cache, device="cuda", dtype=torch.bfloat16,
                         attention="sagesla", linear="w8a8")


@pytest.mark.gpu
def test_graph_replay_equals_the_eager_forward(gpu_pipe):
    model = gpu_pipe.transformers["t2v"]
    graphs = ForwardGraphs(model)
    ctx = torch.randn(1, 512, model.cfg.text_dim, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        for shape in ((1, 16, 3, 16, 16), (1, 16, 5, 16, 24), (1, 16, 3, 16, 16)):
            for seed in (0, 1):  # new inputs each call: the graph reads its inputs, not the first call's
                gen = torch.Generator(device="cuda").manual_seed(seed)
                x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
                t = torch.full((1,), 250.0 + 500 * seed, device="cuda")
                eager = model(x, t, ctx, None, sla_topk=0.5)
                replayed = graphs(x, t, ctx, None, sla_topk=0.5)
                assert torch.equal(replayed, eager), shape
        assert len(graphs.captured) == 2 and not graphs.eager  # one graph per latent size
        first = graphs(x, t, ctx, None, sla_topk=0.5)
        graphs(x * 2, t, ctx, None, sla_topk=0.5)
        assert torch.equal(first, model(x, t, ctx, None, sla_topk=0.5))  # a result outlives the next replay


@pytest.mark.gpu
def test_a_forward_that_cannot_be_captured_runs_eagerly():
    def syncs(x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum().item())  # a host sync: not capturable

    graphs = ForwardGraphs(syncs)
    x = torch.ones(4, device="cuda")
    assert torch.equal(graphs(x), x * 4.0)
    assert len(graphs.eager) == 1 and graphs.captured == []
    assert torch.equal(graphs(x * 2), x * 16.0)  # and stays eager, correctly
    torch.cuda.synchronize()  # the device is usable after the failed capture


@pytest.mark.gpu
def test_a_pipeline_with_graphs_generates_the_same_frames(gpu_pipe):
    gpu_pipe.cuda_graphs = False
    eager = gpu_pipe.generate(_params()).frames
    gpu_pipe.cuda_graphs = True
    try:
        graphed = gpu_pipe.generate(_params()).frames
        again = gpu_pipe.generate(_params(seed=6)).frames
    finally:
        gpu_pipe.cuda_graphs = False
    assert np.array_equal(graphed, eager)
    assert not np.array_equal(again, graphed)  # another seed: other frames through the same graph
    (graphs,) = gpu_pipe._graphs.values()
    assert len(graphs.captured) == 1


@pytest.mark.gpu
def test_an_ops_override_bypasses_the_captured_graphs(gpu_pipe):
    # A graph replays the backends it was captured with: under `override` the pipeline runs eagerly.
    from models.ops import override

    with override(kernels=False):
        plain = gpu_pipe.generate(_params()).frames  # eager, plain PyTorch
    gpu_pipe.cuda_graphs = True
    try:
        gpu_pipe.generate(_params())  # captures (Triton kernels)
        with override(kernels=False):
            forced = gpu_pipe.generate(_params()).frames
    finally:
        gpu_pipe.cuda_graphs = False
    assert np.array_equal(forced, plain)

"""Workers advertise what they run, so the gateway can decide which knobs a model honours.

Each worker writes `<p>:worker:<name>` (its `WorkerInfo` as JSON) with a short TTL that its heartbeat
renews, and adds its name to `<p>:workers:<model>` for every queue it serves. A worker is live
while its key exists: a killed worker disappears within one TTL, whatever RQ's own worker key says.
The gateway reads `live(model)` for `/v1/models` and to build the `Capabilities` a create is checked
against: a knob is honoured only if every live worker of the model honours it (any of them may take
the job); with no live worker the catalog's defaults apply (the card's solver, no SLA).
"""

from __future__ import annotations

import redis
from pydantic import BaseModel, ConfigDict

from contract.catalog import ModelCard, Solver
from contract.jobs import Capabilities
from contract.keys import Keys, text


class WorkerInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    models: list[str]  # queues served
    solver: Solver
    attention: str  # dense | sla | sagesla
    linear: str  # native | w8a8
    device: str
    dtype: str
    started_at: float
    ready: bool = True  # False while the model is still loading
    ranks: int = 1  # sequence-parallel ranks (GPUs) behind this one consumer (`turbovid worker --gpus N`)
    gpu_memory_gb: float | None = None  # the memory budget it runs under (worker.gpu_memory_gb), None: the device's
    offload: list[str] = []  # what its memory plan keeps off the device between uses: "experts", "text_encoder"
    # which implementation runs each fast-path op, once warm: {"gemm": "gluon", "attention": "gluon", "quant": ...};
    # empty on the CPU, for a ranked worker, or without a warm-up (worker.main.kernels_in_use)
    kernels: dict[str, str] = {}

    @property
    def sla(self) -> bool:
        return self.attention in ("sla", "sagesla")


class MixedWorkers(RuntimeError):
    """Live workers of one model disagree on the solver: the output would depend on who takes the job."""


class WorkerRegistry:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys

    def advertise(self, info: WorkerInfo, ttl_s: int) -> None:
        """Write (or renew) the worker's record; call it from the heartbeat, every < ttl_s."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.keys.worker(info.name), info.model_dump_json(), ex=ttl_s)
        for model in info.models:
            pipe.sadd(self.keys.workers(model), info.name)
        pipe.execute()

    def withdraw(self, info: WorkerInfo) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(self.keys.worker(info.name))
        for model in info.models:
            pipe.srem(self.keys.workers(model), info.name)
        pipe.execute()

    def live(self, model: str) -> list[WorkerInfo]:
        """Live workers serving `model` (ready or loading); forgets the names of dead ones."""
        names = sorted(text(n)
                       for n in self.r.smembers(self.keys.workers(model)))  # type: ignore[union-attr]
        if not names:
            return []
        raws = self.r.mget([self.keys.worker(n) for n in names])
        dead = [n for n, raw in zip(names, raws, strict=True) if raw is None]  # type: ignore[arg-type]
        if dead:
            self.r.srem(self.keys.workers(model), *dead)
        return [WorkerInfo.model_validate_json(raw) for raw in raws if raw is not None]  # type: ignore[union-attr]


def capabilities(card: ModelCard, workers: list[WorkerInfo]) -> Capabilities:
    """What the model's ready workers all honour; the catalog's defaults when none is ready."""
    ready = [w for w in workers if w.ready]
    if not ready:
        return Capabilities(solver=card.solver, sla=False)
    solvers = {w.solver for w in ready}
    if len(solvers) > 1:
        raise MixedWorkers(f"the live workers of {card.id} run different solvers ({', '.join(sorted(solvers))}); "
                           "configure one solver per model")
    return Capabilities(solver=solvers.pop(), sla=all(w.sla for w in ready))

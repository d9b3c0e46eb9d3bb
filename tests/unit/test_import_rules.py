"""The layering rules of ARCHITECTURE.md, checked on the real import graph and on the source.

- the gateway (service/) loads no torch, models, kernels or worker code;
- the worker's modules load no FastAPI/Starlette/uvicorn, and nothing of service/;
- contract/ loads neither torch nor FastAPI nor any other TurboVid package;
- models/ and kernels/ import nothing of worker/service/cli and no redis/rq/boto3/fastapi/prometheus;
- exactly one module enqueues RQ jobs (contract/queue.py).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contract", "service", "worker", "models", "kernels", "cli")


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py")
    )


def _loaded_after_importing(modules: list[str]) -> set[str]:
    """Top-level names in sys.modules after importing `modules` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_gateway_loads_no_torch_models_kernels_or_worker():
    loaded = _loaded_after_importing(_modules("service") + _modules("contract"))
    assert "fastapi" in loaded  # the check itself works: the gateway did load its web stack
    assert not loaded & {"torch", "triton", "models", "kernels", "worker", "cli", "av"}


def test_contract_loads_no_torch_no_web_stack_and_no_other_package():
    loaded = _loaded_after_importing(_modules("contract"))
    assert "pydantic" in loaded and "redis" in loaded
    assert not loaded & {"torch", "fastapi", "starlette", "uvicorn", "models", "kernels", "service", "worker", "cli"}


def test_the_worker_loads_no_web_stack_and_nothing_of_the_gateway():
    loaded = _loaded_after_importing(_modules("worker"))
    assert "rq" in loaded and "contract" in loaded
    assert not loaded & {"fastapi", "starlette", "uvicorn", "service", "cli"}


def _imports(path: Path) -> set[str]:
    """Top-level names a file imports anywhere (module level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["models", "kernels"])
def test_models_and_kernels_stay_below_the_processes(package):
    forbidden = {"worker", "service", "cli", "redis", "rq", "boto3", "botocore", "fastapi", "starlette",
                 "prometheus_client"}
    if package == "kernels":
        forbidden |= {"models", "contract"}
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden)
                 for p in (ROOT / package).rglob("*.py") if _imports(p) & forbidden}
    assert offenders == {}


def test_models_use_only_contract_data_types():
    allowed = {"contract.catalog", "contract.jobs"}
    offenders = []
    for p in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "contract":
                if node.module not in allowed:
                    offenders.append(f"{p.relative_to(ROOT)}: {node.module}")
    assert offenders == []


_ENQUEUE = {"enqueue", "enqueue_call", "enqueue_at", "enqueue_in", "enqueue_many", "enqueue_job", "schedule"}


def test_exactly_one_module_enqueues_rq_jobs():
    """RQ's enqueue methods are called in contract/queue.py only (everyone else calls its JobQueue.submit)."""
    enqueuers = set()
    for package in PACKAGES:
        for p in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in _ENQUEUE):
                    enqueuers.add(str(p.relative_to(ROOT)))
    assert enqueuers == {"contract/queue.py"}

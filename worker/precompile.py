"""Compile the Triton kernels a worker is about to launch, many at once, before it launches them.

A fresh worker compiles every kernel specialization its warm-up meets (one per kernel, config and class of
argument shapes: 51 for the 1.3B model at 480p) when the warm-up first launches it, one after the other:
35 of the 45 s from start to ready on an H200 host (session 23). Each compile is independent, and Triton's
compiler spends most of its time in MLIR/LLVM passes that release the GIL and in a `ptxas` subprocess, so a
thread pool runs them side by side (182 specializations: 72 s serially, 37 s on 2 cores), while the weights
load. With the shipped list that start took 18 s.

What to compile is recorded, not guessed. Triton hands each compiled specialization to
`knobs.runtime.jit_post_compile_hook` in its own serialized form (signature, constexprs, alignment
attributes, options); `KernelSpecs.recording` keeps those of this project's kernels (`kernels/`) during the
warm-up, and `save` writes them to `<cache_dir>/kernels/<model>/<device_tag>.json`. The next start hands them back
to Triton through `JITFunction.preload` inside `AsyncCompileMode` (`precompile`), which puts each kernel in
the JIT's in-memory cache under the key a launch computes, so the warm-up's launches find them compiled.
On a fresh host the list shipped for its GPU model and the worker's model
(`worker/autotune/<gpu_tag>.<model>.kernels.json`, recorded by `turbovid bench --logs` there) is used, as the
autotuner's shipped choices are. Lists are per model: the 14B's 86 specializations at 480p + 720p would only
slow a 1.3B worker's start, since the warm-up waits for the precompile.

A warm-up that tunes a kernel (no saved autotune choice for a shape) compiles every candidate config; only
the configs its autotuner chose are kept in the list (`KernelSpecs.keep_chosen`), the ones the next start
runs.

A recorded entry is skipped when its kernel's source changed since (the hash of `JITFunction.cache_key`,
as `worker.warmup.AutotuneChoices` checks), when the file was written by another Triton version, or when
the kernel no longer exists; one that fails to compile is logged and left to compile at its launch, as
before. None of this changes what runs: a kernel missing from the list compiles when launched.

`worker.precompile_in_processes` (off by default) runs the compiles in spawned child processes first
(`compile_in_processes`) and the threads then only load them from the file cache. Measured on one H200 host
(`gpu_verify.sh s24f`): the 14B's load went from 17.0 to 12.6 s and its start from 42.9 to 40.2 s, but the
precompile itself did not get shorter (the children's own start-up: spawning, importing torch and the kernels),
so the 1.3B, whose load is short, started in 19.8 s against 18.0 s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("turbovid.worker")

KERNEL_PACKAGE = "kernels"
SHIPPED = Path(__file__).parent / "autotune"  # <gpu_tag>.<model>.kernels.json, beside the shipped autotune choices


@dataclass(frozen=True)
class KernelSpec:
    """One compiled specialization: the kernel's full name, a hash of its source, Triton's serialized form."""

    kernel: str
    source: str
    spec: str  # JSON, as Triton's serialize_specialization_data wrote it

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "source": self.source, "spec": json.loads(self.spec)}


@dataclass
class PrecompileReport:
    listed: int = 0  # entries in the files read
    compiled: int = 0  # now in the JIT's cache, ready for the first launch
    stale: int = 0  # kernel gone or its source edited since the entry was recorded
    failed: int = 0  # did not compile (left to compile at launch)
    launchers: int = 0  # of the compiled kernels, those whose C launcher was built (else built at first launch)
    threads: int = 0
    in_processes: int = 0  # of the compiled kernels, those the code generator ran for in child processes
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few failures, for the log

    def describe(self) -> str:
        where = f"{self.threads} processes, then threads" if self.in_processes else f"{self.threads} threads"
        return (f"{self.compiled} of {self.listed} recorded kernel specializations compiled in {self.seconds:.1f} s "
                f"on {where} ({self.stale} stale, {self.failed} failed; {self.launchers} launchers built)")


def source_hash(fn: Any) -> str:
    """A hash of a JITFunction's source and the jit functions it calls (Triton's `cache_key`)."""
    try:
        key = str(fn.cache_key)
    except Exception:  # noqa: BLE001 - a Triton without it: the source alone
        key = getattr(fn, "src", None) or repr(fn)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def unwrap(obj: Any, cls: type) -> Any:
    """`obj` if it is a `cls`, else the first `cls` reached through its wrappers' `.fn` (Triton's autotuner
    and heuristics; up to 4 deep); None when there is none."""
    depth = 0
    while obj is not None and depth < 4 and not isinstance(obj, cls):
        try:
            obj = getattr(obj, "fn", None)
        except Exception:  # noqa: BLE001 - objects whose attribute lookup itself fails
            obj = None
        depth += 1
    return obj if isinstance(obj, cls) else None


def full_name(jit: Any) -> str:
    """A JITFunction's "module.qualname", Triton's own naming in serialized specializations."""
    return f"{jit.fn.__module__}.{jit.fn.__qualname__}"


def find_in_modules(cls: type, package: str = KERNEL_PACKAGE) -> Iterator[tuple[str, str, Any]]:
    """(module name, attribute, object) for each `cls` instance held by an imported module of `package`,
    directly or inside wrappers (`unwrap`)."""
    import sys

    for mod_name, module in list(sys.modules.items()):
        if module is None or not (mod_name == package or mod_name.startswith(package + ".")):
            continue
        for attr, value in list(vars(module).items()):
            obj = unwrap(value, cls)
            if obj is not None:
                yield mod_name, attr, obj


def find_jit_functions(package: str = KERNEL_PACKAGE) -> dict[str, Any]:
    """Every JITFunction held by an imported module of `package`, directly or inside an autotuner /
    heuristics wrapper, by its `full_name`."""
    from triton.runtime.jit import JITFunction

    return {full_name(fn): fn for _, _, fn in find_in_modules(JITFunction, package)}


class KernelSpecs:
    """The recorded specializations of one file: {"triton": version, "kernels": [entry, ...]}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[tuple[str, str], KernelSpec] = {}  # (kernel, spec) -> entry, in recording order
        self.compiles = 0  # compiles seen while recording (each launch that missed the JIT's memory cache)
        self._lock = threading.Lock()

    def load(self) -> int:
        """Read the file (missing: nothing); entries written by another Triton version are dropped. Returns
        the number read."""
        import triton

        data = read_json(self.path, "kernel list")
        if data is None:
            return 0
        if not isinstance(data, dict) or data.get("triton") != triton.__version__:
            log.info("kernel list %s was recorded with Triton %s, this is %s: not used", self.path,
                     data.get("triton") if isinstance(data, dict) else "?", triton.__version__)
            return 0
        n = 0
        for item in data.get("kernels", []):
            try:
                entry = KernelSpec(str(item["kernel"]), str(item["source"]), json.dumps(item["spec"]))
            except (KeyError, TypeError) as exc:
                log.warning("ignoring a malformed entry of %s: %s", self.path, exc)
                continue
            self.add(entry)
            n += 1
        return n

    def add(self, entry: KernelSpec) -> None:
        with self._lock:
            self.entries.setdefault((entry.kernel, entry.spec), entry)

    def merge(self, other: KernelSpecs) -> None:
        for entry in list(other.entries.values()):
            self.add(entry)

    def drop_stale(self, package: str = KERNEL_PACKAGE) -> int:
        """Drop the entries whose kernel is gone or was edited since; returns how many were dropped."""
        functions = find_jit_functions(package)
        with self._lock:
            stale = [k for k, e in self.entries.items()
                     if e.kernel not in functions or source_hash(functions[e.kernel]) != e.source]
            for k in stale:
                del self.entries[k]
        return len(stale)

    def keep_chosen(self, package: str = KERNEL_PACKAGE) -> int:
        """Drop the entries of autotuned kernels that are not a config their autotuner chose (the candidates
        a tuning warm-up compiled and timed); returns how many were dropped. A kernel whose autotuner has
        chosen nothing in this process keeps its entries."""
        chosen = chosen_configs(package)
        functions = find_jit_functions(package)
        with self._lock:
            drop = [k for k, e in self.entries.items()
                    if chosen.get(e.kernel) and e.kernel in functions
                    and not any(spec_matches(e.spec, functions[e.kernel], c) for c in chosen[e.kernel])]
            for k in drop:
                del self.entries[k]
        return len(drop)

    def save(self) -> int:
        """Write the entries (atomically); returns how many. Errors are logged, not raised."""
        import triton

        with self._lock:
            items = [e.to_json() for e in self.entries.values()]
        # Triton's own key order: an entry read back compares equal to the same specialization recorded again
        ok = write_json(self.path, {"triton": triton.__version__, "kernels": items}, "kernel list", sort_keys=False)
        return len(items) if ok else 0

    @contextmanager
    def recording(self, package: str = KERNEL_PACKAGE) -> Iterator[KernelSpecs]:
        """Within the block, every specialization Triton compiles (or loads from its file cache) for a
        kernel of `package` is added here. Any hook installed before is still called."""
        from triton import knobs

        before = knobs.runtime.jit_post_compile_hook
        prefix = package + "."

        def hook(*, fn: Any, compile: dict[str, Any], **kwargs: Any) -> Any:
            try:
                jit = fn.jit_function
                name = full_name(jit)
                if name.startswith(prefix):
                    with self._lock:
                        self.compiles += 1
                    self.add(KernelSpec(name, source_hash(jit), compile["specialization_data"]))
            except Exception:  # noqa: BLE001 - recording is an optimisation: never fail a launch for it
                log.debug("could not record a compiled kernel", exc_info=True)
            return before(fn=fn, compile=compile, **kwargs) if before is not None else None

        knobs.runtime.jit_post_compile_hook = hook
        try:
            yield self
        finally:
            knobs.runtime.jit_post_compile_hook = before


def chosen_configs(package: str = KERNEL_PACKAGE) -> dict[str, list[Any]]:
    """The configs each autotuner of `package` has chosen so far (its cache), by the tuned kernel's full name."""
    from triton.runtime.jit import JITFunction

    from worker.warmup import find_autotuners

    out: dict[str, list[Any]] = {}
    for tuner in find_autotuners(package).values():
        fn = unwrap(tuner.fn, JITFunction)
        if fn is not None:
            out.setdefault(full_name(fn), []).extend(tuner.cache.values())
    return out


def spec_matches(spec: str, fn: Any, config: Any) -> bool:
    """Whether a serialized specialization of `fn` was compiled with `config` (a triton.Config): its
    constexpr values for the config's keyword arguments, and its warps and stages."""
    data = json.loads(spec)
    names = fn.arg_names
    consts: dict[str, Any] = {}
    for key, value in zip(data.get("constant_keys", []), data.get("constant_vals", []), strict=False):
        if isinstance(key, list) and len(key) == 1 and isinstance(key[0], int) and key[0] < len(names):
            consts[names[key[0]]] = value["constexpr"] if isinstance(value, dict) and "constexpr" in value else value
    options = data.get("options", {})
    return (all(consts.get(k, object()) == v for k, v in config.kwargs.items())
            and options.get("num_warps") == config.num_warps and options.get("num_stages") == config.num_stages)


def read_json(path: Path, what: str) -> Any:
    """The JSON in `path`; None when it is missing or unreadable (logged: the caller goes on without it)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s %s: %s", what, path, exc)
        return None


def write_json(path: Path, data: Any, what: str, *, sort_keys: bool = True) -> bool:
    """Write `data` to `path` atomically (a temporary file renamed over it); False (logged) on an OS error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=sort_keys)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not save the %s to %s: %s", what, path, exc)
        return False
    return True


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def compile_in_processes(entries: list[KernelSpec], processes: int) -> int:
    """Run Triton's compiler for `entries` in `processes` spawned child processes, for this process's GPU
    target and into its file cache; returns how many compiled (0, logged, when the pool cannot run).

    Compiling on threads beside the weight load, the code generator's Python holds the GIL that the load also
    needs (the 14B load took 17-21 s beside 16 compile threads, 11 s alone). Children have a GIL each and no CUDA
    context: they compile for the target through `kernels.compile_check`'s stand-in driver and leave the
    kernels in Triton's file cache, under the keys the parent's compile of the same specialization computes, so
    the parent's `preload` then only loads them. A child that does not compile an entry leaves it to the
    parent, which compiles it as before."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from triton import knobs
    from triton.runtime.driver import driver

    target = driver.active.get_current_target()
    if target.backend != "cuda" or not entries:
        return 0
    started = time.perf_counter()
    modules = sorted({e.kernel.rsplit(".", 1)[0] for e in entries})
    try:
        with ProcessPoolExecutor(min(processes, len(entries)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_child_start,
                                 initargs=(str(knobs.cache.dir), int(target.arch), modules)) as pool:
            done = sum(pool.map(_child_compile, [(e.kernel, e.spec) for e in entries]))
    except Exception as exc:  # noqa: BLE001 - never fatal: the threads compile everything instead
        log.warning("precompile: compiling in child processes failed (%s); compiling on threads", exc)
        return 0
    log.debug("precompile: %d of %d compiled in %d processes in %.1f s", done, len(entries), processes,
              time.perf_counter() - started)
    return done


_CHILD_FUNCTIONS: dict[str, Any] = {}


def _child_start(cache_dir: str, arch: int, modules: list[str]) -> None:
    """A compile process's set-up: no GPU (no CUDA context, no device memory), the parent's file cache, a
    driver that reports the parent's target, the kernels' modules imported."""
    import importlib

    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from triton import knobs

    from kernels.compile_check import use_target

    knobs.cache.dir = cache_dir
    use_target(arch)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - its entries are left to the parent
            log.debug("precompile child: cannot import %s", module, exc_info=True)
    _CHILD_FUNCTIONS.update(find_jit_functions())


def _child_compile(item: tuple[str, str]) -> bool:
    kernel, spec = item
    fn = _CHILD_FUNCTIONS.get(kernel)
    if fn is None:
        return False
    try:
        fn.preload(spec)
    except Exception:  # noqa: BLE001 - the parent compiles it (and reports a real failure)
        return False
    return True


def precompile(entries: Iterable[KernelSpec], threads: int | None = None, package: str = KERNEL_PACKAGE, *,
               processes: bool = False) -> PrecompileReport:
    """Compile `entries` on `threads` threads (default: one per CPU) into the JIT's caches (the in-memory
    one a launch looks up, and Triton's file cache), then build each compiled kernel's C launcher (a small
    C module Triton compiles with the host's C compiler at a kernel's first launch, cached in its file
    cache). The kernels' modules must be imported. With `processes`, the compiles run first in as many
    child processes (`compile_in_processes`), and the threads then load them from the file cache."""
    from triton.runtime._async_compile import AsyncCompileMode
    from triton.runtime.driver import driver

    started = time.perf_counter()
    entries = list(entries)
    report = PrecompileReport(listed=len(entries), threads=threads or default_threads())
    functions = find_jit_functions(package)
    todo: list[tuple[Any, KernelSpec, str]] = []
    for entry in entries:
        fn = functions.get(entry.kernel)
        if fn is None or source_hash(fn) != entry.source:
            report.stale += 1
            continue
        todo.append((fn, entry, str(json.loads(entry.spec)["key"])))
    if todo and processes:
        report.in_processes = compile_in_processes([entry for _, entry, _ in todo], report.threads)
    if todo:
        with ThreadPoolExecutor(report.threads, thread_name_prefix="turbovid-compile") as pool:
            with AsyncCompileMode(pool, ignore_errors=True):  # on exit: waits for every compile
                for fn, entry, _ in todo:
                    try:
                        fn.preload(entry.spec)
                    except Exception as exc:  # noqa: BLE001 - e.g. the signature changed: compiled at launch
                        _failed(report, entry, exc)
            device = driver.active.get_current_device()
            compiled = []
            for fn, entry, key in todo:  # a compile that failed in its thread left no kernel under its key
                kernel = fn.device_caches[device][0].get(key)
                if kernel is None or hasattr(kernel, "future"):
                    kernel = _retry(fn, entry, key, device, report)
                if kernel is not None:
                    compiled.append(kernel)
            report.compiled = len(compiled)
            report.launchers = build_launchers(compiled, pool)
    report.failed = len(todo) - report.compiled
    report.seconds = time.perf_counter() - started
    return report


def build_launchers(kernels: list[Any], pool: Executor) -> int:
    """Build the C launcher of each compiled kernel on `pool`, as its first launch would, so
    that the launch finds it in Triton's file cache; returns how many were built. Nothing is loaded onto
    the GPU. Where a launcher cannot be built (no C compiler or driver library, a stand-in driver) the
    first launch tries again, as without this."""
    from triton.runtime.driver import driver

    make = getattr(driver.active, "launcher_cls", None)
    if make is None:
        return 0

    def one(kernel: Any) -> bool:
        try:
            make(kernel.src, kernel.metadata)
            return True
        except Exception:  # noqa: BLE001 - built (or reported) at the kernel's first launch instead
            log.debug("precompile: no launcher for %s", getattr(kernel, "name", kernel), exc_info=True)
            return False

    return sum(pool.map(one, kernels))


def _retry(fn: Any, entry: KernelSpec, key: str, device: int, report: PrecompileReport) -> Any:
    """A compile that failed on a pool thread (whose error the async mode swallows), once more on this thread:
    the kernel when it compiles now, else None with its own error in the report."""
    if any(entry.kernel in e for e in report.errors):  # its preload raised already (reported)
        return None
    try:
        fn.preload(entry.spec)
    except Exception as exc:  # noqa: BLE001 - compiled at launch instead
        _failed(report, entry, exc)
        return None
    kernel = fn.device_caches[device][0].get(key)
    if kernel is None or hasattr(kernel, "future"):
        _failed(report, entry, RuntimeError("the compile left no kernel under its recorded key"))
        return None
    return kernel


def _failed(report: PrecompileReport, entry: KernelSpec, exc: BaseException) -> None:
    if len(report.errors) < 5:
        report.errors.append(f"{entry.kernel}: {type(exc).__name__}: {str(exc).strip()[:200]}")


def safe_name(text: str) -> str:
    """`text` as a file-name part: anything but letters, digits, ".", "_" and "-" as "_" (catalog ids are
    already safe: "wan2.1-t2v-14b"; device tags are not: "+cu130")."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def same_transformer(model: str) -> list[str]:
    """The other catalog models whose DiT has `model`'s dimensions (the A14B experts are the 14B's blocks):
    their kernels are, at the same sizes, mostly the ones `model` launches."""
    from contract.catalog import MODELS
    from models.config import WanConfig

    def dims(model_id: str) -> tuple[int, ...] | None:
        try:
            cfg = WanConfig.from_name(MODELS[model_id].architecture)
        except (KeyError, ValueError):
            return None
        return cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.num_layers

    mine = dims(model)
    return [m for m in MODELS if m != model and mine is not None and dims(m) == mine]


def shipped_list(model: str) -> Path:
    """The list shipped for this GPU model and `model`; where there is none, the one shipped for a model
    with the same DiT (`same_transformer`), whose entries `model` mostly launches too (what it does not
    launch is compiled for nothing; what is missing compiles at launch and is recorded for the next start)."""
    from worker.warmup import gpu_tag

    def path(m: str) -> Path:
        return SHIPPED / f"{gpu_tag()}.{safe_name(m)}.kernels.json"

    return next((path(m) for m in [model, *same_transformer(model)] if path(m).is_file()), path(model))


def lists_for(cache_dir: Path, model: str) -> tuple[Path, Path]:
    """(the list shipped for `model` on this GPU model (`shipped_list`), this host's own list for `model` under
    `cache_dir`). Lists are kept per model: a 1.3B worker has no use for the 14B's specializations, and
    compiling them would hold up its start (the warm-up waits for the precompile)."""
    from worker.warmup import device_tag

    return shipped_list(model), Path(cache_dir) / "kernels" / safe_name(model) / f"{device_tag()}.json"


def legacy_list(cache_dir: Path) -> Path:
    """Where hosts kept their list before lists were per model (session 23): read once when the model's own
    list does not exist yet, so an upgraded host's next start still finds what it compiled before."""
    from worker.warmup import device_tag

    return Path(cache_dir) / "kernels" / f"{device_tag()}.json"


class Precompile:
    """`precompile` of the shipped and this host's lists on a background thread, started at once so that it
    overlaps loading the pipeline. With `record`, what the process compiles from then on is added to this
    host's list, which `save` writes (after the warm-up)."""

    def __init__(self, cache_dir: Path, model: str, threads: int | None = None, *, record: bool = True,
                 processes: bool = False) -> None:
        shipped, own = lists_for(cache_dir, model)
        self.host = KernelSpecs(own)
        listed = KernelSpecs(shipped)
        listed.load()
        if own.is_file():
            self.host.load()
        elif legacy_list(cache_dir).is_file():
            earlier = KernelSpecs(legacy_list(cache_dir))
            earlier.load()
            self.host.merge(earlier)  # saved under the model's own path from now on
        listed.merge(self.host)
        self.report: PrecompileReport | None = None
        self._compiles_before = 0
        self._device = _current_cuda_device()  # the compiling thread looks up (and fills) this device's caches
        self._recording: ExitStack | None = ExitStack() if record else None
        if self._recording is not None:  # on until `save`: the warm-up's compiles are what to record
            self._recording.enter_context(self.host.recording())
        self._processes = processes
        self._thread = threading.Thread(target=self._run, args=(list(listed.entries.values()), threads),
                                        name="turbovid-precompile", daemon=True)
        self._thread.start()

    def _run(self, entries: list[KernelSpec], threads: int | None) -> None:
        try:
            if self._device is not None:  # a new thread starts on device 0; the worker may run on another
                import torch

                torch.cuda.set_device(self._device)
            self.report = precompile(entries, threads, processes=self._processes)
        except Exception as exc:  # noqa: BLE001 - never fatal: the kernels compile at launch instead
            log.warning("precompiling the recorded kernels failed (%s): they compile at their first launch", exc)
            self.report = PrecompileReport(listed=len(entries), failed=len(entries), errors=[str(exc)])

    def wait(self) -> PrecompileReport:
        """Wait for the compiles; returns (and logs) what they did."""
        self._thread.join()
        assert self.report is not None
        self._compiles_before = self.host.compiles  # the precompile's own, seen by the recorder
        if self.report.listed:
            log.info("precompile: %s", self.report.describe())
            for err in self.report.errors:
                log.warning("precompile: %s", err)
        return self.report

    def save(self) -> tuple[int, int]:
        """Stop recording and write this host's list (stale entries dropped). Returns (kernels compiled at
        launch since `wait`, i.e. missing from the lists; entries written)."""
        if self._recording is None:
            return 0, 0
        self._recording.close()
        self._recording = None
        self.host.drop_stale()
        self.host.keep_chosen()
        return self.host.compiles - self._compiles_before, self.host.save()


def _current_cuda_device() -> int | None:
    try:
        import torch

        return torch.cuda.current_device() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no usable CUDA: Triton's driver answers for itself
        return None

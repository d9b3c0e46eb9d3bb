"""Warm start: the worker's first real job runs as fast as its second.

A fresh process pays three one-off costs on its first generation at a given size: Triton compiles each
kernel variant, Triton's autotuner times every config of every tuned kernel at that size's shapes (the
W8A8 GEMMs, SageSLA, the fused norms: over a minute at 1.3B 480p on an H200 when nothing is cached),
and CUDA/cuDNN/cuBLAS set up their handles and plans. `warm_up` pays them before the worker
advertises itself ready:

1. `use_kernel_cache(cache_dir)`: Triton's compiled kernels go to `<cache_dir>/triton` (instead of
   `~/.triton/cache`), and the autotuner's choices recorded there by an earlier process are loaded back
   (`AutotuneChoices`), so a restarted worker neither compiles nor re-times what it ran before. On a
   fresh host, choices shipped for its GPU model (`worker/autotune/<GPU>-cc<N>.json`, measured by
   `turbovid bench` there) are loaded first, so only the chosen configs compile (no timing of the rest).
2. On a GPU, one whole generation at each served size: the catalog's default size and frame count for each kind
   the pipeline serves (T2V, I2V), plus `worker.warmup_sizes`, with the model's default number of
   denoise steps (rCM: every step; the flow solver: two steps, every step has the same shapes), so every
   DiT, text-encoder and VAE-decode chunk shape a default job meets has been run once. On a CPU
   (dev stack, tests) nothing is compiled or tuned: one small generation (64×64, 5 frames, 1 step).
3. The autotuner's choices are written back for the next process.

Compiling was most of a fresh start (35 of 45 s at 1.3B 480p on an H200 host, one kernel after the other). `start_kernels`, called before the pipeline loads, also starts `worker.precompile.Precompile`:
the kernel specializations recorded by an earlier start of this model on this host (or shipped for this GPU
model and this model, `worker/autotune/<GPU>.<model>.kernels.json`) compile on a thread pool while the weights load, and the warm-up's
launches find them compiled. The warm-up records what it compiles for the next start.

Triton's own `autotune(cache_results=True)` cannot be used for this: it skips configs that carry a
`pre_hook` (the TMA W8A8 kernel's set the descriptors' block shapes), and its switch is read when the
kernel module is imported. `AutotuneChoices` records the chosen config per tuning key for every
autotuned kernel of `kernels/`, keyed by GPU, Triton version and the kernel's source hash, and on load
hands the autotuner back its own config object (pre_hook included).
"""

from __future__ import annotations

import gc
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from contract.jobs import GenerationParams
from contract.settings import WorkerSettings, parse_warmup_size
from models.pipeline_types import Progress
from worker.encode import DEFAULT_THREAD_TYPE, X264, Mp4Stream, encode_jpeg, pick_codec
from worker.precompile import (
    Precompile,
    PrecompileReport,
    find_in_modules,
    read_json,
    source_hash,
    write_json,
)
from worker.task import Pipeline

log = logging.getLogger("turbovid.worker")

KERNEL_PACKAGE = "kernels"
SHIPPED_CHOICES = Path(__file__).parent / "autotune"  # <gpu_tag>.json: choices measured on that GPU model
FLOW_WARMUP_STEPS = 2  # the flow solver's steps all have the same shapes; two cover CFG's both branches
_SCALARS = (int, float, str, bool, type(None))


@dataclass(frozen=True)
class WarmupShape:
    kind: Literal["t2v", "i2v"]
    width: int
    height: int
    num_frames: int

    def __str__(self) -> str:
        return f"{self.kind} {self.width}x{self.height}x{self.num_frames}"


@dataclass
class WarmupReport:
    shapes: list[tuple[WarmupShape, float]] = field(default_factory=list)  # (shape, seconds)
    choices_loaded: int = 0  # autotuner choices read back from the cache dir
    choices_saved: int = 0
    kernel_cache: Path | None = None  # Triton's compiled-kernel folder, when Triton is present
    seconds: float = 0.0
    codec: str = X264  # the MP4 encoder this host opens (`worker.encode.pick_codec`), chosen once here
    precompile: PrecompileReport | None = None  # the recorded kernels compiled before the warm-up
    compiled_at_launch: int = 0  # kernels the warm-up still compiled when it launched them (not in the lists)
    frozen_objects: int = 0  # objects kept out of later garbage collections (`settle_heap`)


@dataclass
class KernelStart:
    """The kernel caches of a GPU worker, set up before its pipeline loads (`start_kernels`)."""

    choices: AutotuneChoices
    kernel_cache: Path | None
    choices_loaded: int
    precompile: Precompile | None


def served_shapes(pipeline: Pipeline, extra_sizes: list[str]) -> list[WarmupShape]:
    """The catalog's default size and frame count for each kind the pipeline serves, then each of
    `extra_sizes` ("WxH" or "WxHxF") for each kind; no shape twice."""
    from contract.catalog import MODELS

    card = pipeline.card
    defaults = {card.kind: card}
    for other in card.also_serves:
        defaults.setdefault(MODELS[other].kind, MODELS[other])
    shapes: list[WarmupShape] = []
    for kind in card.kinds:
        c = defaults[kind]
        shapes.append(WarmupShape(kind, *c.default_size, c.default_frames))
    for text in extra_sizes:
        width, height, frames = parse_warmup_size(text)
        for kind in card.kinds:
            shapes.append(WarmupShape(kind, width, height, frames or defaults[kind].default_frames))
    return list(dict.fromkeys(shapes))


def start_kernels(settings: WorkerSettings, *, record: bool = True) -> KernelStart | None:
    """Point Triton at the kernel caches of `settings.cache_dir` (`use_kernel_cache`) and, unless
    `settings.precompile_kernels` is off, start compiling the recorded kernels in the background (recording
    what this process compiles from now on when `record`). None where Triton or CUDA is missing. Call it
    before loading the pipeline: the compiles overlap the load."""
    report = WarmupReport()
    choices = use_kernel_cache(settings.cache_dir, report)
    if choices is None:
        return None
    pre = None
    if settings.precompile_kernels:
        pre = Precompile(settings.cache_dir, settings.model, record=record,
                         processes=settings.precompile_in_processes)
    return KernelStart(choices, report.kernel_cache, report.choices_loaded, pre)


def warm_up(pipeline: Pipeline, settings: WorkerSettings, kernels: KernelStart | None = None) -> WarmupReport:
    """Generate once at every served shape (see the module docstring) with the kernel caches of
    `settings.cache_dir` (`kernels`: as `start_kernels` set them up earlier; else set up here); returns what
    was done and how long each shape took."""
    started = time.perf_counter()
    report = WarmupReport()
    on_gpu = str(getattr(pipeline, "device", "cpu")).startswith("cuda")
    if on_gpu and kernels is None:
        kernels = start_kernels(settings)
    choices = kernels.choices if kernels is not None else None
    if kernels is not None:
        report.kernel_cache, report.choices_loaded = kernels.kernel_cache, kernels.choices_loaded
        if kernels.precompile is not None:
            report.precompile = kernels.precompile.wait()
    shapes = served_shapes(pipeline, settings.warmup_sizes) if on_gpu else [small_shape(pipeline)]
    report.codec, reason = pick_codec()
    threads = f"; {settings.encoder_threads} {settings.encoder_thread_type} threads" if report.codec == X264 else ""
    log.info("video encoder: %s (%s%s)", report.codec, reason, threads)
    try:
        for i, shape in enumerate(shapes):
            t0 = time.perf_counter()
            steps = 1 if not on_gpu else FLOW_WARMUP_STEPS if pipeline.solver == "flow" else None
            # the first shape also runs a job's side paths: previews (the latent → RGB fit on first use),
            # frames streamed into the MP4 encoder, the thumbnail
            sink = _JobPaths(shape, report.codec, settings.encoder_threads, settings.encoder_thread_type) if i == 0 else None
            try:
                pipeline.generate(_params(pipeline, shape, steps), image=_grey(shape) if shape.kind == "i2v" else None,
                                  on_step=sink)
            finally:
                if sink is not None:
                    sink.close()
            report.shapes.append((shape, time.perf_counter() - t0))
            log.info("warm-up %s: %.2f s", shape, report.shapes[-1][1])
    finally:
        if choices is not None:
            report.choices_saved = choices.save()
        if kernels is not None and kernels.precompile is not None:
            report.compiled_at_launch, listed = kernels.precompile.save()
            log.info("warm-up compiled %d kernels at launch (not precompiled); %d kernel specializations "
                     "recorded for the next start", report.compiled_at_launch, listed)
    report.frozen_objects = settle_heap()
    report.seconds = time.perf_counter() - started
    log.info("warm-up done in %.1f s (%d shapes; autotune choices: %d loaded, %d saved)", report.seconds,
             len(report.shapes), report.choices_loaded, report.choices_saved)
    return report


def settle_heap() -> int:
    """A full garbage collection once the warm-up is done, and every object that survives it frozen (`gc.freeze`:
    kept out of later collections). Loading and warming up leave hundreds of thousands of long-lived objects
    (modules, compiled kernels, autotune records); without this, the first full collection, which walks them all,
    can fall inside the first real job. Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class _JobPaths(Progress):
    """What a job does besides generating, done once so that the first real job does not pay for it: the
    preview path (the VAE's latent → RGB fit, a JPEG), the decoded frames streamed into the MP4 encoder
    and its thumbnail (encoder libraries, threads)."""

    wants_preview = True

    def __init__(self, shape: WarmupShape, codec: str, threads: int, thread_type: str = DEFAULT_THREAD_TYPE) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="turbovid-warmup-"))
        self.stream = Mp4Stream(self.folder / "warmup.mp4", width=shape.width, height=shape.height, fps=16,
                                codec=codec, threads=threads, thread_type=thread_type,
                                thumbnail_index=shape.num_frames // 2)

    def on_preview(self, step: int, total: int, image: np.ndarray) -> None:
        encode_jpeg(image)

    def on_frames(self, start: int, frames: np.ndarray) -> None:
        self.stream.write(frames)

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception:  # noqa: BLE001 - a warm-up detail; the real job reports its own encoder errors
            log.exception("warm-up: the MP4 encoder failed")
        shutil.rmtree(self.folder, ignore_errors=True)


def small_shape(pipeline: Pipeline) -> WarmupShape:
    """Off the GPU nothing is compiled or tuned: one small generation (64×64, 5 frames) only runs the
    lazy initialisation of every stage."""
    return WarmupShape(pipeline.card.kinds[0], 64, 64, 5)


def _params(pipeline: Pipeline, shape: WarmupShape, steps: int | None) -> GenerationParams:
    """steps None: the model's default."""
    params = GenerationParams(kind=shape.kind, width=shape.width, height=shape.height, num_frames=shape.num_frames,
                              prompt="warm-up", seed=0, num_steps=steps)
    return params.resolve(pipeline.card, pipeline.capabilities())


def _grey(shape: WarmupShape) -> np.ndarray:
    return np.full((shape.height, shape.width, 3), 128, np.uint8)


# ------------------------------------------------------------------------------------------------
# kernel caches
# ------------------------------------------------------------------------------------------------


def use_kernel_cache(cache_dir: Path, report: WarmupReport | None = None) -> AutotuneChoices | None:
    """Point Triton's compiled-kernel cache at `<cache_dir>/triton` and load the autotuner choices saved
    under `<cache_dir>/autotune`; None (nothing to do) where Triton or CUDA is missing."""
    try:
        import torch
        import triton
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    kernel_dir = Path(cache_dir) / "triton"
    kernel_dir.mkdir(parents=True, exist_ok=True)
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4; older ones keep ~/.triton/cache
    if knobs is not None:
        knobs.cache.dir = str(kernel_dir)
        if report is not None:
            report.kernel_cache = kernel_dir
    else:
        log.warning("triton %s has no knobs: compiled kernels stay in Triton's default cache", triton.__version__)
    _import_kernels()
    shipped = SHIPPED_CHOICES / f"{gpu_tag()}.json"  # measured on this GPU model: only their configs compile
    loaded = AutotuneChoices(shipped).load() if shipped.is_file() else 0
    choices = AutotuneChoices(Path(cache_dir) / "autotune" / f"{device_tag()}.json")
    loaded += choices.load()  # this host's own, over the shipped ones
    if report is not None:
        report.choices_loaded = loaded
    return choices


def _import_kernels() -> None:
    """Import every kernel module, so each autotuner exists before its saved choices are loaded."""
    import importlib
    import pkgutil

    package = importlib.import_module(KERNEL_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("bench"):
            try:
                importlib.import_module(f"{KERNEL_PACKAGE}.{info.name}")
            except Exception as exc:  # noqa: BLE001 - a kernel this Triton cannot build is not used either
                log.warning("kernel module %s.%s not imported (%s); its autotune choices are kept as saved",
                            KERNEL_PACKAGE, info.name, exc)


def gpu_tag() -> str:
    """GPU name and compute capability, e.g. "NVIDIA_H200-cc90"."""
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    cc = "".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else "0"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{name}-cc{cc}")


def device_tag() -> str:
    """GPU, Triton and torch versions: what this host's autotune choices were timed on."""
    import torch
    import triton

    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{gpu_tag()}-triton{triton.__version__}-torch{torch.__version__}")


def find_autotuners(package: str = KERNEL_PACKAGE) -> dict[str, Any]:
    """Every Triton Autotuner held by a module of `package` (directly or under `triton.heuristics`),
    by "module.attribute"."""
    from triton.runtime.autotuner import Autotuner

    return {f"{mod_name}.{attr}": tuner for mod_name, attr, tuner in find_in_modules(Autotuner, package)}


def _source_hash(tuner: Any) -> str:
    """A hash of the tuned kernel's source: saved choices of an edited kernel are not reused."""
    fn = tuner.fn
    while hasattr(fn, "fn") and not hasattr(fn, "src"):
        fn = fn.fn
    return source_hash(fn)  # source + the jit functions it calls + its start line (JITFunction.cache_key)


def _config_dict(config: Any) -> dict[str, Any]:
    out = {"kwargs": dict(config.kwargs)}
    for name in ("num_warps", "num_stages", "num_ctas", "maxnreg"):
        if getattr(config, name, None) is not None:
            out[name] = getattr(config, name)
    return out


class AutotuneChoices:
    """The chosen config per tuning key of every autotuned kernel, saved to and loaded from one JSON file.

    File: {"module.attr": {"source": hash, "choices": [[key, config], ...]}}. Loading puts each choice
    into the autotuner's in-memory cache, as the autotuner itself would after timing; an entry whose
    kernel source changed, or whose config the autotuner no longer offers, is skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._other: dict[str, Any] = {}  # entries of kernels not imported here: kept on save

    def load(self) -> int:
        data = read_json(self.path, "autotune choices")
        if not isinstance(data, dict):
            return 0
        tuners = find_autotuners()
        loaded = 0
        for name, entry in data.items():
            tuner = tuners.get(name)
            if tuner is None:
                self._other[name] = entry
                continue
            if entry.get("source") != _source_hash(tuner):
                # measured on another version of the kernel's source (or another Triton): not reused, so
                # this kernel is tuned again at its first launch of each shape (slower first job / warm-up)
                log.warning("autotune choices for %s in %s were saved for another version of its source or of "
                            "Triton: ignored, it is tuned again", name, self.path)
                continue
            for key, cfg in entry.get("choices", []):
                config = self._match(tuner, cfg)
                if config is not None:
                    tuner.cache[tuple(key)] = config
                    loaded += 1
        return loaded

    @staticmethod
    def _match(tuner: Any, cfg: dict[str, Any]) -> Any:
        for config in tuner.configs:
            if _config_dict(config) == cfg:
                return config
        if any(getattr(c, "pre_hook", None) for c in tuner.configs):
            return None  # a pruned-in config we cannot rebuild with its hook
        import triton

        return triton.Config(cfg["kwargs"], **{k: v for k, v in cfg.items() if k != "kwargs"})

    def save(self) -> int:
        """Write every autotuner's current choices (merged with entries for kernels not imported here);
        returns the number of choices written. Written atomically; errors are logged, not raised."""
        data = dict(self._other)
        saved = 0
        for name, tuner in sorted(find_autotuners().items()):
            choices = [[list(key), _config_dict(config)] for key, config in tuner.cache.items()
                       if all(isinstance(k, _SCALARS) for k in key)]
            if choices:
                data[name] = {"source": _source_hash(tuner), "choices": choices}
                saved += len(choices)
        return saved if write_json(self.path, data, "autotune choices") else 0

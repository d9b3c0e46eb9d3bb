"""Warm start (worker/warmup.py): which shapes are warmed up, and autotune choices that survive a process."""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import types
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import triton
import triton.language as tl

from contract.catalog import MODELS
from contract.jobs import Capabilities
from contract.settings import ConfigError, WorkerSettings, load_settings, parse_warmup_size
from worker import warmup
from worker.warmup import AutotuneChoices, WarmupShape, served_shapes


@triton.jit
def _kernel(x_ptr, N, BLOCK: tl.constexpr):
    pass


@triton.jit
def _kernel_edited(x_ptr, N, BLOCK: tl.constexpr):
    tl.program_id(0)


def _hook(nargs: dict) -> None:
    pass


def _tuner(fn: Any = _kernel) -> Any:
    configs = [triton.Config({"BLOCK": 32}, num_warps=4, num_stages=2),
               triton.Config({"BLOCK": 64}, num_warps=8, num_stages=3, pre_hook=_hook)]
    return triton.autotune(configs, key=["N"])(fn)


@pytest.fixture
def kernels_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A fake `kernels.fake` module holding one autotuned kernel, as find_autotuners sees it; the real
    kernel modules that earlier tests imported (with their autotune caches) are hidden meanwhile."""
    for name in [n for n in sys.modules if n == "kernels" or n.startswith("kernels.")]:
        monkeypatch.delitem(sys.modules, name)
    module = types.ModuleType("kernels.fake_for_test")
    module.tuned = _tuner()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kernels.fake_for_test", module)
    return module


def test_choices_survive_a_new_process_with_the_autotuners_own_config_objects(
        tmp_path: Path, kernels_module: types.ModuleType) -> None:
    path = tmp_path / "autotune" / "gpu.json"
    tuned = kernels_module.tuned
    tuned.cache[(4096, "torch.bfloat16")] = tuned.configs[1]  # what timing would have chosen
    tuned.cache[(128, "torch.bfloat16")] = tuned.configs[0]
    assert AutotuneChoices(path).save() == 2

    kernels_module.tuned = fresh = _tuner()  # "the next process": a new autotuner, empty cache
    assert fresh.cache == {}
    assert AutotuneChoices(path).load() == 2
    chosen = fresh.cache[(4096, "torch.bfloat16")]
    assert chosen is fresh.configs[1]  # its own object: the TMA descriptors' pre_hook still runs
    assert chosen.pre_hook is _hook
    assert fresh.cache[(128, "torch.bfloat16")] is fresh.configs[0]


def test_choices_of_an_edited_kernel_are_not_reused(tmp_path: Path, kernels_module: types.ModuleType,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "choices.json"
    kernels_module.tuned.cache[(7,)] = kernels_module.tuned.configs[0]
    AutotuneChoices(path).save()
    kernels_module.tuned = edited = _tuner(_kernel_edited)
    with caplog.at_level("WARNING", logger="turbovid.worker"):
        assert AutotuneChoices(path).load() == 0
    assert edited.cache == {}
    # said at start: stale shipped choices mean tuning at the first launches (a slow fresh start)
    assert any("another version of its source" in r.getMessage() and ".tuned" in r.getMessage()
               for r in caplog.records)


def test_choices_of_kernels_not_imported_are_kept_and_bad_files_ignored(
        tmp_path: Path, kernels_module: types.ModuleType) -> None:
    path = tmp_path / "choices.json"
    other = {"kernels.elsewhere._k": {"source": "abc", "choices": [[[1], {"kwargs": {"B": 1}}]]}}
    path.write_text(json.dumps(other))
    choices = AutotuneChoices(path)
    assert choices.load() == 0
    kernels_module.tuned.cache[(3,)] = kernels_module.tuned.configs[0]
    choices.save()
    data = json.loads(path.read_text())
    assert data["kernels.elsewhere._k"] == other["kernels.elsewhere._k"]
    assert data["kernels.fake_for_test.tuned"]["choices"] == [[[3], {"kwargs": {"BLOCK": 32}, "num_warps": 4,
                                                                   "num_stages": 2, "num_ctas": 1}]]
    path.write_text("{not json")
    assert AutotuneChoices(path).load() == 0  # a corrupt file is skipped (logged), the worker still starts


def test_the_real_kernels_autotuners_are_found() -> None:
    warmup._import_kernels()
    names = set(warmup.find_autotuners())
    assert {"kernels.w8a8._w8a8_tma_tuned", "kernels.sagesla._sagesla_fwd", "kernels.adaln._ln_modulate"} <= names


class _Pipe:
    """Records what warm_up generates."""

    def __init__(self, model: str, device: str = "cuda") -> None:
        self.card = MODELS[model]
        self.solver = self.card.solver
        self.device = device
        self.calls: list[tuple[Any, Any]] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(solver=self.solver)

    def generate(self, params: Any, *, image: Any = None, on_step: Any = None) -> None:
        self.calls.append((params, image))


def test_served_shapes_are_the_catalog_defaults_per_kind_plus_extra_sizes() -> None:
    pipe = _Pipe("wan-tiny")
    assert served_shapes(pipe, []) == [WarmupShape("t2v", 64, 64, 9), WarmupShape("i2v", 64, 64, 9)]
    assert served_shapes(pipe, ["128x128", "64x64x9", "96x64x17"]) == [
        WarmupShape("t2v", 64, 64, 9), WarmupShape("i2v", 64, 64, 9), WarmupShape("t2v", 128, 128, 9),
        WarmupShape("i2v", 128, 128, 9), WarmupShape("t2v", 96, 64, 17), WarmupShape("i2v", 96, 64, 17)]
    assert served_shapes(_Pipe("wan2.1-t2v-1.3b"), []) == [WarmupShape("t2v", 832, 480, 81)]


def test_warm_up_on_a_gpu_runs_every_served_shape_with_all_default_steps(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warmup, "use_kernel_cache", lambda cache_dir, report=None: None)  # no CUDA here
    pipe = _Pipe("wan-tiny")
    report = warmup.warm_up(pipe, WorkerSettings(cache_dir=tmp_path, warmup_sizes=["128x128"]))
    got = [(p.kind, p.width, p.height, p.num_frames, p.num_steps) for p, _ in pipe.calls]
    assert got == [("t2v", 64, 64, 9, 4), ("i2v", 64, 64, 9, 4), ("t2v", 128, 128, 9, 4), ("i2v", 128, 128, 9, 4)]
    images = [img for p, img in pipe.calls if p.kind == "i2v"]
    assert all(isinstance(img, np.ndarray) and img.shape == (p.height, p.width, 3)
               for (p, img) in pipe.calls if p.kind == "i2v") and len(images) == 2
    assert [s for s, _ in report.shapes] == served_shapes(pipe, ["128x128"])
    assert report.frozen_objects == gc.get_freeze_count() > 0  # the heap settled before the worker reports ready
    gc.unfreeze()


def test_settle_heap_collects_the_garbage_and_freezes_the_rest() -> None:
    class Node:
        pass

    gc.unfreeze()
    cycle = Node()
    cycle.me = cycle  # type: ignore[attr-defined]
    gone = weakref.ref(cycle)
    kept = Node()
    del cycle
    try:
        frozen = warmup.settle_heap()
        assert gone() is None  # garbage (a reference cycle) collected, not frozen
        assert frozen == gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # survivors are out of the collector's lists
    finally:
        gc.unfreeze()


def test_warm_up_off_the_gpu_is_one_small_generation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipe = _Pipe("wan2.1-t2v-1.3b", device="cpu")
    with caplog.at_level("INFO", logger="turbovid.worker"):
        warmup.warm_up(pipe, WorkerSettings(cache_dir=tmp_path, encoder_threads=6))
    assert [(p.width, p.height, p.num_frames, p.num_steps) for p, _ in pipe.calls] == [(64, 64, 5, 1)]
    # the start log says how the jobs' MP4s will be encoded (no NVENC on a CPU host)
    assert any(r.getMessage().startswith("video encoder: libx264 (") and "; 6 frame threads)" in r.getMessage()
               for r in caplog.records)


def test_warmup_sizes_setting_is_checked_against_the_model() -> None:
    assert parse_warmup_size("832x480") == (832, 480, None)
    assert parse_warmup_size(" 832X480x41 ") == (832, 480, 41)
    env = {"TURBOVID_WORKER__MODEL": "wan2.1-t2v-1.3b", "TURBOVID_DEV_MODE": "true"}
    ok = load_settings({**env, "TURBOVID_WORKER__WARMUP_SIZES": '["480x832", "832x480x41"]'})
    assert ok.worker.warmup_sizes == ["480x832", "832x480x41"]
    with pytest.raises(ConfigError, match="1280x720.*not a size of wan2.1-t2v-1.3b"):
        load_settings({**env, "TURBOVID_WORKER__WARMUP_SIZES": '["1280x720"]'})
    with pytest.raises(ConfigError, match="4k\\+1"):
        load_settings({**env, "TURBOVID_WORKER__WARMUP_SIZES": '["832x480x40"]'})
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        load_settings({**env, "TURBOVID_WORKER__WARMUP_SIZES": '["big"]'})


def test_shipped_choices_for_the_gpu_model_load_first_and_the_hosts_own_win(
        tmp_path: Path, kernels_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(warmup, "_import_kernels", lambda: None)
    shipped_dir = tmp_path / "shipped"
    monkeypatch.setattr(warmup, "SHIPPED_CHOICES", shipped_dir)
    tuned = kernels_module.tuned
    tuned.cache[(1,)] = tuned.configs[0]
    tuned.cache[(2,)] = tuned.configs[0]
    AutotuneChoices(shipped_dir / "NVIDIA_H200-cc90.json").save()  # measured elsewhere on an H200
    cache_dir = tmp_path / "cache"
    tuned.cache.clear()
    tuned.cache[(2,)] = tuned.configs[1]  # this host timed key 2 differently
    AutotuneChoices(cache_dir / "autotune" / f"{warmup.device_tag()}.json").save()

    kernels_module.tuned = fresh = _tuner()
    old_dir = triton.knobs.cache.dir
    try:
        report = warmup.WarmupReport()
        choices = warmup.use_kernel_cache(cache_dir, report)
        assert triton.knobs.cache.dir == str(cache_dir / "triton")  # compiled kernels live in the cache dir
    finally:
        triton.knobs.cache.dir = old_dir
    assert choices is not None and report.choices_loaded == 3
    assert fresh.cache[(1,)] is fresh.configs[0]  # from the shipped file
    assert fresh.cache[(2,)] is fresh.configs[1]  # the host's own over the shipped one


def test_warm_up_runs_a_jobs_side_paths_so_the_first_job_does_not(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The first shape's warm-up generation also fits the preview map, streams its frames into a real MP4
    encoder (with a thumbnail) and picks the codec, so none of that is left for the first job."""
    from models.pipeline import load_pipeline
    from models.tiny import ensure_tiny_checkpoints
    from worker.encode import Mp4Stream

    written: list[int] = []
    closed: list[int] = []

    class Recording(Mp4Stream):
        def write(self, frames: np.ndarray) -> None:
            written.append(len(frames))
            super().write(frames)

        def close(self) -> int:
            size = super().close()
            closed.append(size)
            assert self.thumbnail is not None  # the thumbnail path ran too
            return size

    monkeypatch.setattr(warmup, "Mp4Stream", Recording)
    pipe = load_pipeline("wan-tiny", [ensure_tiny_checkpoints(tmp_path / "w")])
    assert pipe.latent_preview is None
    report = warmup.warm_up(pipe, WorkerSettings(cache_dir=tmp_path / "cache"))
    assert pipe.latent_preview is not None  # fitted during the warm-up, not by the first job's preview
    assert sum(written) == 5 and len(closed) == 1 and closed[0] > 0  # every frame of the 64×64×5 run encoded
    assert report.codec == "libx264"  # no NVENC here
    assert not list(Path(tempfile.gettempdir()).glob("turbovid-warmup-*"))  # the temporary MP4 is gone


def test_a_gpu_warm_up_records_its_compiles_and_the_next_start_precompiles_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernels_module: types.ModuleType) -> None:
    """start_kernels → warm_up records each kernel Triton compiles during the warm-up into this host's list;
    the next start hands that list to the precompile (before the warm-up's first launch)."""
    from triton import knobs
    from triton.runtime.jit import JITFunction

    from worker import precompile as pc

    def _src_kernel(x_ptr, BLOCK: tl.constexpr):  # noqa: ANN001, ANN202 - a kernel body, never compiled here
        pass

    _src_kernel.__module__, _src_kernel.__qualname__ = "kernels.fake_for_test", "_src_kernel"
    jit = JITFunction(_src_kernel)  # a real JITFunction even under the interpreter
    kernels_module.kernel = jit  # type: ignore[attr-defined]
    spec = json.dumps({"name": "kernels.fake_for_test._src_kernel", "key": "k", "signature": {"x_ptr": "*fp32"}})

    class CompilingPipe(_Pipe):
        def generate(self, params: Any, *, image: Any = None, on_step: Any = None) -> None:
            super().generate(params, image=image, on_step=on_step)
            hook = knobs.runtime.jit_post_compile_hook  # what Triton calls after compiling a specialization
            assert hook is not None
            hook(key="k", repr="r", fn=types.SimpleNamespace(jit_function=jit, name="_src_kernel"),
                 compile={"key": "k", "specialization_data": spec}, is_manual_warmup=False, already_compiled=False)

    given: list[list[Any]] = []

    def fake_precompile(entries: Any, threads: Any = None, package: str = "kernels", **_: Any) -> pc.PrecompileReport:
        given.append(list(entries))  # (compiling needs a GPU or compile_check's driver: test_precompile.py)
        return pc.PrecompileReport(listed=len(given[-1]), compiled=len(given[-1]), threads=1)

    monkeypatch.setattr(pc, "precompile", fake_precompile)
    monkeypatch.setattr(pc, "SHIPPED", tmp_path / "shipped")  # no shipped list for this "GPU"
    monkeypatch.setattr(warmup, "use_kernel_cache",
                        lambda cache_dir, report=None: AutotuneChoices(Path(cache_dir) / "autotune" / "x.json"))
    settings = WorkerSettings(cache_dir=tmp_path / "cache")
    report = warmup.warm_up(CompilingPipe("wan2.1-t2v-1.3b"), settings, warmup.start_kernels(settings))
    assert given == [[]]  # first start: nothing recorded yet
    assert report.precompile is not None and report.compiled_at_launch == 1
    assert knobs.runtime.jit_post_compile_hook is None  # recording stops with the warm-up
    listing = next((tmp_path / "cache" / "kernels" / settings.model).glob("*.json"))  # one list per model
    assert [e["kernel"] for e in json.loads(listing.read_text())["kernels"]] == ["kernels.fake_for_test._src_kernel"]

    report = warmup.warm_up(_Pipe("wan2.1-t2v-1.3b"), settings, warmup.start_kernels(settings))
    assert [[e.kernel for e in g] for g in given] == [[], ["kernels.fake_for_test._src_kernel"]]
    assert report.precompile is not None and report.precompile.compiled == 1 and report.compiled_at_launch == 0
    off = WorkerSettings(cache_dir=tmp_path / "cache", precompile_kernels=False)
    kernels = warmup.start_kernels(off)
    assert kernels is not None and kernels.precompile is None and len(given) == 2


def test_kernel_lists_are_kept_per_model_and_an_older_host_list_is_carried_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernels_module: types.ModuleType) -> None:
    """A worker precompiles the list shipped for its own model and its own host list, never another model's
    (the 14B's specializations would only hold up a 1.3B start); a host list from before lists were per model
    is read once and then saved under the model's own path."""
    from triton.runtime.jit import JITFunction

    from worker import precompile as pc

    def _k(x_ptr, BLOCK: tl.constexpr):  # noqa: ANN001, ANN202 - never compiled here
        pass

    _k.__module__, _k.__qualname__ = "kernels.fake_for_test", "_k"
    jit = JITFunction(_k)
    kernels_module.k = jit  # type: ignore[attr-defined]

    def entry(tag: str) -> Any:
        return pc.KernelSpec("kernels.fake_for_test._k", pc.source_hash(jit),
                             json.dumps({"name": "kernels.fake_for_test._k", "key": tag}))

    given: list[list[str]] = []

    def fake_precompile(entries: Any, threads: Any = None, package: str = "kernels", **_: Any) -> pc.PrecompileReport:
        given.append(sorted(json.loads(e.spec)["key"] for e in entries))
        return pc.PrecompileReport(listed=len(given[-1]), compiled=len(given[-1]), threads=1)

    monkeypatch.setattr(pc, "precompile", fake_precompile)
    monkeypatch.setattr(pc, "SHIPPED", tmp_path / "shipped")
    cache = tmp_path / "cache"
    small, big = pc.lists_for(cache, "wan2.1-t2v-1.3b"), pc.lists_for(cache, "wan2.1-t2v-14b")
    assert small[0].name.endswith(".wan2.1-t2v-1.3b.kernels.json") and small[0] != big[0] and small[1] != big[1]
    for (shipped, _), tag in ((small, "shipped-1.3b"), (big, "shipped-14b")):
        specs = pc.KernelSpecs(shipped)
        specs.add(entry(tag))
        assert specs.save() == 1
    older = pc.KernelSpecs(pc.legacy_list(cache))  # <cache>/kernels/<device_tag>.json, as session 23 wrote it
    older.add(entry("this host, before"))
    older.save()

    pre = pc.Precompile(cache, "wan2.1-t2v-1.3b")
    pre.wait()
    assert given[-1] == ["shipped-1.3b", "this host, before"]
    pre.save()
    saved = json.loads(small[1].read_text())["kernels"]
    assert [e["spec"]["key"] for e in saved] == ["this host, before"]  # now under the model's own path

    pc.Precompile(cache, "wan2.1-t2v-14b", record=False).wait()
    assert given[-1] == ["shipped-14b", "this host, before"]
    small[1].write_text(json.dumps({"triton": __import__("triton").__version__, "kernels": []}))
    pc.Precompile(cache, "wan2.1-t2v-1.3b", record=False).wait()
    assert given[-1] == ["shipped-1.3b"]  # the model's own list exists: the older one is not read again


def test_a_model_without_a_shipped_list_takes_the_one_of_a_model_with_the_same_dit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The A14B experts are the 14B's DiT: with no list shipped for the A14B, its workers precompile the 14B's;
    one shipped for the A14B itself wins; a DiT of other dimensions (the 1.3B) never takes another's."""
    from worker import precompile as pc

    monkeypatch.setattr(pc, "SHIPPED", tmp_path)
    gpu = warmup.gpu_tag()
    big = tmp_path / f"{gpu}.wan2.1-t2v-14b.kernels.json"
    a14b = tmp_path / f"{gpu}.wan2.2-i2v-a14b.kernels.json"
    assert pc.shipped_list("wan2.2-i2v-a14b") == a14b  # nothing shipped: its own (missing) path
    big.write_text("{}")
    assert pc.shipped_list("wan2.2-i2v-a14b") == big
    assert pc.shipped_list("wan2.1-t2v-1.3b") == tmp_path / f"{gpu}.wan2.1-t2v-1.3b.kernels.json"
    assert pc.lists_for(tmp_path / "cache", "wan2.2-i2v-a14b")[1].parent.name == "wan2.2-i2v-a14b"  # own host list
    a14b.write_text("{}")
    assert pc.shipped_list("wan2.2-i2v-a14b") == a14b
    assert pc.same_transformer("not-a-model") == []


def test_only_the_configs_an_autotuner_chose_stay_in_the_kernel_list(
        tmp_path: Path, kernels_module: types.ModuleType) -> None:
    """A tuning warm-up compiles every candidate config; the list keeps the chosen ones (what the next start
    runs), and all entries of a kernel whose autotuner chose nothing here (nothing to judge them by)."""
    from triton.runtime.jit import JITFunction

    from worker.precompile import KernelSpec, KernelSpecs, spec_matches

    def _tuned_kernel(x_ptr, N, BLOCK: tl.constexpr):  # noqa: ANN001, ANN202 - never compiled here
        pass

    def _other_kernel(x_ptr, BLOCK: tl.constexpr):  # noqa: ANN001, ANN202
        pass

    jits = {}
    for f in (_tuned_kernel, _other_kernel):
        f.__module__, f.__qualname__ = "kernels.fake_for_test", f.__name__
        jits[f.__name__] = JITFunction(f)
    configs = [triton.Config({"BLOCK": 32}, num_warps=4, num_stages=2), triton.Config({"BLOCK": 64}, num_warps=8,
                                                                                      num_stages=3)]
    kernels_module.tuned = triton.autotune(configs, key=["N"])(jits["_tuned_kernel"])  # type: ignore[attr-defined]
    kernels_module.other = triton.autotune(configs, key=[])(jits["_other_kernel"])  # type: ignore[attr-defined]
    kernels_module.tuned.cache[(4096,)] = configs[1]  # what timing chose

    def spec(name: str, block: int, warps: int, stages: int, index: int) -> KernelSpec:
        data = {"name": f"kernels.fake_for_test.{name}", "key": f"{block}-{warps}", "constant_keys": [[index]],
                "constant_vals": [block], "options": {"num_warps": warps, "num_stages": stages}}
        return KernelSpec(f"kernels.fake_for_test.{name}", "src", json.dumps(data))

    chosen, candidate = spec("_tuned_kernel", 64, 8, 3, 2), spec("_tuned_kernel", 32, 4, 2, 2)
    same_block_other_warps = spec("_tuned_kernel", 64, 4, 3, 2)
    untuned = [spec("_other_kernel", 32, 4, 2, 1), spec("_other_kernel", 64, 8, 3, 1)]
    assert spec_matches(chosen.spec, jits["_tuned_kernel"], configs[1])
    assert not spec_matches(same_block_other_warps.spec, jits["_tuned_kernel"], configs[1])
    specs = KernelSpecs(tmp_path / "k.json")
    for e in (chosen, candidate, same_block_other_warps, *untuned):
        specs.add(e)
    assert specs.keep_chosen() == 2
    assert list(specs.entries.values()) == [chosen, *untuned]

"""worker/precompile.py: the kernel specializations a process compiles are recorded, and a later process
compiles them on a thread pool into the JIT's caches, so that its launches compile nothing.

The compiling tests run real kernels of `kernels/` through Triton's compiler in a subprocess (the interpreter,
on for the other CPU tests, never compiles): on a CPU host for sm_90 with compile_check's stand-in driver, on a
GPU host for its own GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import triton

from worker.precompile import KernelSpec, KernelSpecs, PrecompileReport, precompile

ROOT = Path(__file__).resolve().parents[3]

# Records two real kernels' specializations (the VAE softmax at three row lengths, the activation quant at
# five widths) while launching them, then forgets every compiled kernel (the JIT's memory and a new file
# cache), loads the list back and precompiles it; finally launches the same kernels again, counting compiles.
_SCRIPT = textwrap.dedent("""
    import json, re, sys, tempfile
    from pathlib import Path
    import torch
    from triton import knobs
    from kernels import compile_check as cc
    from worker.precompile import KernelSpecs, find_jit_functions, precompile


    def main():
        listing, mode = Path(sys.argv[1]), sys.argv[2]
        if not torch.cuda.is_available():  # else Triton's own driver: compiles for this GPU (nothing launched)
            cc.use_target(90)
        cases = ("softmax_rows", "int8_quant")
        out = {}
        knobs.cache.dir = tempfile.mkdtemp()
        before = []  # a hook installed by someone else keeps being called
        knobs.runtime.jit_post_compile_hook = lambda **kw: before.append(kw["fn"].name)
        specs = KernelSpecs(listing)
        with specs.recording():
            for case in cases:
                assert not cc.CASES[case](cc._SMEM).errors
        out["recorded"], out["compiles_seen"], out["hook_before"] = specs.save(), specs.compiles, len(before)
        out["hook_restored"] = knobs.runtime.jit_post_compile_hook is not None and specs.compiles == len(before)
        if mode == "edit":  # one entry's kernel edited since, one whose signature no longer fits
            data = json.loads(listing.read_text())
            data["kernels"][0]["source"] = "0" * 16
            data["kernels"][1]["spec"]["signature"] = {"nonexistent_arg": "*fp32"}
            listing.write_text(json.dumps(data))
        if mode == "twin":  # the same compile listed under a second launch key (an autotuned launch's key holds
            # num_ctas, a direct launch's does not: the worker's first start records both for one GEMM)
            data = json.loads(listing.read_text())
            twin = json.loads(json.dumps(data["kernels"][0]))
            key = twin["spec"]["key"]
            twin["spec"]["key"] = (key.replace("'num_ctas': 1, ", "") if "'num_ctas'" in key
                                   else re.sub(r"('num_warps': \\d+, )", r"\\1'num_ctas': 1, ", key, count=1))
            assert twin["spec"]["key"] != data["kernels"][0]["spec"]["key"], key
            data["kernels"].append(twin)
            listing.write_text(json.dumps(data))
        for fn in find_jit_functions().values():
            fn.device_caches.clear()
        fresh = Path(tempfile.mkdtemp())
        knobs.cache.dir = str(fresh)
        loaded = KernelSpecs(listing)
        out["loaded"] = loaded.load()
        if mode == "processes":  # the children compile; this process may only load their results
            import triton.compiler.code_generator as code_generator

            def no_codegen(*args, **kwargs):
                raise RuntimeError("the parent ran Triton's code generator")

            code_generator.ast_to_ttir = no_codegen
        report = precompile(loaded.entries.values(), threads=2, processes=mode == "processes")
        out["report"] = {"listed": report.listed, "compiled": report.compiled, "stale": report.stale,
                         "failed": report.failed, "threads": report.threads, "errors": report.errors,
                         "in_processes": report.in_processes}
        out["launchers"], out["cuda"] = report.launchers, torch.cuda.is_available()
        out["cache_files"] = sum(1 for p in fresh.rglob("*.cubin"))
        compiled_at_launch = []
        knobs.runtime.jit_cache_hook = lambda **kw: compiled_at_launch.append(kw["fn"].name)
        for case in cases:
            assert not cc.CASES[case](cc._SMEM).errors
        out["compiled_at_launch"] = compiled_at_launch
        print("RESULT " + json.dumps(out))


    if __name__ == "__main__":  # spawned compile processes import this file too
        main()
""")


def _run(tmp_path: Path, mode: str) -> dict:
    script = tmp_path / "precompile_script.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "kernels.json"), mode], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_recorded_kernels_precompile_so_that_launches_compile_nothing(tmp_path: Path) -> None:
    out = _run(tmp_path, "plain")
    # 3 softmax row lengths + 5 quant widths, each its own specialization
    assert out["recorded"] == out["loaded"] == 8, out
    assert out["compiles_seen"] == 8 and out["hook_restored"] and out["hook_before"] == 8, out
    assert out["report"] == {"listed": 8, "compiled": 8, "stale": 0, "failed": 0, "threads": 2, "errors": [],
                             "in_processes": 0}, out
    assert out["cache_files"] == 8, out  # Triton's file cache holds them too (the next process loads them)
    # each kernel's C launcher is built too on a GPU host (the stand-in driver of a CPU host has none)
    assert out["launchers"] == (8 if out["cuda"] else 0), out
    assert out["compiled_at_launch"] == [], out  # without the precompile: 8, one per launch


def test_compiles_in_child_processes_leave_the_parent_only_loading_them(tmp_path: Path) -> None:
    # Spawned processes (their own GIL, no CUDA context) run the code generator for this target into the
    # file cache; this process, whose code generator raises if called, loads all 8 from there, and the
    # launches after it compile nothing either.
    out = _run(tmp_path, "processes")
    assert out["report"] == {"listed": 8, "compiled": 8, "stale": 0, "failed": 0, "threads": 2, "errors": [],
                             "in_processes": 8}, out
    assert out["cache_files"] == 8 and out["compiled_at_launch"] == [], out


def test_edited_or_mismatched_entries_are_skipped_and_the_rest_still_compile(tmp_path: Path) -> None:
    out = _run(tmp_path, "edit")
    report = out["report"]
    assert report["listed"] == 8 and report["stale"] == 1 and report["failed"] == 1 and report["compiled"] == 6, out
    assert len(report["errors"]) == 1 and "kernels." in report["errors"][0], out
    # the two left out compile at their launch, as without a list; nothing else does
    assert len(out["compiled_at_launch"]) == 2, out


def test_one_compile_listed_under_two_launch_keys_lands_under_both(tmp_path: Path) -> None:
    # Triton's async compile mode runs one compile per compiled-kernel hash and files the result under the
    # first launch key only; the second entry is compiled again on the worker's own thread (it used to be
    # reported as "the compile failed" at every restart, and its kernel compiled at its first launch).
    out = _run(tmp_path, "twin")
    assert out["report"]["listed"] == 9 and out["report"]["compiled"] == 9, out
    assert out["report"]["failed"] == 0 and out["report"]["errors"] == [], out


def _entry(kernel: str = "kernels.fake._k", source: str = "abc", key: str = "k1") -> KernelSpec:
    return KernelSpec(kernel, source, json.dumps({"name": kernel, "key": key, "signature": {"x": "*fp32"}}))


def test_the_list_round_trips_dedupes_and_ignores_another_tritons_file(tmp_path: Path) -> None:
    path = tmp_path / "k" / "gpu.json"
    specs = KernelSpecs(path)
    specs.add(_entry(key="a"))
    specs.add(_entry(key="a"))  # the same specialization twice: one entry
    specs.add(_entry(key="b"))
    assert specs.save() == 2
    back = KernelSpecs(path)
    assert back.load() == 2 and list(back.entries.values()) == list(specs.entries.values())
    data = json.loads(path.read_text())
    assert data["triton"] == triton.__version__
    data["triton"] = "0.0.1"  # recorded by another Triton: its options and keys need not match this one's
    path.write_text(json.dumps(data))
    assert KernelSpecs(path).load() == 0
    path.write_text("{not json")
    assert KernelSpecs(path).load() == 0  # unreadable: logged, ignored
    assert KernelSpecs(tmp_path / "missing.json").load() == 0


def test_malformed_entries_are_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "gpu.json"
    good = _entry().to_json()
    path.write_text(json.dumps({"triton": triton.__version__, "kernels": [{"kernel": "x"}, good, 7]}))
    specs = KernelSpecs(path)
    assert specs.load() == 1 and next(iter(specs.entries.values())).kernel == "kernels.fake._k"


def test_entries_of_kernels_that_are_gone_are_stale_not_errors() -> None:
    report = precompile([_entry("kernels.no_such_module._kernel")], threads=1)
    assert isinstance(report, PrecompileReport)
    assert (report.listed, report.stale, report.compiled, report.failed) == (1, 1, 0, 0)


def test_precompile_is_on_by_default_and_a_setting_turns_it_off() -> None:
    from contract.settings import WorkerSettings, load_settings

    assert WorkerSettings().precompile_kernels is True
    env = {"TURBOVID_DEV_MODE": "true", "TURBOVID_WORKER__PRECOMPILE_KERNELS": "false"}
    assert load_settings(env).worker.precompile_kernels is False
    assert WorkerSettings().precompile_in_processes is False  # opt-in (gpu_verify s24f: a wash at 1.3B)
    env = {"TURBOVID_DEV_MODE": "true", "TURBOVID_WORKER__PRECOMPILE_IN_PROCESSES": "true"}
    assert load_settings(env).worker.precompile_in_processes is True


def test_the_shipped_lists_match_the_kernels_sources() -> None:
    """Everything shipped in worker/autotune/ (autotune choices, kernel lists) was recorded for the kernels'
    current sources, and a kernel list holds only the configs the shipped choices pick: an entry of an edited kernel is skipped at start, so a fresh GPU host would silently
    compile (and tune) it one at a time again. Triton's hash covers a kernel's source, the jit functions it
    calls and the line it starts at, so an edit above a kernel in its module counts too. After such an edit,
    re-record both files with `turbovid bench --logs` on the GPU, or delete that kernel's entries.

    (A subprocess: under the interpreter the kernels are not JITFunctions and have no source hash.)"""
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from worker import precompile, warmup

        warmup._import_kernels()
        functions, tuners = precompile.find_jit_functions(), warmup.find_autotuners()
        bad, misordered, checked = [], [], 0
        data_of = lambda path: json.loads(path.read_text())
        for path in sorted(Path("worker/autotune").glob("*.json")):
            data = json.loads(path.read_text())
            if path.name.endswith(".kernels.json"):
                for e in data["kernels"]:
                    fn = functions.get(e["kernel"])
                    checked += 1
                    if fn is None or precompile.source_hash(fn) != e["source"]:
                        bad.append(f"{path.name}: {e['kernel']}")
                    # Triton builds the launcher from the signature in its stored order: a list re-serialized
                    # with sorted keys launches arguments into the wrong slots (a crashed warm-up, session 27)
                    elif list(e["spec"]["signature"]) != [a for a in fn.arg_names if a in e["spec"]["signature"]]:
                        misordered.append(f"{path.name}: {e['kernel']}")
            else:
                for name, entry in data.items():
                    checked += 1
                    if name not in tuners or warmup._source_hash(tuners[name]) != entry["source"]:
                        bad.append(f"{path.name}: {name}")
        # a shipped kernel list holds, of each tuned kernel, only configs the shipped choices pick (its entries
        # read as they are: KernelSpecs.load would drop a list recorded with another Triton than this one)
        extra, lists = [], []
        for path in sorted(Path("worker/autotune").glob("*.kernels.json")):
            gpu, _, rest = path.name.partition(".")
            lists.append([gpu, rest[: -len(".kernels.json")], path.with_name(gpu + ".json").is_file()])
            for tuner in tuners.values():
                tuner.cache.clear()
            warmup.AutotuneChoices(path.with_name(gpu + ".json")).load()
            specs = precompile.KernelSpecs(path)
            for item in data_of(path)["kernels"]:
                specs.add(precompile.KernelSpec(item["kernel"], item["source"], json.dumps(item["spec"])))
            before = list(specs.entries.values())
            specs.keep_chosen()
            extra += [f"{path.name}: {e.kernel}" for e in before if e not in specs.entries.values()]
        print("RESULT " + json.dumps({"checked": checked, "stale": sorted(set(bad)), "extra": extra, "lists": lists,
                                      "misordered": sorted(set(misordered))}))
    """)
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    assert out["checked"] >= 49 and out["stale"] == [] and out["extra"] == [] and out["misordered"] == [], out
    # each list is named <gpu_tag>.<model id>.kernels.json (what `precompile.lists_for` looks up) and has its
    # GPU's autotune choices beside it
    from contract.catalog import MODELS

    assert out["lists"] and all(model in MODELS and has_choices for _, model, has_choices in out["lists"]), out["lists"]
    assert {model for _, model, _ in out["lists"]} >= {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b"}


def test_rehash_carries_an_entry_over_a_body_edit_and_a_new_launch_option(tmp_path: Path) -> None:
    """scripts/rehash_kernel_list.py: a list entry recorded before the kernel's source changed gets the current
    source hash (else the worker skips it as stale and compiles at launch), a launch option goes into the entry's
    options and the tail of its cache key (where Triton's launch looks it up), and an entry whose kernel's
    parameters changed is refused instead of being rewritten."""
    shipped = json.loads((ROOT / "worker/autotune/NVIDIA_H200-cc90.wan2.1-t2v-1.3b.kernels.json").read_text())
    entry = next(e for e in shipped["kernels"] if e["kernel"] == "kernels.w8a8_gluon._w8a8_gluon_kernel")
    spec = dict(entry["spec"], options={**entry["spec"]["options"], "maxnreg": None})
    spec["key"] = spec["key"].rsplit("{", 1)[0] + "{'debug': False, 'instrumentation_mode': ''}"
    stale = {"kernel": entry["kernel"], "source": "0123456789abcdef", "spec": spec}
    listing = tmp_path / "list.kernels.json"
    listing.write_text(json.dumps({"triton": shipped["triton"], "kernels": [stale]}))
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "scripts/rehash_kernel_list.py", entry["kernel"], "--launch-option", "maxnreg=168",
           "--files", str(listing)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 entries updated" in proc.stdout
    raw = listing.read_text()
    out = json.loads(raw)["kernels"][0]
    assert out["source"] == entry["source"]  # the shipped entry carries the current source's hash
    assert out["spec"]["options"]["maxnreg"] == 168
    assert out["spec"]["key"].endswith("{'maxnreg': 168, 'debug': False, 'instrumentation_mode': ''}")
    assert out["spec"]["key"] == entry["spec"]["key"]
    assert list(out["spec"]["signature"]) == list(entry["spec"]["signature"])  # Triton's order kept

    # a kernel whose parameters no longer match the recorded signature: refused, the file left as it was
    renamed = dict(stale, spec=dict(spec, signature={"renamed_" + k: v for k, v in spec["signature"].items()}))
    listing.write_text(json.dumps({"triton": shipped["triton"], "kernels": [renamed]}))
    before = listing.read_text()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "parameters changed" in proc.stdout + proc.stderr
    assert listing.read_text() == before

"""`turbovid bench` plumbing on wan-tiny (CPU): weights, the per-stage table, the end-to-end run through real
processes, and that a failing worker ends the run with its log and no child left running."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from cli import bench
from cli.main import main
from contract.catalog import MODELS

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench") / "weights"
    return bench.build_weights(MODELS["wan-tiny"], folder, device="cpu", text_encoder="small")


def test_weights_are_canonical_quantized_sla_and_reused(tiny_weights: Path) -> None:
    manifest = json.loads((tiny_weights / "transformer" / "turbovid.json").read_text())
    assert manifest["quantization"] == {"method": "w8a8", "block": 128}
    assert manifest["attention"]["sla"] is True
    assert (tiny_weights / "text_encoder" / "tokenizer" / "spiece.model").is_file()
    stamp = (tiny_weights / "vae" / "model.safetensors").stat().st_mtime_ns
    bench.build_weights(MODELS["wan-tiny"], tiny_weights, device="cpu")
    assert (tiny_weights / "vae" / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt


@pytest.mark.slow
def test_stages_table_baseline_and_ours(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "wan-tiny", "--frames", "5", "--steps", "2", "--reps", "1", "--skip-e2e",
                 "--weights", str(tiny_weights), "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "wan-tiny 64x64 5 frames 2 steps" in text
    for stage in ("text_encode", "denoise", "vae_decode", "video_encode", "total"):
        line = next(ln for ln in text.splitlines() if ln.startswith(stage))
        base, ours, ratio = line.split()[1:4]
        assert float(base) > 0 and float(ours) > 0 and ratio.endswith("x")
    results = json.loads(out.read_text())
    variants = {r["variant"]: r for r in results["stages"]}
    assert "dense/native" in variants["baseline"]["label"]  # our dense path with the eager VAE
    assert "sla/w8a8" in variants["ours"]["label"]  # "auto" picked the checkpoint's fast path
    assert all(len(r["runs"]) == 1 for r in variants.values())
    assert tiny_weights.is_dir()  # --weights is kept


def test_eager_vae_forces_the_old_path() -> None:
    calls: list[dict[str, Any]] = []

    class FakeVAE:
        config = "cfg"

        def decode(self, latents: Any, **kw: Any) -> str:
            calls.append(kw)
            return "video"

    vae = bench.EagerVAE(FakeVAE())
    assert vae.decode("z", chunk_latents=2, fused=True) == "video"
    assert calls == [{"chunk_latents": 2, "fused": False}]
    assert vae.config == "cfg"


def test_speed_up_column() -> None:
    base = bench.StageRow("baseline", "b", runs=[{s: 2.0 for s in (*bench.STAGES, "total")}])
    ours = bench.StageRow("ours", "o", runs=[{s: 0.5 for s in (*bench.STAGES, "total")}], peak_gib=1.25)
    table = bench.format_stages([base, ours])
    assert "denoise              2.000     0.500     4.00x" in table
    assert math.isnan(bench.StageRow("x", "y").median("denoise"))


@pytest.mark.slow
@needs_redis
def test_e2e_through_real_processes(tiny_weights: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    report = bench.run_e2e(MODELS["wan-tiny"], tiny_weights, tmp_path / "e2e", size=(64, 64), frames=5, steps=1,
                           jobs=2, restart=False, device="cpu", start_timeout=120, job_timeout=60,
                           log=lines.append)
    assert 0 < report.start_to_ready_s < 120
    assert len(report.jobs) == 2
    for job in report.jobs:
        assert job.mp4_bytes > 0 and 0 < job.completed_s <= job.downloaded_s
        assert {"denoise", "vae_decode", "video_encode", "total"} <= set(job.worker_timings)
    assert "first / second job" in bench.format_e2e(report)


@needs_redis
def test_a_worker_that_cannot_start_fails_the_run_with_its_log(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    stacks: list[bench.Stack] = []
    real_close = bench.Stack.close

    def close(self: bench.Stack) -> None:
        stacks.append(self)
        kids = list(self.procs.values())
        real_close(self)
        assert all(p.poll() is not None for p in kids)  # every child it started has exited

    monkeypatch.setattr(bench.Stack, "close", close)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    with pytest.raises(bench.BenchError, match="worker exited") as err:
        bench.run_e2e(MODELS["wan-tiny"], empty, tmp_path / "e2e", size=(64, 64), frames=5, steps=1, jobs=2,
                      restart=False, device="cpu", start_timeout=120, job_timeout=30, log=lambda _: None)
    assert "no-weights" in str(err.value) or "checkpoint" in str(err.value).lower()  # the worker's own error
    assert len(stacks) == 1 and stacks[0].redis.proc.poll() is not None


def test_the_worker_warms_up_at_the_benched_shape_when_it_is_not_the_default(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A first job at a shape the warm-up never ran compiles and tunes at launch; the bench's worker is told to
    # warm up at the jobs' shape, as an operator serving it would, and the real settings accept it.
    from contract.settings import Settings

    card = MODELS["wan2.1-t2v-14b"]

    def env(**kw: Any) -> dict[str, str]:
        return bench.stack_env(card, tmp_path / "w", tmp_path, redis_url="redis://127.0.0.1:1/0", port=1,
                               metrics_port=2, device="cpu", **kw)

    assert "TURBOVID_WORKER__WARMUP_SIZES" not in env(size=card.default_size, frames=card.default_frames)
    assert "TURBOVID_WORKER__WARMUP_SIZES" not in env()
    e = env(size=(1280, 720), frames=81)
    assert json.loads(e["TURBOVID_WORKER__WARMUP_SIZES"]) == ["1280x720x81"]
    for k in [k for k in os.environ if k.startswith("TURBOVID_")]:
        monkeypatch.delenv(k)
    for k, v in e.items():
        if k.startswith("TURBOVID_"):
            monkeypatch.setenv(k, v)
    assert Settings().worker.warmup_sizes == ["1280x720x81"]
    assert json.loads(env(frames=41)["TURBOVID_WORKER__WARMUP_SIZES"]) == ["832x480x41"]


def test_worker_settings_reach_the_benched_worker_and_bad_ones_are_refused(tmp_path: Path) -> None:
    assert bench.parse_worker_settings(["precompile_in_processes=false", "ENCODER_THREADS=4"]) == {
        "precompile_in_processes": "false", "encoder_threads": "4"}
    for bad in ("no_such_setting=1", "precompile_in_processes"):
        with pytest.raises(SystemExit, match="worker-setting"):
            bench.parse_worker_settings([bad])
    env = bench.stack_env(MODELS["wan-tiny"], tmp_path / "w", tmp_path, redis_url="redis://127.0.0.1:1/0", port=1,
                          metrics_port=2, device="cpu", worker_settings={"precompile_in_processes": "false"})
    assert env["TURBOVID_WORKER__PRECOMPILE_IN_PROCESSES"] == "false"


def test_two_expert_weights_are_laid_out_as_diffusers_a14b_and_resolve_to_both_experts(tmp_path: Path) -> None:
    # The A14B's bench weights, at the tiny I2V card's size: transformer/ (high noise) and transformer_2/ (low
    # noise), both I2V DiTs, which the loader's component rules find as the two experts.
    import dataclasses

    from models.checkpoint_components import resolve_components

    card = dataclasses.replace(MODELS["wan-tiny-i2v"], experts=True, also_serves=())
    folder = bench.build_weights(card, tmp_path / "w", device="cpu", text_encoder="small")
    assert (folder / "transformer").is_dir() and (folder / "transformer_2").is_dir()
    found = resolve_components([folder], card, linear="w8a8")
    assert set(found.transformers) == {"high", "low"}, found
    assert "transformer_2" in str(found.transformers["low"]) and "transformer_2" not in str(found.transformers["high"])


@pytest.mark.slow
@needs_redis
def test_an_i2v_model_is_benched_end_to_end_with_its_conditioning_image(tmp_path: Path) -> None:
    # An I2V card's jobs carry an image (OpenAI's input_reference, a PNG data URL) through the real gateway and
    # worker, and the worker's timings show it was encoded.
    card = MODELS["wan-tiny-i2v"]
    weights = bench.build_weights(card, tmp_path / "w", device="cpu", text_encoder="small")
    report = bench.run_e2e(card, weights, tmp_path / "e2e", size=(64, 64), frames=5, steps=1, jobs=2, restart=False,
                           device="cpu", start_timeout=120, job_timeout=60, log=lambda _: None)
    assert len(report.jobs) == 2
    for job in report.jobs:
        assert job.mp4_bytes > 0 and "image_encode" in job.worker_timings, job.worker_timings
    assert re.search(r"text_encode [\d.]+ image_encode [\d.]+ denoise", bench.format_e2e(report))  # printed too
    url = bench.input_image_url(96, 64)
    assert url.startswith("data:image/png;base64,")


def test_the_files_to_ship_are_copied_under_safe_names_one_kernel_list_per_model(tmp_path: Path) -> None:
    cache, dest = tmp_path / "cache", tmp_path / "out"
    for rel in ("autotune/NVIDIA_H200-cc90-triton3.6.0-torch2.11.0+cu130.json",
                "kernels/wan2.1-t2v-14b/NVIDIA_H200-cc90-triton3.6.0-torch2.11.0+cu130.json",
                "kernels/wan2.1-t2v-1.3b/NVIDIA_H200-cc90-triton3.6.0-torch2.11.0+cu130.json"):
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_text(rel)
    bench.copy_shippable(cache, dest)
    assert sorted(p.name for p in dest.iterdir()) == [
        "NVIDIA_H200-cc90-triton3.6.0-torch2.11.0_cu130.json",
        "kernels-wan2.1-t2v-1.3b-NVIDIA_H200-cc90-triton3.6.0-torch2.11.0_cu130.json",
        "kernels-wan2.1-t2v-14b-NVIDIA_H200-cc90-triton3.6.0-torch2.11.0_cu130.json"]
    assert (dest / "kernels-wan2.1-t2v-14b-NVIDIA_H200-cc90-triton3.6.0-torch2.11.0_cu130.json").read_text().startswith(
        "kernels/wan2.1-t2v-14b/")

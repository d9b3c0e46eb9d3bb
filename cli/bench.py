"""`turbovid bench`: the whole job on full-size random weights, the baseline against ours, per stage and
end to end through the real processes.

    turbovid bench                                   # wan2.1-t2v-1.3b, 832x480, 81 frames, 4 steps
    turbovid bench --model wan2.1-t2v-14b --size 1280x720 --skip-e2e
    turbovid bench --model wan-tiny --reps 1         # CPU smoke run of the plumbing

1. Weights: random, full size, written once in our canonical layout (`--weights DIR` reuses them): the
   DiT int8-quantized with SLA `proj_l` (what TurboDiffusion's `-quant.pth` holds, so "auto" picks
   sagesla + w8a8), the umT5 text encoder (`--text-encoder small`: 2 layers of umT5-XXL instead of 24,
   same width; building and loading the full 11 GB one costs time), the Wan VAE.
2. End to end (unless `--skip-e2e`), first: redis-server, `python -m cli.main gateway`, `python -m cli.main
   worker` on a fresh cache dir (a fresh machine's start); worker start → ready (its metrics server's
   /ready: warm), then `--jobs` jobs one after another: HTTP POST → poll → MP4 downloaded; the first job
   against the next ones; the worker restarted on the same cache dir (start → ready with the kernel
   caches warm) and two more jobs; the worker's peak GPU memory from its /metrics.
3. Per stage, in this process, on the kernel caches the end-to-end worker left (median of `--reps` after
   one untimed run; a new prompt each run, so the text encoder runs): text encode, denoise, VAE decode
   (frames on the host), MP4 encode, their sum; peak GPU memory.
   - baseline: diffusers' `WanTransformer3DModel` for the same NFE, its `AutoencoderKLWan` decode and
     `export_to_video`, when diffusers is installed; else our dense bf16 path (attention dense, linear
     native) with the VAE's eager path (`fused=False`) and x264 after the last frame (`encode_mp4`).
   - ours: `load_pipeline(..., attention="auto", linear="auto")` with a worker's default CUDA graphs
     (`worker.cuda_graphs`) and the worker's streamed encode
     (`worker.encode.Mp4Stream` fed each decoded chunk; video_encode is the tail after the last one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.catalog import ModelCard, get_card
from contract.settings import WorkerSettings
from worker.precompile import safe_name

COMPLETE = "COMPLETE"
STAGES = ("text_encode", "denoise", "vae_decode", "video_encode")


# ------------------------------------------------------------------------------------------------
# 1. random full-size weights, canonical layout
# ------------------------------------------------------------------------------------------------


def build_weights(card: ModelCard, folder: Path, *, device: str, text_encoder: str = "full", seed: int = 0) -> Path:
    """Random weights for `card` in our canonical layout under `folder` (reused when complete):
    transformer/ (w8a8 + SLA proj_l; for a two-expert card the high-noise expert, transformer_2/ the low-noise
    one, as diffusers lays out the A14B), text_encoder/ (+ tokenizer), vae/."""
    if (folder / COMPLETE).is_file():
        return folder
    import dataclasses

    import torch

    from models.bench_dit import random_model
    from models.checkpoint_io import Manifest, write_canonical
    from models.config import WanConfig
    from models.linear import BLOCK, quantize_state_dict
    from models.t5 import UMT5Config, UMT5Encoder
    from models.text_encoder_loading import save_text_encoder_canonical
    from models.tiny_tokenizer import build_tiny_tokenizer
    from models.vae import VAEConfig, WanVAE
    from models.vae_loading import save_vae_canonical

    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if card.experts:  # diffusers' A14B layout: transformer/ the high-noise expert, transformer_2/ the low-noise one
        dits: tuple[tuple[str, int], ...] = (("transformer", 20), ("transformer_2", 20))
    elif card.kind == "i2v":
        dits = (("transformer", 20),)
    else:  # wan-tiny's pipeline also holds an I2V DiT
        dits = (("transformer", 0), *((("i2v", 20),) if "i2v" in card.kinds else ()))
    for sub, extra_in in dits:
        cfg = WanConfig.from_name(card.architecture)
        cfg = cfg.with_(in_dim=cfg.out_dim + extra_in) if extra_in else cfg
        model = random_model(cfg, device=device, dtype=dtype, attention="sla", seed=seed + extra_in + (100 if sub == "transformer_2" else 0))
        sd = quantize_state_dict({k: v.detach() for k, v in model.state_dict().items()})
        del model
        manifest = Manifest(component="transformer", architecture=cfg.to_dict(),
                            quantization={"method": "w8a8", "block": BLOCK},
                            attention={"sla": True, "topk": cfg.sla_topk, "block_q": cfg.sla_block_q,
                                       "block_k": cfg.sla_block_k}, source="turbovid bench random")
        write_canonical(folder / sub, {k: v.contiguous().cpu() for k, v in sd.items()}, manifest)
        del sd

    t5_cfg = UMT5Config.from_name(card.text_encoder)
    if text_encoder == "small":
        t5_cfg = dataclasses.replace(t5_cfg, num_layers=min(2, t5_cfg.num_layers))
    encoder = UMT5Encoder.random(t5_cfg, seed=seed + 1, dtype=dtype, device=device)
    state = {k: v.contiguous().cpu() for k, v in encoder.state_dict().items()}
    del encoder
    with tempfile.TemporaryDirectory() as tmp:
        spiece = build_tiny_tokenizer(Path(tmp) / "tok", vocab_size=min(1000, t5_cfg.vocab_size))
        save_text_encoder_canonical(folder / "text_encoder", state, t5_cfg, tokenizer=spiece,
                                    source=f"turbovid bench random ({text_encoder})")
    del state

    torch.manual_seed(seed + 2)
    save_vae_canonical(WanVAE(VAEConfig.from_name(card.vae)), folder / "vae", source="turbovid bench random")
    (folder / COMPLETE).write_text(f"{card.id} text_encoder={text_encoder}\n")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return folder


# ------------------------------------------------------------------------------------------------
# 2. per stage, in process
# ------------------------------------------------------------------------------------------------


@dataclass
class StageRow:
    variant: str  # "baseline" | "ours"
    label: str  # what ran
    runs: list[dict[str, float]] = field(default_factory=list)  # per timed run: stage -> seconds
    peak_gib: float = math.nan

    def median(self, stage: str) -> float:
        values = [r[stage] for r in self.runs if stage in r]
        return statistics.median(values) if values else math.nan


class EagerVAE:
    """The VAE's old path (`fused=False`: NCDHW convolutions, plain norms, one latent frame per chunk)."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    def decode(self, latents: Any, **kw: Any) -> Any:
        return self.vae.decode(latents, **{**kw, "fused": False})

    def decode_iter(self, latents: Any, **kw: Any) -> Any:
        return self.vae.decode_iter(latents, **{**kw, "fused": False})

    def encode(self, video: Any, **kw: Any) -> Any:
        return self.vae.encode(video, **{**kw, "fused": False})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.vae, name)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float:
    if not device.startswith("cuda"):
        return math.nan
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


class _Clock:
    """Wall seconds between laps, the device synchronised at each (stage boundaries only)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.laps: dict[str, float] = {}
        _sync(device)
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        _sync(self.device)
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
        return self.laps[name]


def bench_pipeline(variant: str, label: str, pipe: Any, *, streamed: bool, card: ModelCard, size: tuple[int, int],
                   frames: int, steps: int, reps: int, device: str, tmp: Path) -> StageRow:
    """`pipe.generate` + the MP4 encode once untimed, then `reps` timed runs. streamed: the worker's way
    (decoded chunks to `Mp4Stream`'s thread during the decode; video_encode is the tail after the last
    chunk); else the old way (`encode_mp4` of all frames after the decode)."""
    from contract.jobs import GenerationParams
    from worker.encode import encode_mp4, pick_codec

    codec = pick_codec("auto")[0] if streamed else "libx264"
    row = StageRow(variant, f"{label}, {'streamed ' if streamed else 'serial '}{codec}")
    for rep in range(reps + 1):
        params = GenerationParams(kind="t2v", width=size[0], height=size[1], num_frames=frames, num_steps=steps,
                                  seed=rep, prompt=f"bench {variant} run {rep}: {uuid.uuid4().hex[:8]}")
        path = tmp / f"{variant}-{rep}.mp4"
        sink = _StreamToMp4(path, codec) if streamed else None
        if sink is not None:
            sink.fps = params.fps
        _reset_peak(device)
        clock = _Clock(device)
        result = pipe.generate(params, on_step=sink)
        clock.lap("generate")
        if sink is not None:
            sink.close(result)
        else:
            encode_mp4(result.frames, path, fps=result.params.fps)
        enc = clock.lap("video_encode")
        total = sum(clock.laps.values())
        if rep == 0:
            continue  # warm-up: compiles, autotuning, cuDNN plans
        t = result.timings
        row.runs.append({"text_encode": t.text_encode, "denoise": t.denoise, "vae_decode": t.vae_decode,
                         "video_encode": enc, "total": total})
        row.peak_gib = max(_peak_gib(device), 0.0 if math.isnan(row.peak_gib) else row.peak_gib)
    return row


def _stream_sink_class() -> type:
    from models.pipeline_types import Progress
    from worker.encode import Mp4Stream

    class StreamToMp4(Progress):
        """Decoded chunks to an `Mp4Stream` as they come (what worker/task.py does)."""

        def __init__(self, path: Path, codec: str) -> None:
            self.path, self.codec = path, codec
            self.encoder: Mp4Stream | None = None
            self.fps = 16

        def on_frames(self, start: int, frames: Any) -> None:
            if self.encoder is None:
                _, h, w, _ = frames.shape
                self.encoder = Mp4Stream(self.path, width=w, height=h, fps=self.fps, codec=self.codec)
            self.encoder.write(frames)

        def close(self, result: Any) -> int:
            if self.encoder is None:  # a pipeline that does not stream
                self.fps = result.params.fps
                self.on_frames(0, result.frames)
            assert self.encoder is not None
            return self.encoder.close()

    return StreamToMp4


def _StreamToMp4(path: Path, codec: str) -> Any:  # noqa: N802 - a class made on first use (lazy imports)
    return _stream_sink_class()(path, codec)


def serial_encode(frames: Any, path: Path, fps: int) -> int:
    """x264 after the last frame (the old worker path)."""
    from worker.encode import encode_mp4

    return encode_mp4(frames, path, fps=fps)


def run_stages(card: ModelCard, weights: Path, *, size: tuple[int, int], frames: int, steps: int, reps: int,
               device: str, tmp: Path, log: Callable[[str], None]) -> list[StageRow]:
    import torch

    from models import load_transformer
    from models.pipeline import WanPipeline, load_pipeline

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    rows: list[StageRow] = []
    log(f"loading ours (attention/linear auto) from {weights}")
    ours = load_pipeline(card.id, [weights], device=device, dtype=dtype, cache_dir=tmp / "cache")
    worker_settings = WorkerSettings()  # as a worker runs it: CUDA graphs on a CUDA device, the VAE's convs
    ours.cuda_graphs = worker_settings.cuda_graphs
    ours.vae.conv_impl = worker_settings.vae_conv
    shape = dict(card=card, size=size, frames=frames, steps=steps, reps=reps, device=device, tmp=tmp)

    if _has_diffusers() and card.text_encoder == "umt5-xxl":
        log("baseline: diffusers WanTransformer3DModel + AutoencoderKLWan + export_to_video")
        rows.append(bench_diffusers(card, ours, **shape))  # type: ignore[arg-type]
    else:
        log("baseline: our dense bf16 DiT (attention dense, linear native) + the VAE's eager path")
        dit = load_transformer(weights / "transformer", device=device, dtype=dtype, attention="dense",
                               linear="native").eval()
        base = WanPipeline(card, {"t2v": dit}, ours.text_encoder, EagerVAE(ours.vae), ours.device, dtype,
                           solver=ours.solver, attention=dit.ops.attention, linear=dit.ops.linear)
        rows.append(bench_pipeline("baseline", f"{dit.ops.attention}/{dit.ops.linear}, eager VAE", base,
                                   streamed=False, **shape))  # type: ignore[arg-type]
        del base, dit
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    log(f"ours: {ours.attention}/{ours.linear}")
    rows.append(bench_pipeline("ours", f"{ours.attention}/{ours.linear}, fast VAE", ours, streamed=True,
                               **shape))  # type: ignore[arg-type]
    del ours
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def _has_diffusers() -> bool:
    import importlib.util

    return importlib.util.find_spec("diffusers") is not None


def bench_diffusers(card: ModelCard, ours: Any, *, size: tuple[int, int], frames: int, steps: int, reps: int,
                    device: str, tmp: Path, **_: Any) -> StageRow:
    """diffusers' Wan transformer (random weights, same config) for `steps` NFE with the rCM update, its
    VAE decode and `export_to_video`; text encoding is ours (the same umT5)."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from diffusers.utils import export_to_video

    from models.config import WanConfig
    from models.samplers import rcm_timesteps

    cfg = WanConfig.from_name(card.architecture)
    dtype = ours.dtype
    with torch.device(device):
        dit = WanTransformer3DModel(
            patch_size=tuple(cfg.patch), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
            in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
            ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            eps=cfg.eps).to(dtype).eval()  # type: ignore[attr-defined]
        vcfg = ours.vae.config
        vae = AutoencoderKLWan(base_dim=vcfg.base_dim, z_dim=vcfg.z_dim, dim_mult=list(vcfg.dim_mult),
                               num_res_blocks=vcfg.num_res_blocks,
                               temperal_downsample=list(vcfg.temporal_downsample)).to(dtype).eval()  # type: ignore[attr-defined]
    mean = torch.tensor(vcfg.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vcfg.latents_std, device=device).view(1, -1, 1, 1, 1)
    w, h = size
    lat_shape = (1, vcfg.z_dim, (frames - 1) // 4 + 1, h // 8, w // 8)
    row = StageRow("baseline", "diffusers WanTransformer3DModel + AutoencoderKLWan + export_to_video")
    times = rcm_timesteps(steps, card.sigma_max("t2v"))
    for rep in range(reps + 1):
        _reset_peak(device)
        clock = _Clock(device)
        with torch.inference_mode():
            ctx = ours.encode_text([f"bench diffusers {rep} {uuid.uuid4().hex[:8]}"])
            clock.lap("text_encode")
            gen = torch.Generator(device=device).manual_seed(rep)
            x = torch.randn(lat_shape, device=device, generator=gen) * times[0]
            for t, t_next in zip(times[:-1], times[1:], strict=True):
                ts = torch.full((1,), t * 1000.0, device=device)
                v = dit(hidden_states=x.to(dtype), timestep=ts, encoder_hidden_states=ctx, return_dict=False)[0]
                x = (1 - t_next) * (x - t * v.float()) + t_next * torch.randn(lat_shape, device=device, generator=gen)
            clock.lap("denoise")
            video = vae.decode((x * std + mean).to(dtype), return_dict=False)[0]
            frames_01 = ((video[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu().numpy()
            clock.lap("vae_decode")
        try:
            export_to_video(list(frames_01), str(tmp / f"diffusers-{rep}.mp4"), fps=16)
        except ImportError:  # it needs imageio or OpenCV: the old serial x264 instead
            row.label = row.label.replace("+ export_to_video", "+ serial x264 (export_to_video lacks imageio/OpenCV)")
            serial_encode((frames_01 * 255).round().astype("uint8"), tmp / f"diffusers-{rep}.mp4", 16)
        clock.lap("video_encode")
        if rep:
            row.runs.append({**clock.laps, "total": sum(clock.laps.values())})
            row.peak_gib = max(_peak_gib(device), 0.0 if math.isnan(row.peak_gib) else row.peak_gib)
    del dit, vae
    return row


# ------------------------------------------------------------------------------------------------
# 3. end to end through the real processes
# ------------------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    """The end-to-end run failed; the message says where (and the child's log tail)."""


@dataclass
class JobRun:
    job_id: str
    completed_s: float  # POST -> status completed (client clock)
    downloaded_s: float  # POST -> MP4 bytes received
    mp4_bytes: int
    worker_timings: dict[str, float] = field(default_factory=dict)  # the job record's stage timings


@dataclass
class E2EReport:
    start_to_ready_s: float = math.nan  # fresh cache dir
    jobs: list[JobRun] = field(default_factory=list)
    restart_to_ready_s: float = math.nan  # same cache dir, new process
    restart_jobs: list[JobRun] = field(default_factory=list)
    worker_peak_gib: float = math.nan


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Stack:
    """redis-server + gateway + worker as child processes (own sessions, logs in `folder`); `close` stops
    each child it started (SIGTERM, then SIGKILL) and removes nothing else."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis: Any = None

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def tail(self, name: str, lines: int = 25) -> str:
        try:
            text = (self.folder / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def wait_http(self, name: str, url: str, timeout: float) -> float:
        """Seconds until `url` answers 200; BenchError when process `name` exits or time runs out."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode} before {url} was ready:\n{self.tail(name)}")
            try:
                if _http("GET", url, timeout=2)[0] == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"{url} not ready after {timeout:.0f} s:\n{self.tail(name)}")

    def stop(self, name: str, grace: float = 30.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name, grace=15.0)
        if self.redis is not None:
            self.redis.stop()


def stack_env(card: ModelCard, weights: Path, folder: Path, *, redis_url: str, port: int, metrics_port: int,
              device: str, size: tuple[int, int] | None = None, frames: int | None = None,
              worker_settings: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOVID_")}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "TURBOVID_DEV_MODE": "true",
        "TURBOVID_AUTH__ENABLED": "false",
        "TURBOVID_REDIS__URL": redis_url,
        "TURBOVID_REDIS__KEY_PREFIX": f"bench{uuid.uuid4().hex[:6]}",
        "TURBOVID_GATEWAY__HOST": "127.0.0.1",
        "TURBOVID_GATEWAY__PORT": str(port),
        "TURBOVID_GATEWAY__MODELS": json.dumps([card.id]),
        "TURBOVID_GATEWAY__DEFAULT_MODEL": card.id,
        "TURBOVID_WORKER__MODEL": card.id,
        "TURBOVID_WORKER__CHECKPOINT": json.dumps([str(weights)]),
        "TURBOVID_WORKER__DEVICE": device,
        "TURBOVID_WORKER__METRICS_PORT": str(metrics_port),
        "TURBOVID_WORKER__CACHE_DIR": str(folder / "cache"),  # fresh: the first start compiles and tunes
        "TURBOVID_STORAGE__BACKEND": "local",
        "TURBOVID_STORAGE__LOCAL_DIR": str(folder / "storage"),
    })
    size, frames = size or card.default_size, frames or card.default_frames
    if tuple(size) != tuple(card.default_size) or frames != card.default_frames:
        # the jobs' shape beyond the catalog's default, as an operator serving it would set (a first job at a
        # shape the warm-up did not run would compile and tune at launch)
        env["TURBOVID_WORKER__WARMUP_SIZES"] = json.dumps([f"{size[0]}x{size[1]}x{frames}"])
    for name, value in (worker_settings or {}).items():
        env[f"TURBOVID_WORKER__{name.upper()}"] = value
    return env


def input_image_url(width: int, height: int) -> str:
    """A PNG data URL of `models.bench_a14b.input_image` (a gradient with a disc and grain) at the job's size."""
    import base64
    import io

    from PIL import Image

    from models.bench_a14b import input_image

    buf = io.BytesIO()
    Image.fromarray(input_image(width, height)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def run_job(base: str, card: ModelCard, *, size: tuple[int, int], frames: int, steps: int, seed: int,
            timeout: float, stack: Stack) -> JobRun:
    """POST one job, poll it to completion, download the MP4; BenchError on failure or timeout."""
    body: dict[str, Any] = {"model": card.id, "prompt": f"bench job {seed} {uuid.uuid4().hex[:8]}",
                            "size": f"{size[0]}x{size[1]}", "num_frames": frames, "num_steps": steps, "seed": seed}
    if card.kind == "i2v":  # the conditioning image, inline as OpenAI's input_reference
        body["input_reference"] = {"image_url": input_image_url(*size)}
    t0 = time.monotonic()
    status, raw = _http("POST", f"{base}/v1/videos", body)
    if status not in (200, 201, 202):
        raise BenchError(f"POST /v1/videos answered {status}: {raw[:500]!r}")
    job_id = json.loads(raw)["id"]
    video: dict[str, Any] = {}
    while time.monotonic() - t0 < timeout:
        status, raw = _http("GET", f"{base}/v1/videos/{job_id}")
        if status != 200:
            raise BenchError(f"GET /v1/videos/{job_id} answered {status}: {raw[:500]!r}")
        video = json.loads(raw)
        if video["status"] in ("completed", "failed"):
            break
        if stack.procs["worker"].poll() is not None:
            raise BenchError(f"the worker exited during job {job_id}:\n{stack.tail('worker')}")
        time.sleep(0.01)
    completed = time.monotonic() - t0
    if video.get("status") != "completed":
        raise BenchError(f"job {job_id} ended {video.get('status', 'unfinished')!r} after {completed:.1f} s: "
                         f"{video.get('error')}\n{stack.tail('worker')}")
    status, mp4 = _http("GET", f"{base}/v1/videos/{job_id}/content", timeout=60)
    downloaded = time.monotonic() - t0
    if status != 200 or mp4[4:8] != b"ftyp":
        raise BenchError(f"GET /v1/videos/{job_id}/content answered {status} with {len(mp4)} bytes, not an MP4")
    return JobRun(job_id, completed, downloaded, len(mp4), dict(video.get("timings") or {}))


def _worker_peak_gib(metrics_url: str) -> float:
    try:
        text = _http("GET", metrics_url, timeout=5)[1].decode()
    except OSError:
        return math.nan
    m = re.search(r'^turbovid_gpu_memory_bytes\{[^}]*kind="peak_allocated"[^}]*\}\s+(\S+)', text, re.M)
    return float(m[1]) / 2**30 if m else math.nan


def run_e2e(card: ModelCard, weights: Path, folder: Path, *, size: tuple[int, int], frames: int, steps: int,
            jobs: int, restart: bool, device: str, start_timeout: float, job_timeout: float,
            log: Callable[[str], None], worker_settings: dict[str, str] | None = None) -> E2EReport:
    from cli.devstack import EmbeddedRedis, free_port

    folder.mkdir(parents=True, exist_ok=True)
    report = E2EReport()
    redis_srv = EmbeddedRedis()
    port, metrics_port = free_port(), free_port()
    stack = Stack(folder, {})
    try:
        redis_srv.start()
        stack.redis = redis_srv
        stack.env = stack_env(card, weights, folder, redis_url=redis_srv.url, port=port, metrics_port=metrics_port,
                              device=device, size=size, frames=frames, worker_settings=worker_settings)
        base, ready = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/ready"
        stack.spawn("gateway", ["gateway"])
        stack.spawn("worker", ["worker"])
        stack.wait_http("gateway", f"{base}/readyz", 60)
        report.start_to_ready_s = stack.wait_http("worker", ready, start_timeout)
        log(f"worker start -> ready (fresh cache): {report.start_to_ready_s:.1f} s")
        for i in range(jobs):
            report.jobs.append(run_job(base, card, size=size, frames=frames, steps=steps, seed=i, timeout=job_timeout,
                                       stack=stack))
            log(f"job {i + 1}: POST -> completed {report.jobs[-1].completed_s:.3f} s")
        report.worker_peak_gib = _worker_peak_gib(f"http://127.0.0.1:{metrics_port}/metrics")
        if restart:
            stack.stop("worker")
            stack.spawn("worker", ["worker"])
            report.restart_to_ready_s = stack.wait_http("worker", ready, start_timeout)
            log(f"worker restart -> ready (warm cache): {report.restart_to_ready_s:.1f} s")
            for i in range(2):
                report.restart_jobs.append(run_job(base, card, size=size, frames=frames, steps=steps, seed=100 + i,
                                                   timeout=job_timeout, stack=stack))
    finally:
        stack.close()
    return report


# ------------------------------------------------------------------------------------------------
# 4. the report
# ------------------------------------------------------------------------------------------------


def _f(x: float, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_stages(rows: list[StageRow]) -> str:
    base = next((r for r in rows if r.variant == "baseline"), None)
    ours = next((r for r in rows if r.variant == "ours"), None)
    lines = [f"{'stage':<14} {'baseline s':>11} {'ours s':>9} {'speed-up':>9}"]
    for stage in (*STAGES, "total"):
        b = base.median(stage) if base else math.nan
        o = ours.median(stage) if ours else math.nan
        ratio = b / o if o and not math.isnan(b) and not math.isnan(o) else math.nan
        lines.append(f"{stage:<14} {_f(b):>11} {_f(o):>9} {_f(ratio, '.2f') + 'x':>9}")
    lines.append(f"{'peak GiB':<14} {_f(base.peak_gib if base else math.nan, '.1f'):>11} "
                 f"{_f(ours.peak_gib if ours else math.nan, '.1f'):>9}")
    for r in rows:
        lines.append(f"  {r.variant}: {r.label}; {len(r.runs)} timed runs")
    return "\n".join(lines)


def format_e2e(e: E2EReport) -> str:
    lines = [f"worker start -> ready, fresh cache dir: {_f(e.start_to_ready_s, '.1f')} s"]

    def job_line(name: str, j: JobRun) -> str:
        w = j.worker_timings
        order = ("queue_wait", STAGES[0], "image_encode", *STAGES[1:], "upload", "total")  # image_encode: I2V
        stages = " ".join(f"{k} {w[k]:.3f}" for k in order if k in w)
        return (f"{name:<22} POST->completed {j.completed_s:.3f} s  ->MP4 downloaded {j.downloaded_s:.3f} s  "
                f"({j.mp4_bytes / 1e6:.1f} MB)  worker: {stages}")

    for i, j in enumerate(e.jobs):
        lines.append(job_line(f"job {i + 1}" + (" (first)" if i == 0 else ""), j))
    if len(e.jobs) >= 2:
        warm = statistics.median(j.completed_s for j in e.jobs[1:])
        lines.append(f"first / second job: {e.jobs[0].completed_s / e.jobs[1].completed_s:.2f}x; "
                     f"warm median (jobs 2..{len(e.jobs)}) POST->completed {warm:.3f} s")
    if not math.isnan(e.restart_to_ready_s):
        lines.append(f"worker restart -> ready, warm cache dir: {e.restart_to_ready_s:.1f} s")
        for i, j in enumerate(e.restart_jobs):
            lines.append(job_line(f"after restart job {i + 1}", j))
    lines.append(f"worker peak GPU memory: {_f(e.worker_peak_gib, '.1f')} GiB")
    return "\n".join(lines)


def environment(device: str) -> str:
    import torch

    parts = [f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return f"{name}, " + ", ".join(parts)


# ------------------------------------------------------------------------------------------------
# 5. the command
# ------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="wan2.1-t2v-1.3b")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's default size)")
    p.add_argument("--frames", type=int, default=None, help="frames, 4k+1 (default: the model's default)")
    p.add_argument("--steps", type=int, default=4, help="denoise steps (NFE)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per variant, after one untimed")
    p.add_argument("--jobs", type=int, default=3, help="end-to-end jobs after the worker start (>= 2)")
    p.add_argument("--skip-e2e", action="store_true", help="per-stage part only")
    p.add_argument("--skip-stages", action="store_true", help="end-to-end part only")
    p.add_argument("--no-restart", action="store_true", help="do not restart the worker on its warm cache")
    p.add_argument("--weights", type=Path, default=None, help="folder for the random weights (kept; reused)")
    p.add_argument("--text-encoder", choices=("full", "small"), default="full",
                   help="small: umT5 with 2 of its layers (quicker to build and load)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds for a worker to become ready")
    p.add_argument("--job-timeout", type=float, default=300.0, help="seconds per end-to-end job")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--worker-setting", action="append", default=[], metavar="NAME=VALUE",
                   help="a worker setting for the end-to-end run (TURBOVID_WORKER__NAME=VALUE; repeatable), "
                        "e.g. precompile_in_processes=true")
    p.add_argument("--logs", type=Path, default=None, help="copy the end-to-end processes' logs (and the worker's autotune choices and "
                        "recorded kernel list, to ship in worker/autotune/) here")


def copy_shippable(cache_dir: Path, dest: Path) -> None:
    """Copy what a worker's cache dir holds to ship in worker/autotune/: its autotune choices (`<device>.json`,
    as `<GPU>.json`) and each model's recorded kernel list (`kernels-<model>-<device>.json`, as
    `<GPU>.<model>.kernels.json`), under file-name-safe names."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in (cache_dir / "autotune").glob("*.json"):
        shutil.copy(path, dest / safe_name(path.name))
    for path in (cache_dir / "kernels").glob("*/*.json"):  # kernels/<model>/<device>.json
        shutil.copy(path, dest / safe_name(f"kernels-{path.parent.name}-{path.name}"))


def parse_worker_settings(items: list[str]) -> dict[str, str]:
    """`--worker-setting NAME=VALUE` items as {name: value}; SystemExit naming the bad one otherwise."""
    from contract.settings import WorkerSettings

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in WorkerSettings.model_fields:
            raise SystemExit(f"turbovid bench: --worker-setting {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(sorted(WorkerSettings.model_fields))}")
        out[name] = value
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from contract.catalog import check_frames, parse_size

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    card = get_card(args.model)
    size = parse_size(card, args.size)
    worker_settings = parse_worker_settings(args.worker_setting)
    frames = args.frames or card.default_frames
    check_frames(frames, card.max_frames)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="turbovid-bench-"))
    results: dict[str, Any] = {"model": card.id, "size": list(size), "frames": frames, "steps": args.steps,
                               "environment": environment(device)}
    title = (f"turbovid bench: {card.id} {size[0]}x{size[1]} {frames} frames {args.steps} steps; "
             f"{results['environment']}; random weights (text encoder {args.text_encoder})")

    def save() -> None:
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=1, default=str))

    code = 0
    try:
        weights = args.weights or tmp / "weights"
        t0 = time.perf_counter()
        build_weights(card, weights, device=device, text_encoder=args.text_encoder)
        log(f"weights ready in {time.perf_counter() - t0:.1f} s: {weights} (text encoder: {args.text_encoder})")
        # The end-to-end part first: its worker starts on a fresh cache dir (a fresh machine's start); the
        # in-process part then reuses that dir's compiled kernels and autotune choices.
        kernel_cache = tmp / "e2e" / "cache"
        if not args.skip_e2e:
            try:
                e2e = run_e2e(card, weights, tmp / "e2e", size=size, frames=frames, steps=args.steps,
                              jobs=max(2, args.jobs), restart=not args.no_restart, device=device,
                              start_timeout=args.start_timeout, job_timeout=args.job_timeout, log=log,
                              worker_settings=worker_settings)
                results["e2e"] = asdict(e2e)
                print(f"\n== {title} ==\n-- whole job through redis-server + gateway + worker processes --\n"
                      f"{format_e2e(e2e)}", flush=True)
            except BenchError as exc:
                print(f"turbovid bench: end-to-end run failed: {exc}", file=sys.stderr)
                results["e2e_error"] = str(exc)
                code = 1
            save()
        if not args.skip_stages and (card.kind != "t2v" or card.experts):
            print(f"\n(per-stage part skipped: it runs T2V models with one DiT; {card.id} is measured end to end "
                  "above; models.bench_a14b times its stages in process)", flush=True)
        elif not args.skip_stages:
            from worker.warmup import use_kernel_cache

            choices = use_kernel_cache(kernel_cache)
            rows = run_stages(card, weights, size=size, frames=frames, steps=args.steps, reps=args.reps,
                              device=device, tmp=tmp, log=log)
            if choices is not None:  # what this run tuned: `--logs` ships it (worker/autotune/<GPU>.json)
                choices.save()
            results["stages"] = [asdict(r) for r in rows]
            tail_line = ""
            ours = next((r for r in rows if r.variant == "ours" and r.runs), None)
            if ours is not None:  # the same tail for real-looking frames (random weights give noise)
                from worker.encode import real_looking_tail

                decode_s = ours.median("vae_decode")
                results["video_encode_real_looking_s"] = real_looking_tail(frames, size[1], size[0], decode_s,
                                                                           tmp / "real-looking.mp4")
                tail_line = (f"\nvideo_encode tail for real-looking frames (worker.encode.sample_video, the decode "
                             f"simulated at {decode_s:.3f} s): {results['video_encode_real_looking_s']:.3f} s "
                             f"(the rows above encode the random weights' noise)")
            save()
            print(f"\n== {title} ==\n-- per stage, in process (median; seconds) --\n{format_stages(rows)}"
                  f"{tail_line}", flush=True)
    finally:
        if args.logs is not None and (tmp / "e2e").is_dir():
            args.logs.mkdir(parents=True, exist_ok=True)
            for log_file in (tmp / "e2e").glob("*.log"):
                shutil.copy(log_file, args.logs / safe_name(log_file.name))
            copy_shippable(tmp / "e2e" / "cache", args.logs)
        shutil.rmtree(tmp, ignore_errors=True)
    return code

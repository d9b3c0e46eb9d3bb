"""The one typed configuration object, read from the environment (and `.env`) at the entry points.

Every variable is `TURBOVID_<GROUP>__<FIELD>`, e.g. `TURBOVID_REDIS__URL`,
`TURBOVID_STORAGE__BACKEND=s3`, `TURBOVID_WORKER__CHECKPOINT=/ckpt/TurboWan2.1-T2V-1.3B-480P-quant.pth`.
Entry points (`turbovid gateway|worker|serve`) build `Settings()` once and pass values down;
nothing below them reads the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from contract.catalog import MODELS


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "turbovid"  # every key the service writes starts with this


class StorageSettings(BaseModel):
    backend: Literal["local", "s3"] = "local"
    local_dir: Path = Path(".turbovid/storage")
    s3_bucket: str = "turbovid"
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None  # MinIO / R2 / any S3-compatible endpoint
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None  # None: boto3's default credential chain
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    presign_ttl_s: int = Field(default=3600, gt=0)
    multipart_threshold_mb: int = Field(default=16, gt=0)
    max_attempts: int = Field(default=5, gt=0)  # botocore retries


class AuthSettings(BaseModel):
    enabled: bool = True
    # API keys are stored hashed (SHA-256 hex) in Redis by `turbovid keys create`; these bootstrap
    # hashes (name=sha256hex) are loaded at gateway start so a deployment can be configured by env.
    bootstrap_keys: dict[str, str] = Field(default_factory=dict)
    rate_limit_per_minute: int = Field(default=60, gt=0)  # job creations per key per minute
    max_concurrent_jobs: int = Field(default=4, gt=0)  # queued + in_progress per key


class LimitsSettings(BaseModel):
    max_prompt_chars: int = Field(default=2000, gt=0)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=4096 * 4096, gt=0)
    min_image_side: int = Field(default=64, gt=0)
    max_metadata_bytes: int = Field(default=4096, gt=0)


class QueueSettings(BaseModel):
    job_timeout_s: int = Field(default=1800, gt=0)  # RQ kills a job running longer than this
    result_ttl_s: int = Field(default=7 * 86400, gt=0)  # how long finished jobs (and videos) are kept
    failure_ttl_s: int = Field(default=7 * 86400, gt=0)
    queued_ttl_s: int = Field(default=86400, gt=0)  # a job not started by then fails
    max_requeues: int = Field(default=1, ge=0)  # re-queues of a job whose worker died mid-job
    heartbeat_s: int = Field(default=10, gt=0)


DEV_WEBHOOK_SECRET = "whsec_dev_only_change_me"


class EgressSettings(BaseModel):
    """Outbound requests the gateway makes for users: `image_url` fetches and webhook deliveries."""

    allow_private_targets: bool = False  # loopback/private/link-local targets (dev and tests only)
    timeout_s: float = Field(default=10.0, gt=0)


class WebhookSettings(BaseModel):
    secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)  # refused outside dev mode
    max_attempts: int = Field(default=6, gt=0)
    concurrency: int = Field(default=16, gt=0)  # deliveries in flight per `turbovid webhooks` process
    per_target: int = Field(default=2, gt=0)  # of which at most this many to one receiver (host:port)


class GatewaySettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    models: list[str] = Field(default_factory=lambda: ["wan-tiny"])  # model ids this gateway serves
    default_model: str = "wan-tiny"
    poll_after_ms: int = 1000
    public_url: str | None = None  # e.g. https://api.example.com: gives webhook payloads a content `url`


class WorkerSettings(BaseModel):
    model: str = "wan-tiny"
    checkpoint: list[Path] = Field(default_factory=list)  # files/folders; empty: built-in tiny weights
    # RQ queues served; empty: the model's id and the ids its catalog card also serves
    queues: list[str] = Field(default_factory=list)
    device: str = "auto"  # "auto": cuda if available, else cpu
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # "auto": bfloat16 on cuda, float32 on cpu
    # "auto": from the checkpoint's manifest (or keys) and the device (models.ops); or a backend to force
    attention: Literal["auto", "dense", "sla", "sagesla"] = "auto"
    linear: Literal["auto", "native", "w8a8"] = "auto"
    # The int8 GEMM kernel of w8a8 on Hopper (sm90): "auto"/"gluon" the Gluon kernel with overlapping MMAs
    # (kernels/w8a8_gluon.py; falls back to Triton's where it does not run), "triton" the Triton TMA kernel.
    # The kernels read this variable itself, so scripts and rank processes follow it too.
    w8a8_backend: Literal["auto", "gluon", "triton"] = "auto"
    # Wan's FFN under w8a8: "rowq" runs ffn_up, a quantization pass (GELU, one scale per row), ffn_down; "blockq"
    # (Hopper, where the Gluon GEMM runs) two kernels, the GELU and int8 codes with one scale per (row, 128
    # columns) out of ffn_up's epilogue (kernels/w8a8_blockq.py): no faster on the H200, so not the default.
    # Read by the kernels too.
    w8a8_ffn: Literal["rowq", "blockq"] = "rowq"
    # SageSLA's fused attention kernel on Hopper (sm90): "auto"/"gluon" the Gluon kernel whose score MMAs overlap
    # the softmax (kernels/sagesla_gluon.py; where it covers the call and passed its check at the first call, else
    # Triton's), "triton" the Triton kernel. Read by the kernels too.
    sagesla_kernel: Literal["auto", "gluon", "triton"] = "auto"
    # The per-token int8 quantization of activations (the FFN's GELU pass) on Hopper: "auto"/"gluon" the Gluon
    # kernel (kernels/int8_quant_gluon.py; where it holds the row and passed its first-call check, else Triton's),
    # "triton" the Triton kernel. Read by the kernels too.
    quant_kernel: Literal["auto", "gluon", "triton"] = "auto"
    # The VAE's 96- and 192-channel 3x3x3 convs on Hopper (sm90): "auto"/"gluon" the Gluon kernel whose loaded
    # input rows serve three taps (kernels/conv3d_gluon.py; where its first-call check passed, else Triton's),
    # "triton" the Triton implicit-GEMM kernel. Read by the kernels too.
    conv_kernel: Literal["auto", "gluon", "triton"] = "auto"
    # The DiT's fused residual add + LayerNorm + AdaLN modulation on Hopper: "auto"/"gluon" the Gluon kernel (each
    # piece of a row in a layout of its own, kernels/adaln_gluon.py; where it holds the row and passed its first-call
    # check, else Triton's), "triton" the Triton kernel. Read by the kernels too.
    norm_kernel: Literal["auto", "gluon", "triton"] = "auto"
    # "auto": the catalog's solver for the model (rCM for TurboDiffusion checkpoints); "flow" serves
    # original (non-distilled) Wan checkpoints with the 50-step flow-matching solver + CFG.
    solver: Literal["auto", "rcm", "flow"] = "auto"
    metrics_port: int = 9101  # 0 disables the worker's /metrics server
    warmup: bool = True  # generate once at each served size before taking jobs (worker/warmup.py)
    # Sizes warmed up beyond the catalog's default, for each kind the model serves: "WIDTHxHEIGHT" or
    # "WIDTHxHEIGHTxFRAMES" (frames default to the model's), e.g. ["1280x720", "832x480x41"].
    warmup_sizes: list[str] = Field(default_factory=list)
    # Compile the Triton kernels recorded by this host's earlier starts (or shipped for its GPU model) on one
    # thread per CPU while the weights load, instead of one after the other at the warm-up's first launches
    # (worker/precompile.py). Off: every kernel compiles at its first launch, as before.
    precompile_kernels: bool = True
    # Run those compiles' code generator in child processes first (no CUDA context; a GIL each, so the weight
    # load is not slowed), the worker's threads then load them from Triton's file cache. Off by default: on an
    # H200 host it made the 14B's load 4.4 s shorter and its start 2.7 s, but the 1.3B's start 1.8 s longer (the
    # children's own start-up; gpu_verify s24f).
    precompile_in_processes: bool = False
    name: str | None = None  # RQ worker name; default host:pid
    cache_dir: Path = Path(".turbovid/cache")  # built tiny weights, compiled kernels, tokenizers
    # GPU memory budget in GB (GiB; None: the device's own), per rank. Under it the worker offloads what
    # does not fit (worker/memory.py: the inactive A14B expert in pinned host memory, the text encoder
    # between prompts) and caps its allocations at it.
    gpu_memory_gb: float | None = Field(default=None, gt=0)
    # Sequence-parallel ranks one worker drives (worker/ranks.py): cuda:0..N-1 over NCCL, or N CPU
    # processes over gloo with device cpu; the model's attention heads must divide by N.
    gpus: int = Field(default=1, ge=1)
    # How the ranks' q/k/v and attention outputs travel (models.parallel.SequenceParallel.exchange): "bf16"
    # as computed, or "int8" (codes + one fp32 scale per token and head: about half the bytes, for GPUs that
    # talk over PCIe). "auto": bf16, which needs no packing pass (on 2 H200s the 14B split took 0.548x one
    # GPU with bf16 against 0.565x with int8; 1.3B guided steps 0.785x against 0.889x).
    sp_exchange: Literal["auto", "bf16", "int8"] = "auto"
    # Replay each DiT forward as a CUDA graph, one per served size (models/cuda_graphs.py): the step's ~750
    # kernels go out in one launch instead of one Python call each. Applies on CUDA with one GPU and no
    # memory budget (gpu_memory_gb): the graph keeps the forward's activations reserved (~2.8 GiB at 1.3B
    # 480p). A size whose capture fails runs eagerly (logged).
    cuda_graphs: bool = True
    # How the VAE's fast path (CUDA) runs its residual blocks' 3×3×3 convs (models/vae.py, conv_impl):
    # "igemm" the 96- and 192-wide blocks (WanVAE.igemm_channels) as one Triton implicit GEMM each with the
    # norm / residual in its epilogue (sm90+; taps2d elsewhere), "taps2d" three cuDNN conv2d per conv,
    # "cudnn3d" cuDNN's conv3d. On an H200 the 480p decode took 0.604 s with igemm, 0.635 s with taps2d,
    # 720p 1.544 vs 1.658 s (kernels/NOTES_vae.md); taps2d is the fallback should the kernel misbehave.
    vae_conv: Literal["igemm", "taps2d", "cudnn3d"] = "igemm"
    # x264 threads (sliced: a frame's slices in parallel) of each job's MP4 encoder. Fixed, not "auto":
    # the bitstream depends on it (worker/encode.py). 8: on an H200 host (32 cores) the 480p noise tail
    # was 0.115 s vs 0.405 s at 4, 720p 0.172 vs 0.402 s; lower it on hosts with few cores per worker
    # (`python -m worker.encode --content noise --threads 4,8` compares them).
    encoder_threads: int = Field(default=8, ge=1, le=64)
    # "frame" (default, = worker.encode.DEFAULT_THREAD_TYPE): a frame per thread, up to `encoder_threads`
    # frames of delay; "slice": a frame's slices in parallel (no delay, but x264 allows one slice per 4
    # macroblock rows, 7 at 480p, so it stops scaling: on the H200 host the 480p noise tail was 0.28 s sliced
    # vs 0.11 s with frame threads). Compare with `python -m worker.encode --content noise --threads 8
    # --frame-threads`.
    encoder_thread_type: Literal["slice", "frame"] = "frame"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TURBOVID_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    dev_mode: bool = False
    redis: RedisSettings = RedisSettings()
    storage: StorageSettings = StorageSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitsSettings = LimitsSettings()
    queue: QueueSettings = QueueSettings()
    egress: EgressSettings = EgressSettings()
    webhooks: WebhookSettings = WebhookSettings()
    gateway: GatewaySettings = GatewaySettings()
    worker: WorkerSettings = WorkerSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.auth.enabled and not self.dev_mode:
            raise ValueError("TURBOVID_AUTH__ENABLED=false is allowed only in dev mode (TURBOVID_DEV_MODE=true)")
        if self.gateway.default_model not in self.gateway.models:
            raise ValueError(
                f"TURBOVID_GATEWAY__DEFAULT_MODEL {self.gateway.default_model!r} is not in TURBOVID_GATEWAY__MODELS "
                f"{self.gateway.models}"
            )
        if not self.dev_mode and self.webhooks.secret.get_secret_value() == DEV_WEBHOOK_SECRET:
            raise ValueError("TURBOVID_WEBHOOKS__SECRET is unset (the built-in development secret is refused "
                             "outside dev mode); set it, or TURBOVID_DEV_MODE=true for local use")
        if self.storage.backend == "s3" and not self.storage.s3_bucket:
            raise ValueError("TURBOVID_STORAGE__S3_BUCKET is required with TURBOVID_STORAGE__BACKEND=s3")
        unknown = [m for m in [*self.gateway.models, self.worker.model] if m not in MODELS]
        if unknown:
            raise ValueError(f"TURBOVID_GATEWAY__MODELS / TURBOVID_WORKER__MODEL: unknown model id {unknown[0]!r}; "
                             f"known: {', '.join(sorted(MODELS))}")
        card = MODELS[self.worker.model]
        for text in self.worker.warmup_sizes:
            width, height, frames = parse_warmup_size(text)
            if (width, height) not in card.sizes:
                raise ValueError(f"TURBOVID_WORKER__WARMUP_SIZES: {text!r} is not a size of {card.id}; "
                                 f"allowed: {', '.join(card.size_names)}")
            if frames is not None and ((frames - 1) % 4 or not 1 <= frames <= card.max_frames):
                raise ValueError(f"TURBOVID_WORKER__WARMUP_SIZES: {text!r}: frames must be 4k+1 up to "
                                 f"{card.max_frames}")
        # Relative paths are resolved once, here at the entry point, so that every process of a host
        # (started from different working directories) means the same folder.
        self.storage.local_dir = self.storage.local_dir.expanduser().resolve()
        self.worker.cache_dir = self.worker.cache_dir.expanduser().resolve()
        return self


_WARMUP_SIZE = re.compile(r"^\s*(\d+)x(\d+)(?:x(\d+))?\s*$")


def parse_warmup_size(text: str) -> tuple[int, int, int | None]:
    """ "832x480" -> (832, 480, None); "832x480x41" -> (832, 480, 41); ValueError otherwise."""
    m = _WARMUP_SIZE.match(text.lower())
    if m is None:
        raise ValueError(f"TURBOVID_WORKER__WARMUP_SIZES: {text!r} is not WIDTHxHEIGHT or WIDTHxHEIGHTxFRAMES")
    return int(m[1]), int(m[2]), int(m[3]) if m[3] else None


class ConfigError(ValueError):
    """A configuration problem, as one line that names the variable."""


def _describe(err: Mapping[str, Any]) -> str:
    """One error of a Settings ValidationError as `TURBOVID_GROUP__FIELD: message (got ...)`."""
    loc = [str(p) for p in err.get("loc", ())]
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:  # a cross-field check: its message names the variables
        return message
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {str(got)[:80]!r})"
    return f"TURBOVID_{'__'.join(loc[:2]).upper()}: {message}{shown}"


def load_settings(environ: Mapping[str, str] | None = None, *, worker_model: str | None = None) -> Settings:
    """Settings from the environment (and `.env`), or ConfigError: one line naming each bad variable.
    `worker_model` (a CLI flag) overrides `worker.model`. `environ` replaces the process environment
    for this call (tests: a whole environment in one argument)."""
    saved = None
    if environ is not None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(err) for err in exc.errors())) from None
    except SettingsError as exc:  # a variable that should hold JSON (a list, an object) does not parse
        raise ConfigError(f"{exc} (check the TURBOVID_* variables holding lists or objects: JSON)") from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)
    if worker_model is not None:
        if worker_model not in MODELS:
            raise ConfigError(f"--model: unknown model id {worker_model!r}; known: {', '.join(sorted(MODELS))}")
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"model": worker_model})})
    return settings


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """TURBOVID_* variables that name no setting (typos are otherwise silently ignored)."""
    out = []
    for name in sorted(environ):
        if not name.startswith("TURBOVID_"):
            continue
        parts = name.removeprefix("TURBOVID_").lower().split("__")
        model: Any = Settings
        for part in parts:
            fields = getattr(model, "model_fields", None)
            if fields is None or part not in fields:
                out.append(name)
                break
            model = fields[part].annotation
            model = model if isinstance(model, type) and issubclass(model, BaseModel) else None
    return out

"""Frames → MP4 (H.264, yuv420p, faststart) and a JPEG thumbnail, with PyAV and Pillow.

`Mp4Stream` is the worker's encoder: decoded frame chunks go in as the VAE finishes them and are
encoded on a thread of its own (PyAV releases the GIL while encoding) while the GPU goes on, so what is
left after the last chunk is that chunk plus the encoder's lookahead. `encode_mp4` is the same encoder
fed all frames at once: for the same frames both write the same bytes.

Input frames are `[n, H, W, 3]` uint8 RGB. yuv420p needs even sides, so an odd width/height is padded
by one edge pixel (replicated) rather than rescaled.

Rate control: x264 CRF (`DEFAULT_CRF`, preset veryfast): sizes follow the content (a smooth video is a
few hundred kB, noise is large).

The encode tail (what the worker waits for after the VAE's last chunk): x264 holds back the frames its
rate-control lookahead and B-frame decision still look at, and encodes them only once later frames (or
the close) come. `X264_PARAMS` / `X264_FRAME_PARAMS` keep that short: a 5-frame lookahead instead of
veryfast's 10 (same CRF; -2 % size, -0.1 dB PSNR on the bench's content), and the thread type stated
(sliced or frame threads, below) so that a PyAV change cannot alter it. The VAE
ends its decode on small chunks (`models.vae.chunk_plan`) for the same reason. `python -m worker.encode`
measures the tail (see `bench_tail`). Determinism: x264's output depends on its frame-thread count, and
"auto" threads are 1.5× the CPUs the process may run on (its affinity mask), so the same frames gave
different files on different machines, or after a library pinned the process to fewer cores. We fix
the thread count (`ENCODER_THREADS`). And x264 reads some heap memory it never wrote (its content then
comes from the process's earlier allocations): `deterministic_heap()` sets glibc's M_PERTURB so that
memory always holds the same byte. With both, the bytes depend on the frames and these settings only.
Threads: frame threads by default (`DEFAULT_THREAD_TYPE`, `worker.encoder_thread_type`): each thread a
frame, at up to `threads` frames of delay. Sliced threads (`"slice"`: a frame's slices in parallel, no
delay) stop scaling at x264's one slice per 4 macroblock rows (7 at 480p), so on noisy content their
throughput, not the delay, set the tail. Measured on the H200 host (16 cores, session 22, `python -m
worker.encode --content noise --decode-s 0.6 --threads 8,12,16 --frame-threads`): 480p noise tail 0.28-0.30
s sliced (8, 12 or 16 threads alike) vs 0.104-0.115 s with frame threads (2 % smaller files: slices
break prediction); with a decoder thread holding the GIL (`--busy`), 0.72 vs 0.32-0.39 s. Real-looking
content (`--content sample`, 8 threads): tail 0.037 s vs 0.028 s sliced, and a 22 % smaller file at the
same quality (97 vs 124 kB, PSNR 36.03 vs 35.98 dB); with `--busy` 0.168 vs 0.232 s. In the worker
(`turbovid bench`) the noise tail went from 0.12-0.15 s to 0.07-0.11 s.

Codec: `pick_codec("auto")` takes NVENC (`h264_nvenc`) when PyAV has it and a GPU can open it
(RTX-class nodes; H100/H200 have no NVENC), else libx264, and says why.
"""

from __future__ import annotations

import ctypes
import io
import logging
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from PIL import Image

log = logging.getLogger("turbovid.worker")

DEFAULT_CRF = 23  # x264 CRF (NVENC: constant-quality `cq`)
X264_PRESET = "veryfast"
ENCODER_THREADS = 8  # fixed, not "auto": the bitstream depends on it (see the module docstring)
X264_PARAMS = "rc-lookahead=5:sliced-threads=1"  # a short encode tail (see the module docstring)
# frame threads instead: each thread a frame (more throughput on noisy content, up to `threads` frames of
# delay); worker.encoder_thread_type = "frame"
X264_FRAME_PARAMS = "rc-lookahead=5:sliced-threads=0"
THREAD_TYPES = {"slice": X264_PARAMS, "frame": X264_FRAME_PARAMS}
DEFAULT_THREAD_TYPE = "frame"  # contract.settings' worker.encoder_thread_type default says the same
NVENC = "h264_nvenc"
X264 = "libx264"
M_PERTURB = -6  # glibc mallopt parameter (malloc.h)
HEAP_PERTURB_BYTE = 0x55


def deterministic_heap() -> bool:
    """Make x264's output a function of its input. Seen on a 16-core H200 host (FFmpeg/x264 as PyAV 18
    bundles them): CRF encodes of identical frames differed from run to run in one process, even with one
    x264 thread and with yuv420p fed directly (no swscale), whenever other work (a JPEG encode, torch) had
    used the heap before; with glibc's M_PERTURB (MALLOC_PERTURB_) set they were identical every time.
    So some memory x264 reads was never written by it, and its content came from earlier allocations.
    M_PERTURB fills each new allocation with a fixed byte (and freed memory with another): those reads,
    and the bitstream, become reproducible. Process-wide (a memset per malloc; large allocations come
    from mmap, zeroed, and are unaffected); idempotent. False where it could not be set (not glibc)."""
    try:
        return bool(ctypes.CDLL(None).mallopt(M_PERTURB, HEAP_PERTURB_BYTE))
    except (OSError, AttributeError):
        return False


def rgb_frame(rgb: np.ndarray) -> av.VideoFrame:
    """An rgb24 `av.VideoFrame` holding `rgb` [H, W, 3] uint8: the same frame as
    ``av.VideoFrame.from_ndarray(rgb, format="rgb24")``, filled by one NumPy copy into its plane instead of
    PyAV's row loop: 0.11 vs 0.45 ms at 832×480 on this project's CI CPU, and NumPy's copy runs without the
    GIL, which the encoder thread otherwise holds while the VAE's thread waits to launch its next kernels."""
    h, w, _ = rgb.shape
    frame = av.VideoFrame(w, h, "rgb24")
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(h, plane.line_size)  # line_size: row padding
    np.copyto(rows[:, : w * 3], rgb.reshape(h, w * 3))
    return frame


def _even(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def _check(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [F, H, W, 3] uint8, got {frames.shape} {frames.dtype}")


def pick_codec(prefer: str = "auto") -> tuple[str, str]:
    """(codec, reason): NVENC when asked for ("auto" or "h264_nvenc") and it opens here, else libx264."""
    if prefer == X264:
        return X264, "libx264 requested"
    if prefer not in ("auto", NVENC):
        raise ValueError(f"unknown video codec {prefer!r}; known: auto, {NVENC}, {X264}")
    if NVENC not in av.codecs_available:
        return X264, "this PyAV/FFmpeg build has no h264_nvenc"
    try:  # opening needs an NVIDIA GPU with NVENC and its driver library
        ctx = cast(av.VideoCodecContext, av.CodecContext.create(NVENC, "w"))
        ctx.width, ctx.height, ctx.pix_fmt = 64, 64, "yuv420p"
        ctx.time_base = Fraction(1, 16)
        ctx.open()
    except Exception as exc:  # PyAV raises FFmpeg errors of several types
        return X264, f"h264_nvenc does not open here ({type(exc).__name__}: {exc})"
    return NVENC, "h264_nvenc opens on this machine"


def _codec_options(codec: str, crf: int, preset: str, threads: int,
                   thread_type: str = DEFAULT_THREAD_TYPE) -> dict[str, str]:
    if thread_type not in THREAD_TYPES:
        raise ValueError(f"unknown thread_type {thread_type!r}; known: {sorted(THREAD_TYPES)}")
    if codec == NVENC:
        return {"preset": "p4", "rc": "vbr", "cq": str(crf), "b": "0"}
    return {"crf": str(crf), "preset": preset, "threads": str(threads), "x264-params": THREAD_TYPES[thread_type]}


class Mp4Stream:
    """An MP4 written from frame chunks on a thread of its own (`x264_params`: instead of `X264_PARAMS`).

        enc = Mp4Stream(path, width=832, height=480, fps=16, thumbnail_index=40)
        enc.write(chunk)        # [n, H, W, 3] uint8, in order; returns at once (the array is read later:
        ...                     # don't write into it again)
        size = enc.close()      # waits for the encoder; re-raises its error; bytes written
        enc.thumbnail           # JPEG of frame `thumbnail_index` (None if it never came)
        enc.abort()             # instead of close: stop and delete the file

    `movflags=+faststart` puts the moov atom first so players start before the whole file arrives.
    """

    def __init__(self, path: Path, *, width: int, height: int, fps: int, codec: str = X264,
                 crf: int = DEFAULT_CRF, preset: str = X264_PRESET, threads: int = ENCODER_THREADS,
                 thumbnail_index: int | None = None, x264_params: str | None = None,
                 thread_type: str = DEFAULT_THREAD_TYPE) -> None:
        if not deterministic_heap():
            log.warning("glibc M_PERTURB unavailable: x264 output may vary between runs for identical frames")
        self.path = Path(path)
        self.width, self.height = width + width % 2, height + height % 2
        self.fps, self.codec = fps, codec
        self.options: dict[str, object] = dict(_codec_options(codec, crf, preset, threads, thread_type))
        if x264_params is not None and codec == X264:  # the bench's "before" row; tests
            self.options["x264-params"] = x264_params
        self.thumbnail_index = thumbnail_index
        self.thumbnail: bytes | None = None
        self.frames = 0  # frames written (queued)
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue()
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"mp4-{self.path.name}", daemon=True)
        self._thread.start()

    def write(self, frames: np.ndarray) -> None:
        _check(frames)
        if self._closed:
            raise RuntimeError("write after close")
        if self._error is not None:
            raise RuntimeError(f"the encoder failed: {self._error}") from self._error
        if frames.shape[0]:
            self._queue.put(frames)
            self.frames += frames.shape[0]

    def close(self) -> int:
        """Flush and finish the file; returns its size in bytes."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.frames == 0:
            raise ValueError("no frames to encode")
        return self.path.stat().st_size

    def abort(self) -> None:
        """Stop without finishing (a cancelled or failed job) and remove the partial file."""
        self._abort.set()
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        index = 0
        try:
            with av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
                stream = cast(av.VideoStream, container.add_stream(self.codec, rate=Fraction(self.fps, 1)))
                stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
                stream.options = dict(self.options)
                while (chunk := self._queue.get()) is not None and not self._abort.is_set():
                    for j, frame in enumerate(_even(chunk)):
                        video_frame = rgb_frame(frame)
                        container.mux(stream.encode(video_frame))
                        if index == self.thumbnail_index:
                            self.thumbnail = encode_thumbnail(chunk[j : j + 1])
                        index += 1
                if not self._abort.is_set() and index:
                    container.mux(stream.encode())
        except BaseException as exc:  # handed to close()/write() on the caller's thread
            self._error = exc


def encode_mp4(frames: np.ndarray, path: Path, *, fps: int, codec: str = X264, crf: int = DEFAULT_CRF,
               preset: str = X264_PRESET, threads: int = ENCODER_THREADS) -> int:
    """Write `frames` [F, H, W, 3] uint8 RGB to `path` as H.264/yuv420p MP4 (`Mp4Stream` fed at once: same
    bytes as streaming the same frames); returns its size in bytes."""
    _check(frames)
    if frames.shape[0] == 0:
        raise ValueError("no frames to encode")
    _, h, w, _ = frames.shape
    enc = Mp4Stream(path, width=w, height=h, fps=fps, codec=codec, crf=crf, preset=preset, threads=threads)
    try:
        enc.write(frames)
        return enc.close()
    except BaseException:
        enc.abort()
        raise


def encode_thumbnail(frames: np.ndarray, *, quality: int = 85) -> bytes:
    """JPEG bytes of the middle frame of `frames` [F, H, W, 3] uint8."""
    return encode_jpeg(frames[frames.shape[0] // 2], quality=quality)


def encode_jpeg(image: np.ndarray, *, quality: int = 85, width: int | None = None) -> bytes:
    """[H, W, 3] uint8 RGB → JPEG bytes, resized (bilinear, aspect kept) to `width` when given."""
    img = Image.fromarray(np.ascontiguousarray(image))
    if width is not None and width != img.width:
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG/WebP bytes → [H, W, 3] uint8 RGB (alpha dropped, palette expanded)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


# bench: the encode tail ----------------------------------------------------------------------------------
def sample_video(frames: int, height: int, width: int, *, speed: int = 8) -> np.ndarray:
    """Real-looking content [F, H, W, 3] uint8 (benches, tests): a smooth colour field, a shape moving
    `speed` pixels a frame across it, some grain."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        img = np.stack([80 + 60 * np.sin(x / 37 + i / 9), 120 + 50 * np.cos(y / 23), 90 + 0.3 * x], axis=-1)
        img[(x - speed * i - 5 * speed) ** 2 + (y - height / 2) ** 2 < (height / 5) ** 2] = (230, 200, 40)
        out[i] = (img + rng.normal(0, 2, img.shape)).clip(0, 255).astype(np.uint8)
    return out


def noise_video(frames: int, height: int, width: int) -> np.ndarray:
    """Uniform random pixels [F, H, W, 3] uint8: x264's worst case (every macroblock expensive), about
    what a random-weight model's frames cost it."""
    return np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def stream_tail(frames: np.ndarray, chunks: list[int], path: Path, *, decode_s: float,
                x264_params: str | None = None, threads: int = ENCODER_THREADS,
                busy: bool = False, thread_type: str = "slice") -> tuple[float, int]:
    """Feed `frames` to an `Mp4Stream` in chunks of `chunks` latent frames (1 frame for the first latent
    frame, 4 per later one), each after `decode_s` × its share of the latent frames (a decoder working
    on it; `busy`: the decoder's thread runs Python, holding the GIL, instead of sleeping): (seconds
    from the last chunk to the closed MP4, its size in bytes)."""
    import time

    _, h, w, _ = frames.shape
    total = sum(chunks)
    enc = Mp4Stream(path, width=w, height=h, fps=16, x264_params=x264_params, threads=threads,
                    thread_type=thread_type)
    start, t0 = 0, 0.0
    for i, n in enumerate(chunks):
        if busy:
            end = time.perf_counter() + decode_s * n / total
            while time.perf_counter() < end:  # pure Python: the GIL is held but for the switch interval
                pass
        else:
            time.sleep(decode_s * n / total)
        count = 1 if i == 0 else 4 * n
        t0 = time.perf_counter()
        enc.write(frames[start : start + count])
        start += count
    size = enc.close()
    return time.perf_counter() - t0, size


def decode_chunk_plan(frames: int, height: int, width: int, *, taper: bool = True) -> list[int]:
    """Latent frames per decoded chunk of the full Wan2.1 VAE (bf16, fast path, its default budget) at
    this size: what `stream_tail` feeds to simulate the worker's decode."""
    import torch

    from models.vae import VAEConfig, WanVAE

    with torch.device("meta"):
        vae = WanVAE(VAEConfig.from_name("wan2.1")).to(torch.bfloat16)
    shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    return vae.decode_plan(shape, fused=True, taper=taper)[1]


def real_looking_tail(frames: int, height: int, width: int, decode_s: float, path: Path, *,
                      threads: int = ENCODER_THREADS, repeats: int = 3) -> float:
    """The worker's encode tail (median seconds over `repeats`) for `sample_video` content decoded in
    `decode_s`: what a job of real-looking frames would wait for after its decode (random-weight models
    produce noise, which x264 encodes ~3.5x slower)."""
    import statistics

    video = sample_video(frames, height, width)
    plan = decode_chunk_plan(frames, height, width)
    return statistics.median(stream_tail(video, plan, path, decode_s=decode_s, threads=threads)[0]
                             for _ in range(repeats))


def bench_tail() -> None:
    """The encode tail of the worker's streamed MP4, old vs new, in one run (CPU only, no GPU):

        python -m worker.encode --size 832x480 --frames 81 --decode-s 0.9 [--content noise] [--threads 4,8,12]

    Frames of `sample_video` are pushed as the VAE's `decode_iter` yields them: chunk plan from
    `WanVAE.decode_plan` (the full Wan2.1 VAE, bf16, fast path, its default 12 GiB budget) untapered
    ("old") or tapered, each chunk after its share of `--decode-s` seconds (the decode's time on the GPU:
    0.9 s on an H200 at 480p), with veryfast's own 10-frame lookahead ("old") or `X264_PARAMS`. Prints a
    row per variant (median tail over --repeats, size, PSNR of the decoded MP4), then one JSON line.
    `--content noise` feeds `noise_video` instead (what random weights give: x264's throughput, not its
    delay, then sets the tail); `--threads` adds a tapered/new-x264 row per encoder thread count (the
    worker's `worker.encoder_threads`; `--frame-threads`: frame-threaded rows too); `--busy` makes the
    simulated decode hold the GIL (a Python loop) instead of sleeping, which shows how long the encoder
    thread waits for the GIL (PyAV holds it for each frame's conversion and muxing; on 2 cores with one
    x264 thread the tail grew 0.14 -> 0.63 s)."""
    import argparse
    import json
    import statistics
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="832x480")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--decode-s", type=float, default=0.9, help="the VAE decode's seconds (simulated)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--content", choices=("sample", "noise"), default="sample")
    ap.add_argument("--threads", default="", help="encoder thread counts to compare, e.g. 4,8,12")
    ap.add_argument("--busy", action="store_true", help="the simulated decode holds the GIL instead of sleeping")
    ap.add_argument("--frame-threads", action="store_true", help="each --threads count with frame threads too")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    plans = {taper: decode_chunk_plan(args.frames, height, width, taper=taper) for taper in (False, True)}
    make = noise_video if args.content == "noise" else sample_video
    frames = make(args.frames, height, width)
    old_params = "sliced-threads=1"  # veryfast's own lookahead (10 frames)
    variants = [("old chunks, old x264", False, old_params, ENCODER_THREADS, "slice"),
                ("old chunks, new x264", False, None, ENCODER_THREADS, "slice"),
                ("tapered chunks, old x264", True, old_params, ENCODER_THREADS, "slice"),
                ("tapered chunks, new x264", True, None, ENCODER_THREADS, "slice")]
    counts = [int(n) for n in args.threads.split(",") if n]
    variants += [(f"tapered, new x264, {n} thr", True, None, n, "slice") for n in counts]
    if args.frame_threads:
        variants += [(f"tapered, frame threads, {n} thr", True, None, n, "frame") for n in counts]
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, taper, params, threads, kind in variants:
            path = Path(tmp) / "tail.mp4"
            runs = [stream_tail(frames, plans[taper], path, decode_s=args.decode_s, x264_params=params,
                                threads=threads, busy=args.busy, thread_type=kind) for _ in range(args.repeats)]
            with av.open(str(path)) as c:
                decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)
            psnr = 10 * np.log10(255**2 / float(((decoded - frames) ** 2).mean()))
            rows[name] = {"tail_s": round(statistics.median(t for t, _ in runs), 3), "bytes": runs[-1][1],
                          "psnr_db": round(float(psnr), 2), "chunks": plans[taper], "frames": len(decoded)}
            print(f"{name:26} tail {rows[name]['tail_s']:6.3f} s  {runs[-1][1]:8d} B  PSNR {psnr:5.2f} dB  "  # noqa: T201
                  f"latent chunks {plans[taper]}", flush=True)
    old, new = rows["old chunks, old x264"], rows["tapered chunks, new x264"]
    by_threads = {name: row["tail_s"] for name, row in rows.items() if "thr" in name}
    print(json.dumps({"size": args.size, "frames": args.frames, "decode_s": args.decode_s,  # noqa: T201
                      "content": args.content, "busy": args.busy, "tail_old_s": old["tail_s"], "tail_new_s": new["tail_s"],
                      "bytes_old": old["bytes"], "bytes_new": new["bytes"],
                      "psnr_old": old["psnr_db"], "psnr_new": new["psnr_db"], "tail_by_threads_s": by_threads}))


if __name__ == "__main__":
    bench_tail()

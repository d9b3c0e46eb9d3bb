"""Frames → MP4 (H.264, yuv420p, faststart) and a JPEG thumbnail, with PyAV and Pillow.

Input frames are `[F, H, W, 3]` uint8 RGB (what `pipeline.generate` returns). yuv420p needs even
sides, so an odd width/height is padded by one edge pixel (replicated) rather than rescaled.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def _even(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def encode_mp4(frames: np.ndarray, path: Path, *, fps: int, qp: int = 20, preset: str = "veryfast") -> int:
    """Write `frames` [F, H, W, 3] uint8 RGB to `path` as H.264/yuv420p MP4; returns its size in bytes.

    `movflags=+faststart` moves the moov atom to the front so players can start before the whole
    file is downloaded.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [F, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[0] == 0:
        raise ValueError("no frames to encode")
    frames = _even(frames)
    _, h, w, _ = frames.shape
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width = w
        stream.height = h
        stream.pix_fmt = "yuv420p"
        # Constant quantizer rather than CRF: x264's CRF rate control was seen to give different
        # bitstreams for identical frames in a process that had run torch before (floating-point
        # state), while fixed-QP encodes are bit-identical, so the same seed gives the same file.
        stream.options = {"qp": str(qp), "preset": preset}
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.stat().st_size


def encode_thumbnail(frames: np.ndarray, *, quality: int = 85) -> bytes:
    """JPEG bytes of the middle frame of `frames` [F, H, W, 3] uint8."""
    image = Image.fromarray(frames[frames.shape[0] // 2])
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG/WebP bytes → [H, W, 3] uint8 RGB (alpha dropped, palette expanded)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()

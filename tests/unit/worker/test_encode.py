from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from worker.encode import decode_image, encode_mp4, encode_thumbnail


def _frames(f: int, h: int, w: int) -> np.ndarray:
    # A horizontal ramp whose brightness grows per frame: survives lossy coding in its mean.
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, None, :, None]
    level = np.linspace(30, 220, f, dtype=np.float32)[:, None, None, None]
    out = np.broadcast_to(0.5 * ramp + 0.5 * level, (f, h, w, 3))
    return out.clip(0, 255).astype(np.uint8)


def test_mp4_is_h264_yuv420p_with_requested_frames_size_and_fps(tmp_path):
    frames = _frames(9, 64, 96)
    path = tmp_path / "out.mp4"
    size = encode_mp4(frames, path, fps=16)
    assert size == path.stat().st_size > 0
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 16
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        assert stream.codec_context.pix_fmt == "yuv420p"
    assert len(decoded) == 9
    assert decoded[0].shape == (64, 96, 3)
    means = [float(d.mean()) for d in decoded]
    assert means == sorted(means)  # brightness order survived
    assert abs(means[0] - frames[0].mean()) < 6


def test_mp4_faststart_puts_moov_before_mdat(tmp_path):
    path = tmp_path / "fs.mp4"
    encode_mp4(_frames(5, 32, 32), path, fps=16)
    data = path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = tmp_path / "odd.mp4"
    encode_mp4(_frames(5, 33, 47), path, fps=16)
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        assert (frame.height, frame.width) == (34, 48)


def test_bad_frames_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((5, 32, 32, 3), np.float32), tmp_path / "x.mp4", fps=16)
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((0, 32, 32, 3), np.uint8), tmp_path / "x.mp4", fps=16)


def test_thumbnail_is_the_middle_frame_as_jpeg():
    frames = _frames(9, 40, 60)
    data = encode_thumbnail(frames)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (60, 40)
    assert abs(np.asarray(image).mean() - frames[4].mean()) < 4


def test_decode_image_drops_alpha():
    buf = io.BytesIO()
    Image.new("RGBA", (10, 6), (10, 20, 30, 128)).save(buf, format="PNG")
    arr = decode_image(buf.getvalue())
    assert arr.shape == (6, 10, 3) and arr.dtype == np.uint8
    assert tuple(arr[0, 0]) == (10, 20, 30)

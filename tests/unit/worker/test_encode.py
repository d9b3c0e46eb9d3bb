from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest
from PIL import Image

from worker.encode import (
    DEFAULT_CRF,
    X264,
    X264_PRESET,
    Mp4Stream,
    _codec_options,
    decode_image,
    encode_mp4,
    encode_thumbnail,
    pick_codec,
    sample_video,
    stream_tail,
)


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


def _moving(f: int, h: int, w: int) -> np.ndarray:
    return sample_video(f, h, w, speed=4)


def test_streamed_chunks_give_the_same_bytes_as_the_one_shot_encoder(tmp_path):
    frames = _moving(17, 48, 80)
    one = tmp_path / "one.mp4"
    encode_mp4(frames, one, fps=16)
    enc = Mp4Stream(tmp_path / "streamed.mp4", width=80, height=48, fps=16, thumbnail_index=8)
    for start, n in ((0, 1), (1, 4), (5, 8), (13, 4)):  # decode-like chunks: 1 frame, then 4 per latent
        enc.write(frames[start : start + n])
    size = enc.close()
    assert size == one.stat().st_size
    assert (tmp_path / "streamed.mp4").read_bytes() == one.read_bytes()
    assert enc.thumbnail == encode_thumbnail(frames)  # the middle frame, taken as it passed


def test_crf_is_deterministic_across_processes_and_cpu_counts(tmp_path):
    # x264's "auto" thread count follows the CPUs the process may use and changes the bitstream; a fixed
    # count makes the bytes depend on the frames only: here vs. a fresh process pinned to one CPU.
    import subprocess
    import sys
    import textwrap

    frames = _moving(9, 48, 80)
    np.save(tmp_path / "frames.npy", frames)
    here = tmp_path / "here.mp4"
    encode_mp4(frames, here, fps=16)
    encode_mp4(frames, tmp_path / "again.mp4", fps=16)
    assert (tmp_path / "again.mp4").read_bytes() == here.read_bytes()
    script = textwrap.dedent(f"""
        import os, numpy as np
        os.sched_setaffinity(0, {{0}})
        from pathlib import Path
        from worker.encode import encode_mp4
        encode_mp4(np.load({str(tmp_path / "frames.npy")!r}), Path({str(tmp_path / "pinned.mp4")!r}), fps=16)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert (tmp_path / "pinned.mp4").read_bytes() == here.read_bytes()


def test_crf_gives_sensible_sizes_for_real_looking_content(tmp_path):
    # The old constant QP 20 spent bits whatever the content; CRF follows it: a smooth moving video is
    # smaller at a quality that still looks like the input (PSNR > 30 dB).
    frames = _moving(17, 240, 416)
    crf = tmp_path / "crf.mp4"
    encode_mp4(frames, crf, fps=16)
    qp = tmp_path / "qp.mp4"
    with av.open(str(qp), mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=16)
        s.width, s.height, s.pix_fmt = 416, 240, "yuv420p"
        s.options = {"qp": "20", "preset": "veryfast", "threads": "4"}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    assert crf.stat().st_size * 1.3 < qp.stat().st_size
    assert crf.stat().st_size < 17 * 416 * 240 * 3 / 50  # > 50x smaller than raw
    with av.open(str(crf)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)
    mse = float(((decoded - frames) ** 2).mean())
    assert 10 * np.log10(255**2 / mse) > 30  # PSNR in dB


def test_nvenc_falls_back_to_x264_where_it_does_not_open(tmp_path):
    codec, reason = pick_codec("auto")
    if codec == "h264_nvenc":
        pytest.skip("this machine has NVENC")
    assert codec == "libx264" and "h264_nvenc" in reason
    assert pick_codec("h264_nvenc")[0] == "libx264"
    assert pick_codec("libx264") == ("libx264", "libx264 requested")
    with pytest.raises(ValueError):
        pick_codec("vp9")
    path = tmp_path / "fallback.mp4"
    encode_mp4(_frames(5, 32, 32), path, fps=16, codec=codec)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"


def test_abort_removes_the_partial_file_and_errors_reach_the_caller(tmp_path):
    enc = Mp4Stream(tmp_path / "a.mp4", width=32, height=32, fps=16)
    enc.write(_frames(5, 32, 32))
    enc.abort()
    assert not (tmp_path / "a.mp4").exists()
    bad = Mp4Stream(tmp_path / "b.mp4", width=32, height=32, fps=16, codec="no-such-codec")
    with pytest.raises(Exception, match="no-such-codec"):  # from write() or close(): the thread failed
        bad.write(_frames(1, 32, 32))
        bad.close()
    with pytest.raises(ValueError):
        Mp4Stream(tmp_path / "c.mp4", width=32, height=32, fps=16).write(np.zeros((2, 32, 32), np.uint8))


def test_encode_tail_after_the_last_chunk_is_short(tmp_path):
    # What the worker waits for after the VAE's last chunk: that chunk plus x264's lookahead. Bounded
    # loosely here (shared CI CPUs); the measured numbers are in the report.
    import time

    frames = _moving(33, 240, 416)
    enc = Mp4Stream(tmp_path / "t.mp4", width=416, height=240, fps=16)
    enc.write(frames[:1])
    for start in range(1, 29, 4):
        enc.write(frames[start : start + 4])
        time.sleep(0.15)  # the GPU decoding the next chunk
    t0 = time.perf_counter()
    enc.write(frames[29:])
    enc.close()
    assert time.perf_counter() - t0 < 1.0


def _x264_delay(options: dict[str, str], frames: np.ndarray) -> int:
    """Frames x264 takes in before its first packet comes out: what it still holds when the input ends."""
    from fractions import Fraction

    ctx = av.CodecContext.create(X264, "w")
    ctx.width, ctx.height, ctx.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    ctx.time_base = Fraction(1, 16)
    ctx.options = options
    ctx.open()
    for i, f in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        if ctx.encode(frame):
            return i
    raise AssertionError("no packet before the flush")


def test_x264_holds_back_few_frames_at_the_same_crf():
    # The encode tail after the VAE's last chunk is that chunk plus what x264 still holds back (its
    # lookahead and B-frames, and with frame threads a frame per thread), encoded only at close: sliced,
    # ours holds 6 frames, veryfast's defaults 11; frame threads (the default) add the threads (13 at 4).
    frames = _moving(24, 48, 80)
    sliced = _codec_options(X264, DEFAULT_CRF, X264_PRESET, 4, "slice")
    assert _x264_delay(sliced, frames) <= 6
    veryfast = {k: v for k, v in sliced.items() if k != "x264-params"}
    assert _x264_delay(veryfast, frames) >= 10
    framed = _codec_options(X264, DEFAULT_CRF, X264_PRESET, 4)
    assert framed["x264-params"] == "rc-lookahead=5:sliced-threads=0"  # DEFAULT_THREAD_TYPE
    assert _x264_delay(framed, frames) <= 5 + 4 + 4


def test_streamed_mp4_has_every_frame_at_crf_23_and_the_short_lookahead(tmp_path):
    # Decoder-like chunks (1 frame, then the tapered 8, 8, 4) through the worker's encoder: a valid H.264
    # MP4 with every frame in order, CRF 23, the short lookahead, sliced threads (x264 uses 2 of the 4 at
    # 128 rows), the same bytes every time.
    frames = _moving(21, 128, 160)
    chunks = [1, 2, 2, 1]  # latent frames per chunk
    sizes = [stream_tail(frames, chunks, tmp_path / f"{i}.mp4", decode_s=0.0)[1] for i in range(2)]
    data = (tmp_path / "0.mp4").read_bytes()
    assert sizes[0] == sizes[1] and data == (tmp_path / "1.mp4").read_bytes()
    info = data[data.find(b"x264 - core") :][:2000]
    assert b"crf=23.0" in info and b"rc_lookahead=5" in info and b"sliced_threads=1" in info
    with av.open(str(tmp_path / "0.mp4")) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)
    assert decoded.shape == frames.shape
    per_frame = ((decoded - frames) ** 2).mean(axis=(1, 2, 3))
    assert (10 * np.log10(255**2 / per_frame)).min() > 30  # each frame is its own, in order


def test_the_tail_bench_feeds_noise_at_a_chosen_thread_count(tmp_path):
    # `python -m worker.encode --content noise --threads N`: random-weight-like frames (x264's worst case)
    # through the streamed encoder with N sliced (or frame) threads.
    from worker.encode import noise_video

    frames = noise_video(9, 256, 96)
    assert frames.dtype == np.uint8 and frames.shape == (9, 256, 96, 3) and frames.std() > 70  # uniform
    for threads, busy, kind in ((1, False, "slice"), (3, True, "slice"), (4, False, "frame")):
        t0 = time.perf_counter()  # busy: the simulated decode spins in Python
        tail, size = stream_tail(frames, [1, 1, 1], tmp_path / f"{threads}.mp4", decode_s=0.3 if busy else 0.0,
                                 threads=threads, busy=busy, thread_type=kind)
        assert time.perf_counter() - t0 >= (0.3 if busy else 0.0)
        data = (tmp_path / f"{threads}.mp4").read_bytes()
        assert tail >= 0 and size == len(data) > 9 * 256 * 96 // 4  # noise barely compresses
        options = data[data.find(b"x264 - core") :][:2000]
        assert f" threads={threads} ".encode() in options
        assert f" sliced_threads={int(kind == 'slice' and threads > 1)} ".encode() in options  # 1 thread: no slices
        with av.open(str(tmp_path / f"{threads}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 9
    # frame threads are deterministic too: the same frames, the same bytes
    stream_tail(frames, [1, 1, 1], tmp_path / "again.mp4", decode_s=0.0, threads=4, thread_type="frame")
    assert (tmp_path / "again.mp4").read_bytes() == (tmp_path / "4.mp4").read_bytes()
    with pytest.raises(ValueError, match="unknown thread_type"):
        stream_tail(frames, [1], tmp_path / "x.mp4", decode_s=0.0, thread_type="auto")


def test_the_real_looking_tail_follows_the_vaes_chunk_plan(tmp_path):
    # `turbovid bench` prints it beside the random-weight (noise) tail: sample_video content fed on the
    # Wan2.1 VAE's tapered chunk plan at the measured decode time.
    from worker.encode import decode_chunk_plan, real_looking_tail

    plan = decode_chunk_plan(81, 480, 832)
    assert sum(plan) == 21 and plan[0] == 1 and plan[-1] == 1  # every latent frame, tapered to 1 at the end
    assert sum(decode_chunk_plan(81, 480, 832, taper=False)) == 21
    t0 = time.perf_counter()
    tail = real_looking_tail(17, 64, 96, 0.2, tmp_path / "t.mp4", repeats=1)
    assert 0 <= tail < time.perf_counter() - t0 and (tmp_path / "t.mp4").stat().st_size > 0
    with av.open(str(tmp_path / "t.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 17


def test_the_workers_default_thread_type_is_the_encoders(tmp_path):
    # worker.encoder_thread_type's default (contract, which may not import the worker) is the encoder's own
    # default, frame threads: x264 writes it into the stream
    from contract.settings import WorkerSettings
    from worker.encode import DEFAULT_THREAD_TYPE

    assert WorkerSettings().encoder_thread_type == DEFAULT_THREAD_TYPE == "frame"
    enc = Mp4Stream(tmp_path / "d.mp4", width=80, height=48, fps=16)
    enc.write(_moving(9, 48, 80))
    enc.close()
    data = (tmp_path / "d.mp4").read_bytes()
    info = data[data.find(b"x264 - core") :][:2000]
    assert b"sliced_threads=0" in info and b"threads=8" in info


@pytest.mark.parametrize("size", [(48, 80), (31, 45), (480, 832)])
def test_rgb_frame_is_pyavs_frame_of_the_same_pixels(size):
    # the encoder's own frame builder (one NumPy copy, without the GIL) gives PyAV's from_ndarray frame,
    # also where PyAV pads each row (odd widths) and for strided input (a view into the decoded chunk)
    from worker.encode import rgb_frame

    h, w = size
    rgb = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ours, pyav = rgb_frame(rgb), av.VideoFrame.from_ndarray(rgb, format="rgb24")
    assert (ours.width, ours.height, ours.format.name) == (w, h, "rgb24")
    assert np.array_equal(ours.to_ndarray(), rgb) and np.array_equal(pyav.to_ndarray(), rgb)
    if h % 2 == 0 and w % 2 == 0:  # what x264 gets (the encoder pads odd sides first)
        yuv = ours.reformat(format="yuv420p").to_ndarray()
        assert np.array_equal(yuv, pyav.reformat(format="yuv420p").to_ndarray())
    wide = np.random.default_rng(1).integers(0, 256, (h, w + 7, 3), dtype=np.uint8)
    assert np.array_equal(rgb_frame(wide[:, 3 : 3 + w]).to_ndarray(), wide[:, 3 : 3 + w])

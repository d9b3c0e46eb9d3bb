"""`turbovid generate` with wan-tiny writes an MP4 a real decoder reads back; same seed, same frames."""

import subprocess
import sys

import av
import numpy as np
import pytest


def _generate(tmp_path, out, seed, *extra):
    cmd = [sys.executable, "-m", "cli.main", "generate", "--model", "wan-tiny", "--prompt", "a paper boat",
           "--out", str(out), "--frames", "9", "--size", "96x64", "--steps", "2", "--seed", str(seed),
           "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # one progress bar over every stage, to 100 %
    for stage in ("text_encode", "denoise step 2/2", "decode latent frame 3/3", "video_encode", "100%"):
        assert stage in proc.stderr, (stage, proc.stderr[-2000:])
    return proc.stdout


def _decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames)


@pytest.mark.slow
def test_generate_writes_a_decodable_video_deterministically(tmp_path):
    out = _generate(tmp_path, tmp_path / "a.mp4", 7)
    assert "vae_decode" in out and "denoise[1]" in out  # the stage-timing summary
    assert "video_encode" in out and "\ntotal " in out
    a = _decode(tmp_path / "a.mp4")
    assert a.shape == (9, 64, 96, 3)
    _generate(tmp_path, tmp_path / "b.mp4", 7)
    _generate(tmp_path, tmp_path / "c.mp4", 8)
    assert np.array_equal(a, _decode(tmp_path / "b.mp4"))
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()  # same seed, same file
    assert not np.array_equal(a, _decode(tmp_path / "c.mp4"))


@pytest.mark.slow
def test_generate_i2v_from_an_image(tmp_path):
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    _generate(tmp_path, tmp_path / "i.mp4", 1, "--image", str(tmp_path / "in.png"))
    assert _decode(tmp_path / "i.mp4").shape == (9, 64, 96, 3)


def test_convert_quantizes_and_records_it_in_the_manifest(tmp_path):
    from models.checkpoint_io import read_manifest, read_state_dict
    from models.tiny import ensure_tiny_checkpoints

    tiny = ensure_tiny_checkpoints(tmp_path / "tiny")
    src = tmp_path / "dit.pth"
    import torch

    torch.save(read_state_dict(tiny / "transformer"), src)  # a plain Wan-named .pth
    proc = subprocess.run([sys.executable, "-m", "cli.main", "convert", str(src), str(tmp_path / "q"),
                           "--quantize", "w8a8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = read_manifest(tmp_path / "q")
    assert manifest is not None and manifest.component == "transformer"
    assert manifest.quantization and manifest.quantization["method"] == "w8a8"
    sd = read_state_dict(tmp_path / "q")
    assert sd["blocks.0.ffn.0.int8_weight"].dtype == torch.int8

    bad = subprocess.run([sys.executable, "-m", "cli.main", "convert", str(tmp_path / "missing.pth"),
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error:" in bad.stderr and "missing.pth" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_generate_refuses_an_option_the_pipeline_would_not_honour(tmp_path):
    # Dense attention has no SLA top-k: the option is refused naming it, not silently dropped.
    cmd = [sys.executable, "-m", "cli.main", "generate", "--model", "wan-tiny", "--prompt", "a paper boat",
           "--out", str(tmp_path / "x.mp4"), "--frames", "5", "--size", "64x64", "--device", "cpu",
           "--cache-dir", str(tmp_path / "cache"), "--attention", "dense", "--sla-topk", "0.3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "sla_topk" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.mp4").exists()

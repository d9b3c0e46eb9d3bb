"""Content download (local Range streaming, S3 presigned redirect via moto's server) and the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from gateway_support import (
    KEY_A,
    KEY_B,
    UvicornThread,
    bearer,
    clean_redis,
    decode_frames,
    free_port,
    make_settings,
    png_bytes,
    tiny_mp4,
)

from contract.jobs import JobOutput, JobStatus
from contract.storage import S3Storage
from service.app import create_app
from service.deps import AppState

A = bearer(KEY_A)
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _s3_settings(tmp_path: Path, url: str, **extra: object):
    return make_settings(tmp_path, storage={
        "backend": "s3", "s3_endpoint_url": url, "s3_bucket": "tv-test", "s3_access_key_id": "testing",
        "s3_secret_access_key": "testing", "s3_addressing_style": "path", "multipart_threshold_mb": 5,
    }, **extra)


def _finish(state: AppState, video_id: str, tmp_path: Path) -> bytes:
    """Do what a worker does at the end of a job: upload the MP4 + thumbnail, mark completed."""
    record = state.engine.store.get(video_id)
    p = record.spec.params
    mp4 = tmp_path / "out.mp4"
    size = tiny_mp4(mp4, frames=p.num_frames, w=p.width, h=p.height)
    state.storage.put_file(mp4, record.spec.output_key, "video/mp4")
    state.storage.put_bytes(png_bytes(64, 64, "JPEG"), record.spec.output_key + ".jpg", "image/jpeg")
    out = JobOutput(key=record.spec.output_key, thumbnail_key=record.spec.output_key + ".jpg", bytes=size,
                    num_frames=p.num_frames, fps=16, width=p.width, height=p.height, seed=p.seed)
    state.engine.store.finish(video_id, JobStatus.completed, ttl_s=3600, output=out,
                              timings={"denoise": 0.5, "total": 1.0})
    return mp4.read_bytes()


def test_local_store_streams_with_range_support(tmp_path: Path) -> None:
    with clean_redis(), TestClient(create_app(make_settings(tmp_path))) as c:
        v = c.post("/v1/videos", json={"prompt": "x", "size": "64x64", "seconds": "0.5"}, headers=A).json()
        r = c.get(f"/v1/videos/{v['id']}/content", headers=A)
        assert r.status_code == 409 and r.json()["error"]["code"] == "video_not_ready"
        mp4 = _finish(c.app.state.turbovid, v["id"], tmp_path)
        got = c.get(f"/v1/videos/{v['id']}", headers=A).json()
        assert got["status"] == "completed" and got["progress"] == 100 and got["expires_at"] > got["created_at"]
        assert got["url"].endswith(f"/v1/videos/{v['id']}/content") and got["timings"]["total"] == 1.0
        full = c.get(f"/v1/videos/{v['id']}/content", headers=A)
        assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
        assert full.content == mp4 and decode_frames(full.content) == 9
        part = c.get(f"/v1/videos/{v['id']}/content", headers={**A, "Range": "bytes=10-99"})
        assert part.status_code == 206 and part.content == mp4[10:100]
        assert part.headers["content-range"] == f"bytes 10-99/{len(mp4)}"
        tail = c.get(f"/v1/videos/{v['id']}/content", headers={**A, "Range": "bytes=-16"})
        assert tail.status_code == 206 and tail.content == mp4[-16:]
        bad = c.get(f"/v1/videos/{v['id']}/content", headers={**A, "Range": f"bytes={len(mp4)}-"})
        assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(mp4)}"
        thumb = c.get(f"/v1/videos/{v['id']}/content", params={"variant": "thumbnail"}, headers=A)
        assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
        assert c.get(f"/v1/videos/{v['id']}/content", params={"variant": "spritesheet"}, headers=A).status_code == 400
        # deleting a finished video removes its files too
        assert c.delete(f"/v1/videos/{v['id']}", headers=A).status_code == 200
        assert not (tmp_path / "store" / "outputs" / f"{v['id']}.mp4").exists()


def test_s3_content_redirects_to_a_presigned_url_that_downloads(tmp_path: Path, moto_url: str) -> None:
    settings = _s3_settings(tmp_path, moto_url)
    storage = S3Storage(settings.storage)
    storage.ensure_bucket()
    with clean_redis(), TestClient(create_app(settings)) as c:
        # I2V input goes to the bucket under inputs/<id>.<ext>
        r = c.post("/v1/videos", data={"prompt": "x", "model": "wan-tiny-i2v", "size": "64x64", "seconds": "0.5"},
                   files={"input_reference": ("a.webp", png_bytes(64, 64, "WEBP"), "image/webp")}, headers=A)
        assert r.status_code == 201, r.text
        vid = r.json()["id"]
        assert storage.get_bytes(f"inputs/{vid}.webp") == png_bytes(64, 64, "WEBP")
        mp4 = _finish(c.app.state.turbovid, vid, tmp_path)
        r = c.get(f"/v1/videos/{vid}/content", headers=A, follow_redirects=False)
        assert r.status_code == 302
        url = r.headers["location"]
        assert url.startswith(moto_url) and "Signature" in url
        body = httpx.get(url).content  # a plain GET, no credentials: the signature grants access
        assert body == mp4 and decode_frames(body) == 9
        assert storage.open_range(f"outputs/{vid}.mp4", 4, 11).__next__() == mp4[4:12]


def test_s3_multipart_upload_above_threshold(tmp_path: Path, moto_url: str) -> None:
    storage = S3Storage(_s3_settings(tmp_path, moto_url).storage)
    storage.ensure_bucket()
    big = tmp_path / "big.bin"
    data = bytes(range(256)) * (6 * 4096 + 1)  # ~6 MiB > 5 MiB threshold
    big.write_bytes(data)
    assert storage.put_file(big, "outputs/big.bin", "application/octet-stream") == len(data)
    assert storage.size("outputs/big.bin") == len(data)
    assert storage.get_bytes("outputs/big.bin") == data
    storage.delete("outputs/big.bin")
    assert not storage.exists("outputs/big.bin")
    with pytest.raises(ValueError):
        storage.put_bytes(b"x", "../escape", "text/plain")


def test_openai_sdk_against_the_served_app(tmp_path: Path) -> None:
    with clean_redis(), UvicornThread(create_app(make_settings(tmp_path))) as srv:
        client = openai.OpenAI(api_key=KEY_A, base_url=srv.url + "/v1", max_retries=0)
        video = client.videos.create(prompt="a paper boat", model="wan-tiny", seconds="1", size="96x64")
        assert video.status == "queued" and video.size == "96x64" and video.seconds == "1"
        video2 = client.videos.create(prompt="a boat", model="wan-tiny-i2v", input_reference=("in.png",
                                      png_bytes(96, 64), "image/png"))
        assert video2.size == "96x64"
        got = client.videos.retrieve(video.id)
        assert got.id == video.id and got.model == "wan-tiny" and got.progress == 0
        page = client.videos.list(limit=1)
        assert [v.id for v in page.data] == [video2.id] and page.has_more
        assert [v.id for v in page.get_next_page().data] == [video.id]
        with pytest.raises(openai.NotFoundError):
            openai.OpenAI(api_key=KEY_B, base_url=srv.url + "/v1", max_retries=0).videos.retrieve(video.id)
        with pytest.raises(openai.BadRequestError) as err:
            client.videos.create(prompt="x", size="1280x720")
        assert "96x64" in str(err.value)
        mp4 = _finish(srv.server.config.app.state.turbovid, video.id, tmp_path)
        content = client.videos.download_content(video.id)
        assert content.read() == mp4
        deleted = client.videos.delete(video.id)
        assert deleted.deleted and deleted.id == video.id
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="nope", base_url=srv.url + "/v1", max_retries=0).videos.list()

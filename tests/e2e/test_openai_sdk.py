"""The official openai SDK's videos API against the dev stack."""

from __future__ import annotations

import io
import time

import av
import pytest
from openai import NotFoundError, OpenAI

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")]


def test_openai_sdk_create_retrieve_list_download_delete(dev_stack, tmp_path):
    client = OpenAI(base_url=f"{dev_stack.base_url}/v1", api_key="dev-no-auth", max_retries=0)
    video = client.videos.create(model="wan-tiny", prompt="a paper boat", size="64x64",  # type: ignore[arg-type]
                                 extra_body={"num_frames": 5})
    assert video.id.startswith("video_") and video.status in ("queued", "in_progress")

    deadline = time.monotonic() + 120
    while video.status not in ("completed", "failed"):
        assert time.monotonic() < deadline, video
        time.sleep(0.2)
        video = client.videos.retrieve(video.id)
    assert video.status == "completed", video.error
    assert video.progress == 100 and video.size == "64x64"

    listed = client.videos.list(limit=50)
    assert video.id in [v.id for v in listed.data]

    content = client.videos.download_content(video.id)
    path = tmp_path / "out.mp4"
    content.write_to_file(path)
    with av.open(io.BytesIO(path.read_bytes())) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (64, 64)

    deleted = client.videos.delete(video.id)
    assert deleted.id == video.id and deleted.deleted
    with pytest.raises(NotFoundError):
        client.videos.retrieve(video.id)

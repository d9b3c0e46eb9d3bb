"""The videos API over HTTP: create, retrieve, list, delete, download content (OpenAI-compatible).

HTTP only: request parsing (JSON or multipart), status codes, headers, Range streaming. The logic is
in `service/videos/serving.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from contract.events import preview_key
from contract.jobs import JobStatus
from contract.storage import ObjectNotFound
from service.auth import Principal
from service.deps import AppState, Auth, State
from service.errors import ApiError
from service.limits import JsonTooDeep, loads_json, max_request_bytes
from service.videos.protocol import CreateVideoBody, VideoDeleted, VideoList, VideoObject

router = APIRouter(tags=["videos"])


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON schema with its local `$defs` inlined (OpenAPI cannot resolve `#/$defs/...`)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return dict(walk(schema))


_CREATE_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_refs(CreateVideoBody.model_json_schema())},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        **{k: {"type": "string"} for k in CreateVideoBody.model_fields if k != "input_reference"},
                        "input_reference": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}


# 1. request parsing ------------------------------------------------------------------------------
def _json_field(key: str, value: str | bytes) -> Any:
    try:
        return loads_json(value.encode() if isinstance(value, str) else value)
    except JsonTooDeep as exc:
        raise ApiError(400, "invalid_json", f"{key}: {exc}", key) from exc
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{key} must be a JSON object", key) from exc


async def _read_body(request: Request, state: AppState) -> tuple[dict[str, Any], bytes | None]:
    """The create fields as a dict, plus uploaded `input_reference` bytes (multipart only). The body's
    size and read deadline are enforced as it streams in (`service.limits.RequestLimits`)."""
    limits = state.settings.limits
    max_body = max_request_bytes(state.settings)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype == "":
        raw = await request.body()
        try:
            data = loads_json(raw or b"null")
        except JsonTooDeep as exc:
            raise ApiError(400, "invalid_json", str(exc)) from exc
        except ValueError as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_request", "the body must be a JSON object")
        return data, None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=2, max_fields=64, max_part_size=max_body)
        fields: dict[str, Any] = {}
        upload: bytes | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "input_reference":
                    raise ApiError(400, "invalid_request", f"unexpected file field {key!r}", key)
                upload = await value.read(limits.max_upload_bytes + 1)
                if len(upload) > limits.max_upload_bytes:
                    raise ApiError(413, "image_too_large",
                                   f"the image is larger than {limits.max_upload_bytes} bytes", key)
                continue
            m = re.fullmatch(r"(\w+)\[(\w+)\]", key)  # input_reference[image_url], metadata[k]
            if m:
                fields.setdefault(m.group(1), {})[m.group(2)] = value
            elif key == "metadata" or key == "input_reference":
                fields[key] = _json_field(key, value)
            else:
                fields[key] = value
        return fields, upload
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


def _json(obj: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A response model as JSON, serialized by pydantic's own (Rust) encoder in one step."""
    return Response(obj.model_dump_json(), status, headers=headers, media_type="application/json")


# 2. create ---------------------------------------------------------------------------------------
def _poll_headers(state: AppState, obj: VideoObject) -> dict[str, str]:
    if obj.status in ("queued", "in_progress"):
        return {"openai-poll-after-ms": str(state.settings.gateway.poll_after_ms)}
    return {}


@router.post("/v1/videos", status_code=201, response_model=VideoObject, openapi_extra=_CREATE_SCHEMA)
async def create_video(
    request: Request,
    state: State,
    principal: Auth,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    """Queue a video job (T2V, or I2V with an image). JSON or multipart/form-data."""
    fields, upload = await _read_body(request, state)
    status, obj = await state.videos.create(principal, fields, upload, idempotency_key, str(request.base_url))
    return _json(obj, status, headers=_poll_headers(state, obj))


# 3. read / list / delete -------------------------------------------------------------------------
@router.get("/v1/videos/{video_id}", response_model=VideoObject)
async def retrieve_video(video_id: str, request: Request, state: State, principal: Auth) -> Response:
    obj = await state.videos.retrieve(principal, video_id, str(request.base_url))
    return _json(obj, headers=_poll_headers(state, obj))


@router.get("/v1/videos", response_model=VideoList)
async def list_videos(
    request: Request,
    state: State,
    principal: Auth,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    """This key's videos, newest first by default; pass the previous page's last_id as `after`."""
    return _json(await state.videos.list(principal, after, limit, order, str(request.base_url)))


@router.delete("/v1/videos/{video_id}", response_model=VideoDeleted)
async def delete_video(video_id: str, state: State, principal: Auth) -> VideoDeleted:
    """Cancel the job if it is queued or running, then delete it and its files."""
    return await run_in_threadpool(state.videos.delete, principal, video_id)


# 4. content --------------------------------------------------------------------------------------
def _preview(state: AppState, principal: Principal, video_id: str) -> Response:
    """The job's latest preview (a small JPEG the worker overwrites as denoising goes), never cached."""
    record = state.videos.owned(principal, video_id)
    try:
        data = state.storage.get_bytes(preview_key(record.spec.output_key))
    except ObjectNotFound as exc:
        running = record.status in (JobStatus.queued, JobStatus.in_progress)
        why = "has no preview yet" if running else f"is {record.status.value}: previews exist only while it runs"
        raise ApiError(409, "preview_not_ready", f"video {video_id!r} {why}", "variant",
                       headers={"openai-poll-after-ms": str(state.settings.gateway.poll_after_ms)}) from exc
    return Response(data, media_type="image/jpeg", headers={"cache-control": "no-store"})


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for a single `bytes=` range; None when unsatisfiable."""
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    start = int(m.group(1))
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return (start, end) if start <= end and start < size else None


@router.get("/v1/videos/{video_id}/content", response_model=None)
async def download_content(
    video_id: str,
    request: Request,
    state: State,
    principal: Auth,
    variant: Literal["video", "thumbnail", "preview"] = "video",
) -> Response:
    """The MP4 (or `variant=thumbnail` JPEG): 302 to a presigned URL on S3, streamed bytes locally.
    `variant=preview`: the latest preview JPEG of a running job (409 until the first one)."""
    if variant == "preview":
        return await run_in_threadpool(_preview, state, principal, video_id)
    key, ctype = await run_in_threadpool(state.videos.content_target, principal, video_id, variant)
    filename = f"{video_id}.{'jpg' if variant == 'thumbnail' else 'mp4'}"
    url = await run_in_threadpool(state.storage.presigned_url, key, filename=filename)
    if url is not None:
        return RedirectResponse(url, status_code=302)
    try:
        size = await run_in_threadpool(state.storage.size, key)
    except ObjectNotFound as exc:
        raise ApiError(404, "content_missing", f"the content of video {video_id!r} is gone") from exc
    headers = {"accept-ranges": "bytes", "content-disposition": f'inline; filename="{filename}"'}
    range_header = request.headers.get("range")
    if range_header is None:
        body: Iterator[bytes] = state.storage.open_range(key, 0, None)
        return StreamingResponse(body, media_type=ctype, headers={**headers, "content-length": str(size)})
    rng = _parse_range(range_header, size)
    if rng is None:
        raise ApiError(416, "range_not_satisfiable", f"cannot satisfy {range_header!r} for {size} bytes",
                       "Range", headers={"content-range": f"bytes */{size}"})
    start, end = rng
    body = state.storage.open_range(key, start, end)
    return StreamingResponse(body, status_code=206, media_type=ctype, headers={
        **headers, "content-range": f"bytes {start}-{end}/{size}", "content-length": str(end - start + 1)})

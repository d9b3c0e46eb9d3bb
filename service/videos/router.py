"""The OpenAI-compatible videos API: create, retrieve, list, delete, download content."""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from contract import catalog
from service import idempotency
from service.api_models import CreateVideoBody, VideoDeleted, VideoList, VideoObject, video_object
from service.auth import Principal
from contract.jobs import JobSpec, JobStatus
from service.deps import AppState, Auth, State
from service.errors import ApiError, not_found
from service.images import InputImage, decode_base64_image, fetch_image_url, validate_image
from contract.jobstore import JobRecord
from contract.netguard import UnsafeURL, check_url
from service.ratelimit import reserve_slot
from contract.storage import ObjectNotFound

router = APIRouter(tags=["videos"])
_UNION_TAGS = frozenset({"str", "float", "int", "ImageReference"})



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
async def _read_body(request: Request, state: AppState) -> tuple[dict[str, Any], bytes | None]:
    """The create fields as a dict, plus uploaded `input_reference` bytes (multipart only)."""
    limits = state.settings.limits
    max_body = limits.max_upload_bytes + 2 * 1024 * 1024
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise ApiError(413, "request_too_large", f"the request body is larger than {max_body} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype == "":
        raw = await request.body()
        if len(raw) > max_body:
            raise ApiError(413, "request_too_large", f"the request body is larger than {max_body} bytes")
        try:
            data = json.loads(raw or b"null")
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
                try:
                    fields[key] = json.loads(value)
                except ValueError as exc:
                    raise ApiError(400, "invalid_request", f"{key} must be a JSON object", key) from exc
            else:
                fields[key] = value
        return fields, upload
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


def _validate(fields: dict[str, Any]) -> CreateVideoBody:
    try:
        return CreateVideoBody.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        # drop pydantic's union-member tags ("seconds.str") so param names the field the client sent
        param = ".".join(str(p) for p in first["loc"] if p not in _UNION_TAGS) or None
        raise ApiError(400, "invalid_request", f"{param}: {first['msg']}", param) from exc


# 2. create ---------------------------------------------------------------------------------------
def _load_image(state: AppState, body: CreateVideoBody, upload: bytes | None) -> InputImage | None:
    limits = state.settings.limits
    sources = {
        "input_reference": upload is not None or (body.input_reference is not None
                                                  and body.input_reference.image_url is not None),
        "image": body.image is not None,
        "image_url": body.image_url is not None,
    }
    given = [k for k, v in sources.items() if v]
    if len(given) > 1:
        raise ApiError(400, "invalid_request", f"send one image source, not {', '.join(given)}", given[1])
    if body.input_reference is not None and body.input_reference.file_id is not None:
        raise ApiError(400, "invalid_request", "file_id references are not supported; upload the image",
                       "input_reference.file_id")
    allow_private = state.settings.webhooks.allow_private_targets
    timeout = state.settings.webhooks.timeout_s
    if upload is not None:
        return validate_image(upload, limits, "input_reference")
    if body.input_reference is not None and body.input_reference.image_url is not None:
        return fetch_image_url(body.input_reference.image_url, limits, allow_private=allow_private,
                               timeout_s=timeout, param="input_reference.image_url")
    if body.image is not None:
        return decode_base64_image(body.image, limits, "image")
    if body.image_url is not None:
        return fetch_image_url(body.image_url, limits, allow_private=allow_private, timeout_s=timeout,
                               param="image_url")
    return None


def _check_cheap(state: AppState, body: CreateVideoBody) -> catalog.ModelInfo:
    limits = state.settings.limits
    try:
        info = catalog.get_model(body.model or state.settings.gateway.default_model, state.settings.gateway.models)
    except catalog.CatalogError as exc:
        raise ApiError(400, "invalid_model", exc.message, exc.param) from exc
    if len(body.prompt) > limits.max_prompt_chars:
        raise ApiError(400, "prompt_too_long", f"prompt is longer than {limits.max_prompt_chars} characters",
                       "prompt")
    if body.negative_prompt is not None and len(body.negative_prompt) > limits.max_prompt_chars:
        raise ApiError(400, "prompt_too_long",
                       f"negative_prompt is longer than {limits.max_prompt_chars} characters", "negative_prompt")
    if body.metadata is not None and len(json.dumps(body.metadata)) > limits.max_metadata_bytes:
        raise ApiError(400, "metadata_too_large", f"metadata is larger than {limits.max_metadata_bytes} bytes",
                       "metadata")
    if body.num_steps > info.max_steps:
        raise ApiError(400, "invalid_request", f"num_steps must be 1-{info.max_steps}", "num_steps")
    if body.webhook_url is not None:
        try:
            check_url(body.webhook_url, allow_private=state.settings.webhooks.allow_private_targets)
        except UnsafeURL as exc:
            raise ApiError(400, "invalid_webhook_url", f"webhook_url refused: {exc}", "webhook_url") from exc
    # frames and (for T2V, or I2V with an explicit size) the size can be checked before any image work
    try:
        catalog.frames_for(info, body.seconds, body.num_frames)
        if body.size is not None or info.kind == "t2v":
            catalog.parse_size(info, body.size)
    except catalog.CatalogError as exc:
        raise ApiError(400, "invalid_request", exc.message, exc.param) from exc
    return info


def _create(state: AppState, principal: Principal, fields: dict[str, Any], upload: bytes | None,
            idem_key: str | None, base_url: str) -> tuple[int, VideoObject]:
    body = _validate(fields)
    info = _check_cheap(state, body)
    engine, settings = state.engine, state.settings
    job_id = f"video_{uuid.uuid4().hex}"
    if idem_key is not None:
        digest = idempotency.body_hash(body.model_dump(mode="json", exclude_none=True), upload)
        claim = idempotency.claim(state.redis, engine.store, principal.owner, idem_key, digest, job_id,
                                  ttl_s=settings.queue.result_ttl_s)
        if not claim.fresh:
            prior = engine.get(claim.job_id)
            if prior is None:
                raise ApiError(409, "idempotency_in_progress",
                               "a request with this Idempotency-Key is still being processed; retry shortly",
                               "Idempotency-Key", headers={"Retry-After": "1"})
            return 200, video_object(prior, queue_position=engine.queue_position(prior), base_url=base_url)
    try:
        return 201, _admit(state, principal, body, info, upload, job_id, base_url)
    except BaseException:
        if idem_key is not None:
            idempotency.release(state.redis, engine.store, principal.owner, idem_key)
        if engine.store.get(job_id) is None:  # free a reserved concurrency slot of a job never created
            state.redis.srem(engine.store.active_key(principal.owner), job_id)
        raise


def _admit(state: AppState, principal: Principal, body: CreateVideoBody, info: catalog.ModelInfo,
           upload: bytes | None, job_id: str, base_url: str) -> VideoObject:
    settings, engine = state.settings, state.engine
    if settings.auth.enabled:
        state.limiter.hit(principal.owner)
        reserve_slot(state.redis, engine.store.active_key(principal.owner), job_id,
                     settings.auth.max_concurrent_jobs, retry_after_s=max(1, settings.gateway.poll_after_ms // 1000) * 5)
    image = _load_image(state, body, upload)
    if info.kind == "i2v" and image is None:
        raise ApiError(400, "missing_image", f"{info.id} is image-to-video: send input_reference, image or "
                       "image_url", "input_reference")
    if info.kind == "t2v" and image is not None:
        raise ApiError(400, "invalid_request", f"{info.id} is text-to-video and takes no image", "input_reference")
    try:
        width, height = catalog.parse_size(info, body.size, (image.width, image.height) if image else None)
        num_frames = catalog.frames_for(info, body.seconds, body.num_frames)
    except catalog.CatalogError as exc:
        raise ApiError(400, "invalid_request", exc.message, exc.param) from exc
    image_key = None
    if image is not None:
        image_key = f"inputs/{job_id}.{image.ext}"
        state.storage.put_bytes(image.data, image_key, image.content_type)
    spec = JobSpec(
        job_id=job_id, owner=principal.owner, model=info.id, kind=info.kind, prompt=body.prompt,
        negative_prompt=body.negative_prompt, width=width, height=height, num_frames=num_frames,
        num_steps=body.num_steps, seed=body.seed if body.seed is not None else secrets.randbelow(2**32),
        sigma_max=body.sigma_max, sla_topk=body.sla_topk, image_key=image_key,
        output_key=f"outputs/{job_id}.mp4", created_at=time.time(),
    )
    record = engine.submit(spec, priority=body.priority, metadata=body.metadata, webhook_url=body.webhook_url)
    state.metrics.jobs_created.labels(info.id).inc()
    return video_object(record, queue_position=engine.queue_position(record), base_url=base_url)


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
) -> JSONResponse:
    """Queue a video job (T2V, or I2V with an image). JSON or multipart/form-data."""
    fields, upload = await _read_body(request, state)
    status, obj = await run_in_threadpool(
        _create, state, principal, fields, upload, idempotency_key, str(request.base_url)
    )
    return JSONResponse(obj.model_dump(mode="json"), status, headers=_poll_headers(state, obj))


# 3. read / list / delete -------------------------------------------------------------------------
def _owned(state: AppState, principal: Principal, video_id: str) -> JobRecord:
    record = state.engine.get(video_id)
    if record is None or record.spec.owner != principal.owner:
        raise not_found("video", video_id)  # others' jobs are indistinguishable from missing ones
    return record


def _retrieve(state: AppState, principal: Principal, video_id: str, base_url: str) -> VideoObject:
    record = _owned(state, principal, video_id)
    return video_object(record, queue_position=state.engine.queue_position(record), base_url=base_url)


@router.get("/v1/videos/{video_id}", response_model=VideoObject)
async def retrieve_video(video_id: str, request: Request, state: State, principal: Auth) -> JSONResponse:
    obj = await run_in_threadpool(_retrieve, state, principal, video_id, str(request.base_url))
    return JSONResponse(obj.model_dump(mode="json"), headers=_poll_headers(state, obj))


def _list(state: AppState, principal: Principal, after: str | None, limit: int, order: str,
          base_url: str) -> VideoList:
    ids = state.engine.store.list_ids(principal.owner, after=after, limit=limit + 1, order=order)
    has_more = len(ids) > limit
    data = []
    for vid in ids[:limit]:
        record = state.engine.get(vid)
        if record is not None:
            data.append(video_object(record, queue_position=state.engine.queue_position(record),
                                     base_url=base_url))
    return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=has_more)


@router.get("/v1/videos", response_model=VideoList)
async def list_videos(
    request: Request,
    state: State,
    principal: Auth,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> VideoList:
    """This key's videos, newest first by default; pass the previous page's last_id as `after`."""
    return await run_in_threadpool(_list, state, principal, after, limit, order, str(request.base_url))


def _delete(state: AppState, principal: Principal, video_id: str) -> VideoDeleted:
    record = _owned(state, principal, video_id)
    state.engine.delete(video_id)
    keys = [record.spec.image_key]
    if record.output is not None:
        keys += [record.output.key, record.output.thumbnail_key]
    for key in keys:
        if key:
            state.storage.delete(key)
    return VideoDeleted(id=video_id)


@router.delete("/v1/videos/{video_id}", response_model=VideoDeleted)
async def delete_video(video_id: str, state: State, principal: Auth) -> VideoDeleted:
    """Cancel the job if it is queued or running, then delete it and its files."""
    return await run_in_threadpool(_delete, state, principal, video_id)


# 4. content --------------------------------------------------------------------------------------
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


def _content_target(state: AppState, principal: Principal, video_id: str, variant: str) -> tuple[str, str]:
    record = _owned(state, principal, video_id)
    if record.status in (JobStatus.queued, JobStatus.in_progress):
        raise ApiError(409, "video_not_ready", f"video {video_id!r} is {record.status.value}; poll until "
                       "completed", headers={"openai-poll-after-ms": str(state.settings.gateway.poll_after_ms)})
    if record.status is not JobStatus.completed or record.output is None:
        raise ApiError(409, "video_failed", f"video {video_id!r} did not complete, it has no content")
    if variant == "thumbnail":
        if not record.output.thumbnail_key:
            raise ApiError(404, "not_found", f"video {video_id!r} has no thumbnail", "variant")
        return record.output.thumbnail_key, "image/jpeg"
    return record.output.key, record.output.content_type


@router.get("/v1/videos/{video_id}/content", response_model=None)
async def download_content(
    video_id: str,
    request: Request,
    state: State,
    principal: Auth,
    variant: Literal["video", "thumbnail"] = "video",
) -> Response:
    """The MP4 (or `variant=thumbnail` JPEG): 302 to a presigned URL on S3, streamed bytes locally."""
    key, ctype = await run_in_threadpool(_content_target, state, principal, video_id, variant)
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

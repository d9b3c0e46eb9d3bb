"""Admission and the logic of the videos API (the router only speaks HTTP).

Create, in order (cheap refusals first, nothing stored or counted before the knobs are accepted):
1. validate the body (`CreateVideoBody`: GenerationParams' own field definitions for the knobs);
2. resolve the model to its `ModelCard`, the size and frame count from `size`/`seconds`/`num_frames`,
   and build `GenerationParams`;
3. the Idempotency-Key claim (a replay returns the job it made, whatever the workers run now);
4. check the params against the `Capabilities` of the model's live workers (`GenerationParams.check`:
   every knob either changes the output or is refused with a 400 naming it);
5. per-minute rate, concurrency slot (`JobStore.reserve_slot`);
6. the I2V image (upload, base64, URL through the egress guard), stored in object storage; the I2V size
   adapts to the image's aspect when none was asked for;
7. `params.resolve(card, caps)` makes every default concrete; `JobSpec(params=resolved)` goes on the
   model's queue through the engine (`JobQueue.submit`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from contract import catalog
from contract.catalog import ModelCard
from contract.jobs import Capabilities, GenerationParams, JobSpec, JobStatus, ParamError
from contract.jobstore import JobRecord
from contract.netguard import UnsafeURL, check_url
from contract.settings import Settings
from contract.storage import Storage
from contract.workers import MixedWorkers
from service.auth import Principal
from service.egress import refusal
from service.engine import Engine
from service.errors import ApiError, not_found
from service.idempotency import body_hash
from service.images import ImageFetcher, InputImage
from service.metrics import GatewayMetrics
from service.videos.protocol import (
    CreateVideoBody,
    CreateVideoRequest,
    VideoDeleted,
    VideoList,
    VideoObject,
    video_object,
)

_UNION_TAGS = frozenset({"str", "float", "int", "ImageReference"})
# ParamErrors on these mean "out of range for this model"; on any other knob, "not honoured here".
_RANGE_PARAMS = frozenset({"num_steps", "num_frames", "kind"})


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    # drop pydantic's union-member tags ("seconds.str") so param names the field the client sent
    param = ".".join(str(p) for p in first["loc"] if p not in _UNION_TAGS) or None
    return ApiError(400, "invalid_request", f"{param}: {first['msg']}", param)


def param_error(exc: ParamError) -> ApiError:
    code = "invalid_request" if exc.param in _RANGE_PARAMS else "unsupported_param"
    return ApiError(400, code, exc.message, exc.param)


class VideoServing:
    def __init__(self, settings: Settings, engine: Engine, storage: Storage, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.metrics = metrics
        self.images = ImageFetcher(settings.limits, settings.egress)

    # create -------------------------------------------------------------------------------------
    async def create(self, principal: Principal, fields: dict[str, Any], upload: bytes | None,
                     idem_key: str | None, base_url: str) -> tuple[int, VideoObject]:
        """(HTTP status, video): 201 for a new job, 200 for an idempotent replay.

        The Redis-bound steps run on the request threadpool; the image is read between them on the event
        loop (`ImageFetcher`), so a slow image source holds no thread."""
        body = self._validate(fields)
        job_id = f"video_{uuid.uuid4().hex}"
        admitted = await run_in_threadpool(self._admit, principal, body, upload, idem_key, job_id, base_url)
        if isinstance(admitted, VideoObject):  # an idempotent replay
            return 200, admitted
        try:
            image = await self._load_image(body, upload)
            return 201, await run_in_threadpool(self._submit, principal, body, admitted, image, job_id, base_url)
        except BaseException:
            await run_in_threadpool(self._abandon, principal, idem_key, job_id)
            raise

    def _validate(self, fields: dict[str, Any]) -> CreateVideoRequest:
        try:
            body: CreateVideoRequest = CreateVideoBody.model_validate(fields)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        return body

    def _admit(self, principal: Principal, body: CreateVideoRequest, upload: bytes | None, idem_key: str | None,
               job_id: str, base_url: str) -> ModelCard | VideoObject:
        """Checks, the Idempotency-Key claim, the rate and the concurrency slot; the model's card, or the
        video of an idempotent replay."""
        card = self._check_request(body)
        params = self._params(card, body, image=None)
        engine, settings = self.engine, self.settings
        if idem_key is not None:
            digest = body_hash(body.model_dump(mode="json", exclude_none=True), upload)
            claim = engine.idempotency.claim(principal.owner, idem_key, digest, job_id,
                                             ttl_s=settings.queue.result_ttl_s)
            if not claim.fresh:
                prior = engine.get(claim.job_id)
                if prior is None:
                    raise ApiError(409, "idempotency_in_progress",
                                   "a request with this Idempotency-Key is still being processed; retry shortly",
                                   "Idempotency-Key", headers={"Retry-After": "1"})
                return video_object(prior, queue_position=engine.queue_position(prior), base_url=base_url)
        try:
            try:  # the knobs, against what the live workers run, before anything is counted or stored
                params.check(card, self._capabilities(card))
            except ParamError as exc:
                raise param_error(exc) from exc
            if settings.auth.enabled:
                engine.limiter.hit(principal.owner)
                limit = settings.auth.max_concurrent_jobs
                if not engine.reserve_slot(principal.owner, job_id, limit):
                    retry_after = max(1, settings.gateway.poll_after_ms // 1000) * 5
                    raise ApiError(429, "too_many_active_jobs",
                                   f"this key already has {limit} queued or running jobs (the limit); wait for "
                                   "one to finish", headers={"Retry-After": str(retry_after)})
        except BaseException:
            self._abandon(principal, idem_key, job_id)
            raise
        return card

    def _abandon(self, principal: Principal, idem_key: str | None, job_id: str) -> None:
        """Undo the claim and the slot of a create that did not make its job."""
        if idem_key is not None:
            self.engine.idempotency.release(principal.owner, idem_key, job_id)
        self.engine.release_slot(principal.owner, job_id)  # only if the job was never created

    def _check_request(self, body: CreateVideoRequest) -> ModelCard:
        """The model's card, after the checks that need no Redis and no image."""
        limits, gateway = self.settings.limits, self.settings.gateway
        try:
            card = catalog.served_card(gateway.default_model if body.model is None else body.model, gateway.models)
        except catalog.CatalogError as exc:
            raise ApiError(400, "invalid_model", exc.message, exc.param) from exc
        for name in ("prompt", "negative_prompt"):
            text = getattr(body, name)
            if text is not None and len(text) > limits.max_prompt_chars:
                raise ApiError(400, "prompt_too_long", f"{name} is longer than {limits.max_prompt_chars} characters",
                               name)
        if body.metadata is not None and len(json.dumps(body.metadata)) > limits.max_metadata_bytes:
            raise ApiError(400, "metadata_too_large", f"metadata is larger than {limits.max_metadata_bytes} bytes",
                           "metadata")
        if body.webhook_url is not None:
            try:
                check_url(body.webhook_url, allow_private=self.settings.egress.allow_private_targets)
            except UnsafeURL as exc:
                raise ApiError(400, "invalid_webhook_url", f"webhook_url refused: {refusal(exc)}",
                               "webhook_url") from exc
        return card

    def _params(self, card: ModelCard, body: CreateVideoRequest, image: InputImage | None) -> GenerationParams:
        """GenerationParams for the request: the knobs as sent, size/frames/kind resolved from the request.
        Before the image is read, an I2V model without an explicit size gets its default size."""
        try:
            width, height = catalog.parse_size(card, body.size, (image.width, image.height) if image else None)
            num_frames = catalog.frames_for(card, body.seconds, body.num_frames)
        except catalog.CatalogError as exc:
            raise ApiError(400, "invalid_request", exc.message, exc.param) from exc
        try:
            return GenerationParams(kind=card.kind, width=width, height=height, num_frames=num_frames,
                                    **body.knobs())
        except ValidationError as exc:
            raise validation_error(exc) from exc

    def _capabilities(self, card: ModelCard) -> Capabilities:
        try:
            caps, _ = self.engine.capabilities(card)
        except MixedWorkers as exc:
            raise ApiError(503, "model_unavailable", f"{card.id} cannot take jobs now: {exc}", None,
                           headers={"Retry-After": "30"}) from exc
        return caps

    def _submit(self, principal: Principal, body: CreateVideoRequest, card: ModelCard, image: InputImage | None,
                job_id: str, base_url: str) -> VideoObject:
        if card.kind != ("i2v" if image is not None else "t2v"):
            other = catalog.counterpart(card, "t2v" if card.kind == "i2v" else "i2v", self.settings.gateway.models)
            hint = f"; for {'text' if image is None else 'image'}-to-video use model {other.id!r}" if other else ""
            if card.kind == "i2v":
                raise ApiError(400, "missing_image", f"{card.id} is image-to-video: send input_reference, image or "
                               f"image_url{hint}", "input_reference")
            raise ApiError(400, "invalid_request", f"{card.id} is text-to-video and takes no image{hint}",
                           "input_reference")
        # read the capabilities again: workers may have come or gone while the image was read
        params = self._params(card, body, image)
        try:
            resolved = params.resolve(card, self._capabilities(card))
        except ParamError as exc:
            raise param_error(exc) from exc
        image_key = None
        if image is not None:
            image_key = f"inputs/{job_id}.{image.ext}"
            self.storage.put_bytes(image.data, image_key, image.content_type)
        spec = JobSpec(job_id=job_id, owner=principal.owner, model=card.id, params=resolved, image_key=image_key,
                       output_key=f"outputs/{job_id}.mp4", created_at=time.time())
        record = self.engine.submit(spec, priority=body.priority, metadata=body.metadata,
                                    webhook_url=body.webhook_url)
        self.metrics.jobs_created.labels(card.id).inc()
        return video_object(record, queue_position=self.engine.queue_position(record), base_url=base_url)

    async def _load_image(self, body: CreateVideoRequest, upload: bytes | None) -> InputImage | None:
        ref_url = body.input_reference.image_url if body.input_reference is not None else None
        sources = {
            "input_reference": upload is not None or ref_url is not None,
            "image": body.image is not None,
            "image_url": body.image_url is not None,
        }
        given = [k for k, v in sources.items() if v]
        if len(given) > 1:
            raise ApiError(400, "invalid_request", f"send one image source, not {', '.join(given)}", given[1])
        if body.input_reference is not None and body.input_reference.file_id is not None:
            raise ApiError(400, "invalid_request", "file_id references are not supported; upload the image",
                           "input_reference.file_id")
        if upload is not None:
            return await self.images.validate(upload, "input_reference")
        if ref_url is not None:
            return await self.images.fetch(ref_url, param="input_reference.image_url")
        if body.image is not None:
            return await self.images.decode_base64(body.image, "image")
        if body.image_url is not None:
            return await self.images.fetch(body.image_url, param="image_url")
        return None

    # read / list / delete -----------------------------------------------------------------------
    def owned(self, principal: Principal, video_id: str) -> JobRecord:
        record = self.engine.get(video_id)
        if record is None or record.spec.owner != principal.owner:
            raise not_found("video", video_id)  # others' jobs are indistinguishable from missing ones
        return record

    async def retrieve(self, principal: Principal, video_id: str, base_url: str) -> VideoObject:
        record, position = await self.engine.get_with_position(video_id)
        if record is None or record.spec.owner != principal.owner:
            raise not_found("video", video_id)  # others' jobs are indistinguishable from missing ones
        return video_object(record, queue_position=position, base_url=base_url)

    async def list(self, principal: Principal, after: str | None, limit: int, order: str,
                   base_url: str) -> VideoList:
        found = await self.engine.list_with_positions(principal.owner, after=after, limit=limit + 1, order=order)
        has_more = len(found) > limit
        data = [video_object(r, queue_position=p, base_url=base_url) for r, p in found[:limit]]
        return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                         has_more=has_more)

    def delete(self, principal: Principal, video_id: str) -> VideoDeleted:
        record = self.owned(principal, video_id)
        self.engine.delete(video_id)
        self.engine.idempotency.forget_job(principal.owner, video_id)
        keys = [record.spec.image_key]
        if record.output is not None:
            keys += [record.output.key, record.output.thumbnail_key]
        for key in keys:
            if key:
                self.storage.delete(key)
        return VideoDeleted(id=video_id)

    def content_target(self, principal: Principal, video_id: str, variant: str) -> tuple[str, str]:
        """(object key, content type) of a finished video's MP4 or thumbnail."""
        record = self.owned(principal, video_id)
        if record.status in (JobStatus.queued, JobStatus.in_progress):
            raise ApiError(409, "video_not_ready", f"video {video_id!r} is {record.status.value}; poll until "
                           "completed", headers={"openai-poll-after-ms": str(self.settings.gateway.poll_after_ms)})
        if record.status is not JobStatus.completed or record.output is None:
            raise ApiError(409, "video_failed", f"video {video_id!r} did not complete, it has no content")
        if variant == "thumbnail":
            if not record.output.thumbnail_key:
                raise ApiError(404, "not_found", f"video {video_id!r} has no thumbnail", "variant")
            return record.output.thumbnail_key, "image/jpeg"
        return record.output.key, record.output.content_type

"""I2V conditioning images: read from an upload, a data URL / base64 string, or an http(s) URL
(`ImageFetcher`: async, one overall deadline, off the request threadpool).

Checks, each a clear error: size (413 over `limits.max_upload_bytes`), type (415 unless PNG, JPEG
or WebP, detected from the bytes), dimensions (422 when a side is under `limits.min_image_side` or
the pixel count is over `limits.max_image_pixels`, or the image does not decode).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import logging
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from PIL import Image, UnidentifiedImageError

from contract.netguard import UnsafeURL
from contract.settings import EgressSettings, LimitsSettings
from service import egress
from service.errors import ApiError

log = logging.getLogger(__name__)
T = TypeVar("T")

_FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp")}


@dataclass(frozen=True)
class InputImage:
    data: bytes
    ext: str  # png | jpg | webp
    content_type: str
    width: int
    height: int


def _too_large(limits: LimitsSettings, param: str) -> ApiError:
    return ApiError(413, "image_too_large", f"the image is larger than {limits.max_upload_bytes} bytes", param)


def validate_image(data: bytes, limits: LimitsSettings, param: str) -> InputImage:
    if len(data) > limits.max_upload_bytes:
        raise _too_large(limits, param)
    if not data:
        raise ApiError(400, "invalid_image", "the image is empty", param)
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            if fmt not in _FORMATS:
                raise ApiError(415, "unsupported_image_type",
                               f"image type {fmt or 'unknown'} is not supported; use PNG, JPEG or WebP", param)
            w, h = im.size
            if w * h > limits.max_image_pixels:
                raise ApiError(422, "invalid_image_dimensions",
                               f"the image has {w}x{h} pixels, more than {limits.max_image_pixels}", param)
            if min(w, h) < limits.min_image_side:
                raise ApiError(422, "invalid_image_dimensions",
                               f"the image is {w}x{h}; each side must be at least {limits.min_image_side}", param)
            im.load()  # decode fully: truncated files fail here
    except Image.DecompressionBombError as exc:  # PIL's own bound, should limits allow more than it
        raise ApiError(422, "invalid_image_dimensions", f"the image has too many pixels: {exc}", param) from exc
    except UnidentifiedImageError as exc:
        raise ApiError(415, "unsupported_image_type",
                       "the data is not a recognised image; use PNG, JPEG or WebP", param) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        log.info("image does not decode: %s", exc)
        raise ApiError(422, "invalid_image", "the image cannot be decoded (truncated or corrupt)", param) from exc
    ext, ctype = _FORMATS[fmt]
    return InputImage(data=data, ext=ext, content_type=ctype, width=w, height=h)


def decode_base64_image(value: str, limits: LimitsSettings, param: str) -> InputImage:
    """`data:image/png;base64,...` or bare base64."""
    payload = value
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or ";base64" not in header:
            raise ApiError(400, "invalid_image", "data URLs must be base64 encoded", param)
    if len(payload) > limits.max_upload_bytes * 4 // 3 + 8:
        raise _too_large(limits, param)
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_image", "the image is not valid base64", param) from exc
    return validate_image(data, limits, param)


class ImageFetcher:
    """Reads the I2V image of a create without taking the request threadpool.

    `image_url` fetches run on the event loop (httpx.AsyncClient) under one overall deadline
    (`egress.timeout_s` for resolving, connecting and the whole body, not per read) and the size cap, so
    any number of slow or dripping sources delays only their own creates. Name resolution (blocking
    getaddrinfo through the egress guard) and image decoding (PIL, CPU) run on small thread pools of their
    own. The fetch connects to the address the guard checked (`service.egress.pin`).
    """

    def __init__(self, limits: LimitsSettings, egress: EgressSettings, *, resolvers: int = 4,
                 decoders: int = 2) -> None:
        self.limits = limits
        self.egress = egress
        self._ssl = ssl.create_default_context()  # once: building one per fetch costs ~10 ms of CPU
        self._resolve_pool = ThreadPoolExecutor(resolvers, thread_name_prefix="image-resolve")
        self._decode_pool = ThreadPoolExecutor(decoders, thread_name_prefix="image-decode")

    def close(self) -> None:
        self._resolve_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    async def validate(self, data: bytes, param: str) -> InputImage:
        return await self._off_loop(self._decode_pool, validate_image, data, self.limits, param)

    async def decode_base64(self, value: str, param: str) -> InputImage:
        return await self._off_loop(self._decode_pool, decode_base64_image, value, self.limits, param)

    async def fetch(self, url: str, *, param: str) -> InputImage:
        """GET an http(s) image URL through the egress guard (no redirects), or decode a data URL."""
        if url.startswith("data:"):
            return await self.decode_base64(url, param)
        limit = self.limits.max_upload_bytes
        buf = bytearray()
        try:
            async with asyncio.timeout(self.egress.timeout_s):
                target = await self._off_loop(self._resolve_pool, egress.pin, url, self.egress)
                async with httpx.AsyncClient(timeout=self.egress.timeout_s, follow_redirects=False,
                                             verify=self._ssl) as client, \
                        egress.stream_get(client, target) as resp:
                    if resp.status_code != 200:
                        raise ApiError(400, "image_fetch_failed",
                                       f"fetching image_url returned HTTP {resp.status_code}", param)
                    length = resp.headers.get("content-length", "")
                    if length.isdigit() and int(length) > limit:
                        raise _too_large(self.limits, param)
                    async for chunk in resp.aiter_bytes():
                        buf.extend(chunk)
                        if len(buf) > limit:
                            raise _too_large(self.limits, param)
        except TimeoutError as exc:
            raise ApiError(400, "image_fetch_timeout",
                           f"fetching image_url took longer than {self.egress.timeout_s:g} s", param) from exc
        except UnsafeURL as exc:
            log.info("image_url refused by the egress guard: %s", exc)
            raise ApiError(400, "invalid_image_url", f"image_url refused: {egress.refusal(exc)}", param) from exc
        except httpx.HTTPError as exc:
            log.info("image_url fetch failed: %s: %s", type(exc).__name__, exc)
            raise ApiError(400, "image_fetch_failed", f"fetching image_url failed ({_describe(exc)})",
                           param) from exc
        return await self.validate(bytes(buf), param)


def _describe(exc: httpx.HTTPError) -> str:
    """What went wrong, without addresses or server details."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server's response is not valid HTTP"
    return type(exc).__name__

"""I2V conditioning images: read from an upload, a data URL / base64 string, or an http(s) URL.

Checks, each a clear error: size (413 over `limits.max_upload_bytes`), type (415 unless PNG, JPEG
or WebP, detected from the bytes), dimensions (422 when a side is under `limits.min_image_side` or
the pixel count is over `limits.max_image_pixels`, or the image does not decode).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import httpx
from PIL import Image, UnidentifiedImageError

from contract.netguard import UnsafeURL
from contract.settings import EgressSettings, LimitsSettings
from service.egress import stream_get as egress_stream_get
from service.errors import ApiError

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
        raise ApiError(422, "invalid_image", f"the image cannot be decoded: {exc}", param) from exc
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


def fetch_image_url(url: str, limits: LimitsSettings, egress: EgressSettings, *, param: str) -> InputImage:
    """GET an http(s) image URL through the egress guard (no redirects), or decode a data URL."""
    if url.startswith("data:"):
        return decode_base64_image(url, limits, param)
    buf = bytearray()
    try:
        with egress_stream_get(url, egress) as resp:
            if resp.status_code != 200:
                raise ApiError(400, "image_fetch_failed", f"fetching image_url returned HTTP {resp.status_code}",
                               param)
            for chunk in resp.iter_bytes():
                buf.extend(chunk)
                if len(buf) > limits.max_upload_bytes:
                    raise _too_large(limits, param)
    except UnsafeURL as exc:
        raise ApiError(400, "invalid_image_url", f"image_url refused: {exc}", param) from exc
    except httpx.HTTPError as exc:
        raise ApiError(400, "image_fetch_failed", f"fetching image_url failed: {exc}", param) from exc
    return validate_image(bytes(buf), limits, param)

"""The API's OpenAPI document and `/docs`, offline.

`/docs` is Swagger UI from the `swagger-ui-bundle-v2` package (served at `/docs/assets/`, no CDN), with
an Authorize button for the Bearer API key. The document FastAPI derives from the routes is corrected
to say what the API does:

- every `/v1` operation takes `Authorization: Bearer <key>` (the `bearerAuth` scheme; with auth off,
  as in the dev stack, no key is needed);
- errors are `{"error": {"code", "message", "param"}}` (`ErrorResponse`), documented per operation
  with the statuses it can answer (`ERRORS`); bad input is a 400, never FastAPI's 422 (the one 422 is
  an I2V image that cannot be used);
- `/content` answers video/mp4 or image/jpeg bytes, 206 for a Range, or a 302 to a presigned URL;
  `/events` answers text/event-stream.

`docs/openapi.json` is this document, committed; `python scripts/export_openapi.py` rewrites it and
`--check` (what the test does) fails when it differs from the app's.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/docs/assets"

ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "param"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. invalid_request, not_found"},
                "message": {"type": "string", "description": "what went wrong, for a human"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}],
                          "description": "the request field (or header) at fault, when there is one"},
            },
        }
    },
    "example": {"error": {"code": "invalid_request", "message": "num_steps: Input should be less than or "
                          "equal to 4", "param": "num_steps"}},
}

_WHY: dict[int, str] = {
    400: "Invalid request: a field is malformed, out of range or not honoured by this model (`param` names it)",
    401: "Missing or invalid API key (`Authorization: Bearer <key>`)",
    404: "No such resource for this API key",
    408: "The request body did not arrive in time",
    409: "Conflict with the job's state",
    413: "The request body or the image is too large",
    415: "Unsupported Content-Type (send application/json or multipart/form-data)",
    416: "The Range cannot be satisfied",
    422: "The image cannot be decoded, or its dimensions are out of range (`invalid_image`, "
         "`invalid_image_dimensions`)",
    429: "Rate limit or concurrent-job limit reached (see Retry-After)",
    503: "The job store, object storage or the model's workers are unavailable (see Retry-After)",
}

# (method, path) -> the error statuses the operation answers (409 descriptions: _CONFLICTS).
ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/videos"): (400, 401, 408, 409, 413, 415, 422, 429, 503),
    ("get", "/v1/videos"): (400, 401, 503),
    ("get", "/v1/videos/{video_id}"): (401, 404, 503),
    ("delete", "/v1/videos/{video_id}"): (401, 404, 503),
    ("get", "/v1/videos/{video_id}/content"): (400, 401, 404, 409, 416, 503),
    ("get", "/v1/videos/{video_id}/events"): (400, 401, 404, 503),
    ("get", "/v1/models"): (401, 503),
    ("get", "/v1/models/{model_id}"): (401, 404, 503),
}
_CONFLICTS = {
    ("post", "/v1/videos"): "This Idempotency-Key is still being processed (`idempotency_in_progress`, retry "
    "shortly) or was used with another body (`idempotency_key_reused`)",
    ("get", "/v1/videos/{video_id}/content"): "The video is not ready (`video_not_ready`, poll until completed), "
    "did not complete (`video_failed`), or has no preview yet (`preview_not_ready`)",
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _error_response(status: int, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def _content_responses(op: dict[str, Any]) -> None:
    """`/content`: bytes (or a redirect), not JSON."""
    responses = op["responses"]
    responses["200"] = {"description": "The MP4 (`variant=video`) or a JPEG (`thumbnail`, `preview`), streamed "
                                       "from local storage",
                        "content": {"video/mp4": _BINARY, "image/jpeg": _BINARY}}
    responses["206"] = {"description": "The requested byte range (`Range: bytes=...`)",
                        "content": {"video/mp4": _BINARY, "image/jpeg": _BINARY}}
    responses["302"] = {"description": "Redirect to a short-lived presigned URL (S3 storage)",
                        "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}}}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the corrections described in the module docstring."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["ErrorResponse"] = ERROR_SCHEMA
    components["securitySchemes"] = {"bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "An API key from `turbovid keys create NAME` (not needed when auth is off, as in "
                       "`turbovid serve --dev`)"}}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            had_validation = responses.pop("422", None) is not None
            statuses = ERRORS.get((method, path), (400,) if had_validation else ())
            for status in statuses:
                why = _CONFLICTS.get((method, path), _WHY[status]) if status == 409 else _WHY[status]
                responses[str(status)] = _error_response(status, why)
            if path.startswith("/v1/"):
                op["security"] = [{"bearerAuth": []}]
            if path == "/v1/videos/{video_id}/content":
                _content_responses(op)
            if path == "/v1/videos/{video_id}/events":
                responses["200"]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
            if path in ("/readyz", "/healthz/models"):
                responses["503"] = {"description": "Not ready (Redis down) / a served model has no ready worker",
                                    "content": responses["200"]["content"]}
            if (method, path) == ("post", "/v1/videos"):
                responses["200"] = {"description": "An idempotent replay: the job this Idempotency-Key made",
                                    "content": responses["201"]["content"]}
    return doc


def openapi_json(app: FastAPI) -> str:
    """The document as committed in docs/openapi.json (sorted keys, 2-space indent, final newline)."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def install(app: FastAPI) -> None:
    """Serve `/openapi.json` (corrected) and `/docs` (Swagger UI from local assets). Build the app with
    `docs_url=None, redoc_url=None` so FastAPI adds no CDN-backed pages of its own."""
    from swagger_ui_bundle import swagger_ui_path  # the swagger-ui-bundle-v2 package (service extra)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True, "tryItOutEnabled": True},
        )

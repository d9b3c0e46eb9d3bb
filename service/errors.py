"""Every error leaves the gateway as JSON `{"error": {"code", "message", "param"}}` with the right status.

Bad input is a 4xx naming the offending parameter; FastAPI's validation errors become 400 with the
first failing field as `param`. Limits (`service/limits.py`) are 413 (body size) and 408 (body read
deadline); a client that disconnects mid-request is logged as a 499 (not an error, not a 5xx).
Messages never carry server paths, object keys or internal addresses: those go to the log. Anything unexpected is a 500 with a generic message (logged with
its traceback), never a stack trace in the response.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from contract.storage import StorageError
from service.limits import BodyTimeout, BodyTooLarge

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


def error_body(code: str, message: str, param: str | None = None) -> dict[str, dict[str, str | None]]:
    return {"error": {"code": code, "message": message, "param": param}}


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} {ident!r} not found", None)


def _validation_param(loc: tuple[int | str, ...]) -> str | None:
    # loc is e.g. ("body", "num_steps") or ("query", "limit"); drop the location kind.
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path", "header") else [
        str(p) for p in loc
    ]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.param), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _validation_param(tuple(first.get("loc", ())))
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(error_body("invalid_request", message, param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(error_body("request_too_large", str(exc)), 413, headers={"connection": "close"})

    @app.exception_handler(BodyTimeout)
    async def _body_timeout(request: Request, exc: BodyTimeout) -> JSONResponse:
        return JSONResponse(error_body("request_timeout", str(exc)), 408, headers={"connection": "close"})

    @app.exception_handler(ClientDisconnect)
    async def _disconnected(request: Request, exc: ClientDisconnect) -> Response:
        # nginx's 499: the client went away before its request was read; not a server error
        log.info("499 client disconnected mid-request: %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        log.error("object storage error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(error_body("storage_unavailable", "object storage is unavailable, retry later"),
                            503, headers={"Retry-After": "5"})

    @app.exception_handler(redis.RedisError)
    async def _redis(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.error("redis error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(error_body("queue_unavailable", "the job store is unavailable, retry later"),
                            503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal server error"), 500)

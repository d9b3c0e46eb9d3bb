"""The gateway app: `create_app(settings)` wires the engine (Redis), storage, auth and metrics.

Run it with `turbovid gateway` or any ASGI server. All job state is in Redis, so gateways are
stateless and can be restarted or scaled freely.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from contract.settings import Settings
from contract.storage import S3Storage, make_storage
from service import errors, health_router, models_router, openapi, playground
from service.deps import AppState
from service.engine import Engine
from service.http_metrics import HttpMetrics
from service.limits import LimitsConfig, RequestLimits, max_request_bytes
from service.metrics import GatewayMetrics
from service.videos import events as events_router
from service.videos import router as videos_router
from service.videos.serving import VideoServing

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    engine = Engine.from_settings(settings)
    storage = make_storage(settings.storage)
    gateway_metrics = GatewayMetrics(engine, settings.gateway.models)
    state = AppState(
        settings=settings,
        engine=engine,
        storage=storage,
        metrics=gateway_metrics,
        videos=VideoServing(settings, engine, storage, gateway_metrics),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for name, sha in settings.auth.bootstrap_keys.items():
            engine.api_keys.add_hash(name, sha)
        if settings.dev_mode and isinstance(storage, S3Storage):
            storage.ensure_bucket()
        log.info("gateway up: models=%s auth=%s storage=%s", settings.gateway.models, settings.auth.enabled,
                 settings.storage.backend)
        yield
        state.videos.images.close()
        await engine.aclose()
        engine.close()

    app = FastAPI(
        title="TurboVid",
        version="0.1.0",
        description="OpenAI-compatible video generation API for Wan models (rCM, SageSLA, W8A8).",
        lifespan=lifespan,
        docs_url=None,  # /docs from local assets (service/openapi.py), no CDN
        redoc_url=None,
    )
    app.state.turbovid = state
    errors.install(app)
    # inside the metrics middleware (so that its refusals are counted by status) and outside the routes:
    # header count, streamed body size and body read deadline, before anything buffers a body
    app.add_middleware(RequestLimits, config=LimitsConfig(max_body_bytes=max_request_bytes(settings)))
    app.add_middleware(HttpMetrics, metrics=gateway_metrics)
    app.include_router(videos_router.router)
    app.include_router(models_router.router)
    app.include_router(health_router.router)
    app.include_router(events_router.router)
    playground.install(app)  # / and /playground
    openapi.install(app)  # /docs offline, the corrected /openapi.json
    return app


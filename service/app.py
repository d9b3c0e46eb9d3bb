"""The gateway app: `create_app(settings)` wires Redis, the engine client, storage, auth and metrics.

Run it with `turbovid gateway` (service/cli.py `run_gateway`) or any ASGI server via
`uvicorn --factory service.app:create_app`. All job state is in Redis, so gateways are stateless
and can be restarted or scaled freely.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from service import errors, metrics
from service.auth import KeyStore
from service.deps import AppState
from service.metrics import GatewayMetrics
from service.queue import EngineClient
from service.ratelimit import RateLimiter
from service.routers import health, models, videos
from contract.settings import Settings
from contract.storage import S3Storage, make_storage

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()  # entry point: read the env once
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=5, socket_connect_timeout=5,
                                  health_check_interval=30)
    prefix = settings.redis.key_prefix
    engine = EngineClient(client, prefix, settings.queue)
    state = AppState(
        settings=settings,
        redis=client,
        engine=engine,
        storage=make_storage(settings.storage),
        keys=KeyStore(client, prefix),
        limiter=RateLimiter(client, prefix, settings.auth.rate_limit_per_minute),
        metrics=GatewayMetrics(engine, settings.gateway.models),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for name, sha in settings.auth.bootstrap_keys.items():
            state.keys.add_hash(name, sha)
        if settings.dev_mode and isinstance(state.storage, S3Storage):
            state.storage.ensure_bucket()
        log.info("gateway up: models=%s auth=%s storage=%s", settings.gateway.models, settings.auth.enabled,
                 settings.storage.backend)
        yield
        client.close()

    app = FastAPI(
        title="TurboVid",
        version="0.1.0",
        description="OpenAI-compatible video generation API for Wan models (rCM, SageSLA, W8A8).",
        lifespan=lifespan,
    )
    app.state.turbovid = state
    errors.install(app)
    metrics.install(app)
    app.include_router(videos.router)
    app.include_router(models.router)
    app.include_router(health.router)
    return app

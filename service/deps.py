"""Shared state of one gateway app and the `Annotated` dependency aliases the routers use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Header, Request

from service.auth import KeyStore, Principal, authenticate
from service.metrics import GatewayMetrics
from service.queue import EngineClient
from service.ratelimit import RateLimiter
from contract.settings import Settings
from contract.storage import Storage


@dataclass
class AppState:
    settings: Settings
    redis: redis.Redis
    engine: EngineClient
    storage: Storage
    keys: KeyStore
    limiter: RateLimiter
    metrics: GatewayMetrics


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.turbovid
    return state


State = Annotated[AppState, Depends(get_state)]


def get_principal(
    state: State, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Principal:
    return authenticate(state.keys, state.settings.auth.enabled, authorization)


Auth = Annotated[Principal, Depends(get_principal)]

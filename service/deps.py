"""Shared state of one gateway app and the `Annotated` dependency aliases the routers use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from contract.settings import Settings
from contract.storage import Storage
from service.auth import Principal, authenticate
from service.engine import Engine
from service.metrics import GatewayMetrics
from service.videos.serving import VideoServing


@dataclass
class AppState:
    settings: Settings
    engine: Engine  # the only way to Redis: queue, job store, worker registry, keys, limits
    storage: Storage
    metrics: GatewayMetrics
    videos: VideoServing


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.turbovid
    return state


State = Annotated[AppState, Depends(get_state)]


def get_principal(
    state: State, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Principal:
    return authenticate(state.engine.api_keys, state.settings.auth.enabled, authorization)


Auth = Annotated[Principal, Depends(get_principal)]

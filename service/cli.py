"""Functions behind the `turbovid` CLI commands that belong to the service side."""

from __future__ import annotations

import redis

from service.auth import KeyStore
from contract.settings import Settings


def run_gateway(settings: Settings) -> None:
    """Serve the HTTP API on settings.gateway.host:port (blocks)."""
    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(settings), host=settings.gateway.host, port=settings.gateway.port,
                proxy_headers=True, log_level="info")


def create_api_key(settings: Settings, name: str) -> str:
    """Create an API key, store its SHA-256 in Redis and return the plaintext (shown once)."""
    client = redis.Redis.from_url(settings.redis.url)
    try:
        _, plaintext = KeyStore(client, settings.redis.key_prefix).create(name)
    finally:
        client.close()
    return plaintext


def run_webhook_worker(settings: Settings) -> None:
    """Deliver webhooks from the webhook queue (blocks)."""
    from service.webhooks import run_webhook_worker as _run

    _run(settings)

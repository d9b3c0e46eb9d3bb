"""The gateway app plus one internal route for load baselines; never served in production.

`GET /_bench/redis-read` authenticates nothing and does one Redis read (GET of a missing key) through the
same client and the same path (the event loop, async Redis) as the gateway's own routes, then answers a
tiny JSON body: the floor under which no route that touches Redis can go on this server. The load test
(`load_tests/poll_load.py`) serves this app with `service.server.serve`, as `turbovid gateway` does.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from cli.main import load_settings
from service.app import create_app


def app() -> FastAPI:
    gateway = create_app(load_settings())

    @gateway.get("/_bench/redis-read", include_in_schema=False)
    async def redis_read(request: Request) -> Response:
        await request.app.state.turbovid.engine.bench_read()
        return Response(b'{"ok":true}', media_type="application/json")

    return gateway

"""Outbound requests the gateway makes for clients (`image_url` fetches, webhook deliveries).

Every request goes through the egress guard (`contract.netguard.resolve_url`) and is then sent to one
of the addresses the guard checked, not to a second DNS resolution of the name, so a name cannot
resolve to a public address for the check and to a private one for the connection (DNS rebinding).
The URL's host stays in the `Host` header and, for https, in the TLS SNI and certificate check
(httpcore's `sni_hostname`). With private targets allowed (dev and tests) nothing is resolved or pinned.
Redirects are never followed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from contract.netguard import UnsafeURL, resolve_url
from contract.settings import EgressSettings


@dataclass(frozen=True)
class Target:
    url: str  # what to connect to: the checked address in place of the host name
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def refusal(exc: UnsafeURL) -> str:
    """The guard's reason for a client, without the internal address a name resolved to."""
    return re.sub(r" \([^)]*\)$", "", str(exc))


def pin(url: str, egress: EgressSettings) -> Target:
    """The request target for `url`, pinned to an address the guard checked; UnsafeURL when refused."""
    addrs = resolve_url(url, allow_private=egress.allow_private_targets)
    if not addrs:
        return Target(url)
    parsed = httpx.URL(url)
    address = next((a for a in addrs if ":" not in a), addrs[0])  # IPv4 first: IPv6 is often unrouted
    target = Target(str(parsed.copy_with(host=address)), {"host": parsed.netloc.decode("ascii")})
    if parsed.scheme == "https":
        target.extensions["sni_hostname"] = parsed.host
    return target


@asynccontextmanager
async def stream_get(client: httpx.AsyncClient, target: Target) -> AsyncIterator[httpx.Response]:
    """GET a pinned target (see `pin`, which resolves: call it off the event loop) with `client`."""
    async with client.stream("GET", target.url, headers=target.headers, extensions=target.extensions) as resp:
        yield resp

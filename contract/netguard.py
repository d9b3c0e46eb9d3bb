"""SSRF guard for the URLs the service calls on a client's behalf (webhooks, image_url fetches).

A URL is accepted only with scheme http/https and a host whose every resolved address is globally
routable (`ipaddress`'s `is_global`: not private, loopback, link-local, carrier-grade NAT
100.64.0.0/10, site-local fec0::/10, documentation, reserved, ...), after unwrapping IPv4 addresses
embedded in IPv6 forms (v4-mapped, v4-compatible, 6to4 2002::/16, Teredo 2001::/32, NAT64
64:ff9b::/96), unless private targets are explicitly allowed by settings. Multicast is refused too.
Requests are then made without following redirects.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeURL(ValueError):
    pass


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPAT = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (and would reach through a translator or tunnel)."""
    out = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)  # (server, client)
    if ip in _NAT64 or (ip in _V4_COMPAT and int(ip) > 1):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def is_public(addr: str) -> bool:
    """True when `addr` (an IP literal, optionally with a %zone) is globally routable unicast, and so is
    every IPv4 address embedded in it."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:  # fec0::/10, deprecated but still routed inside some networks
            return False
        return all(v4.is_global and not v4.is_multicast for v4 in _embedded_ipv4(ip))
    return True


def check_url(url: str, *, allow_private: bool) -> str:
    """Return the URL if it may be called; raise UnsafeURL with the reason otherwise."""
    resolve_url(url, allow_private=allow_private)
    return url


def resolve_url(url: str, *, allow_private: bool) -> list[str]:
    """The addresses `url`'s host resolves to, all checked; raise UnsafeURL with the reason otherwise.
    Connect to one of these (not to a second resolution of the name) to leave no DNS-rebinding window.
    With private targets allowed nothing is resolved and the list is empty."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # bad IPv6 literal, non-numeric port, ...
        raise UnsafeURL(f"the URL is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("the URL must use http or https")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeURL("credentials in URLs are not accepted")
    if allow_private:
        return []
    try:
        infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"cannot resolve host {parts.hostname!r}") from exc
    addrs = {str(info[4][0]) for info in infos}
    if not addrs:
        raise UnsafeURL(f"cannot resolve host {parts.hostname!r}")
    bad = sorted(a for a in addrs if not is_public(a))
    if bad:
        raise UnsafeURL(f"host {parts.hostname!r} resolves to a non-public address ({bad[0]})")
    return sorted(addrs)

"""SSRF guard for the URLs the service calls on a client's behalf (webhooks, image_url fetches).

A URL is accepted only with scheme http/https and a host whose every resolved address is public
(not private, loopback, link-local, multicast, reserved or unspecified), unless private targets are
explicitly allowed by settings. Requests are then made without following redirects.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeURL(ValueError):
    pass


def _is_public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


def check_url(url: str, *, allow_private: bool) -> str:
    """Return the URL if it may be called; raise UnsafeURL with the reason otherwise."""
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
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"cannot resolve host {parts.hostname!r}") from exc
    addrs = {str(info[4][0]) for info in infos}
    if not addrs:
        raise UnsafeURL(f"cannot resolve host {parts.hostname!r}")
    bad = sorted(a for a in addrs if not _is_public(a))
    if bad:
        raise UnsafeURL(f"host {parts.hostname!r} resolves to a non-public address ({bad[0]})")
    return url

"""Outbound requests are pinned to the addresses the egress guard checked (no DNS rebinding window)."""

from __future__ import annotations

import socket

import pytest

from contract.netguard import UnsafeURL
from contract.settings import EgressSettings
from service.egress import pin

STRICT = EgressSettings(allow_private_targets=False)


def _resolves_to(monkeypatch: pytest.MonkeyPatch, *addrs: str) -> None:
    def fake(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addrs]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_https_target_connects_to_the_checked_address_and_keeps_host_and_sni(monkeypatch) -> None:
    _resolves_to(monkeypatch, "2606:4700::1", "93.184.216.34")
    t = pin("https://hooks.example.com:8443/h?x=1", STRICT)
    assert t.url == "https://93.184.216.34:8443/h?x=1"  # IPv4 preferred
    assert t.headers == {"host": "hooks.example.com:8443"}
    assert t.extensions == {"sni_hostname": "hooks.example.com"}


def test_ipv6_only_and_plain_http(monkeypatch) -> None:
    _resolves_to(monkeypatch, "2606:4700::1")
    t = pin("http://hooks.example.com/h", STRICT)
    assert t.url == "http://[2606:4700::1]/h" and t.headers == {"host": "hooks.example.com"}
    assert t.extensions == {}


def test_a_name_with_any_private_address_is_refused(monkeypatch) -> None:
    _resolves_to(monkeypatch, "93.184.216.34", "10.0.0.5")
    with pytest.raises(UnsafeURL):
        pin("https://rebind.example.com/h", STRICT)


def test_private_targets_allowed_means_no_resolution_and_no_pinning(monkeypatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("resolved")

    monkeypatch.setattr(socket, "getaddrinfo", boom)
    t = pin("http://127.0.0.1:9/h", EgressSettings(allow_private_targets=True))
    assert (t.url, t.headers, t.extensions) == ("http://127.0.0.1:9/h", {}, {})

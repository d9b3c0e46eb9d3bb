"""The egress guard refuses every address that is not globally routable, embedded IPv4 included."""

from __future__ import annotations

import pytest

from contract.netguard import UnsafeURL, check_url, is_public, resolve_url

REFUSED = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "224.0.0.1",
    "100.64.0.1", "100.100.100.200",  # carrier-grade NAT (cloud metadata lives there)
    "192.0.2.1", "198.18.0.1", "240.0.0.1", "255.255.255.255",
    "::1", "::", "fe80::1", "fd00::1", "fec0::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1",  # v4-mapped
    "::127.0.0.1",  # v4-compatible
    "2002:7f00:1::1", "2002:a9fe:a9fe::",  # 6to4 wrapping 127.0.0.1 / 169.254.169.254
    "64:ff9b::7f00:1", "64:ff9b::a00:1",  # NAT64 of 127.0.0.1 / 10.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "2001:db8::1",  # documentation
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2002:808:808::1", "64:ff9b::808:808"]


@pytest.mark.parametrize("addr", REFUSED)
def test_non_global_addresses_are_refused(addr):
    assert not is_public(addr)
    host = f"[{addr}]" if ":" in addr else addr
    with pytest.raises(UnsafeURL):
        check_url(f"http://{host}/x", allow_private=False)


@pytest.mark.parametrize("addr", ALLOWED)
def test_global_addresses_pass(addr):
    assert is_public(addr)
    host = f"[{addr}]" if ":" in addr else addr
    assert resolve_url(f"https://{host}/x", allow_private=False) == [addr]


@pytest.mark.parametrize("url", ["ftp://8.8.8.8/", "http://user:pw@8.8.8.8/", "http:///x", "http://[::1/"])
def test_malformed_or_wrong_scheme_urls_are_refused(url):
    with pytest.raises(UnsafeURL):
        check_url(url, allow_private=False)


def test_names_are_checked_on_what_they_resolve_to():
    with pytest.raises(UnsafeURL, match="non-public"):
        check_url("http://localhost:8080/hook", allow_private=False)
    assert check_url("http://localhost:8080/hook", allow_private=True) == "http://localhost:8080/hook"

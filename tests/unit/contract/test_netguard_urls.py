"""URLs the gateway's egress guard refuses or lets through (webhook targets, image_url fetches)."""

from __future__ import annotations

import pytest

from contract.netguard import UnsafeURL, check_url


@pytest.mark.parametrize("url", ["http://127.0.0.1/x", "http://10.1.2.3/", "http://[::1]/", "http://localhost/",
                                 "http://169.254.169.254/latest", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/",
                                 "file:///etc/passwd", "http://user:pw@8.8.8.8/", "https:///nohost", "http://[::1",
                                 "http://example.com:port/"])
def test_ssrf_guard_refuses_non_public_targets(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(url, allow_private=False)


def test_ssrf_guard_accepts_public_ip_and_private_when_allowed() -> None:
    assert check_url("https://8.8.8.8/hook", allow_private=False) == "https://8.8.8.8/hook"
    assert check_url("http://127.0.0.1:9/h", allow_private=True) == "http://127.0.0.1:9/h"
    with pytest.raises(UnsafeURL):
        check_url("gopher://127.0.0.1/", allow_private=True)

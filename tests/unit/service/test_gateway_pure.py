"""Pure parts of the gateway: size/frame table, SSRF guard, webhook signatures, Range parsing."""

from __future__ import annotations

import pytest

from service import catalog
from contract.netguard import UnsafeURL, check_url
from service.routers.videos import _parse_range
from service.webhooks import sign


def test_seconds_map_to_4k_plus_1_frames_and_back() -> None:
    tiny = catalog.MODELS["wan-tiny"]
    big = catalog.MODELS["wan2.1-t2v-1.3b"]
    assert catalog.frames_for(big, "5", None) == 81 and catalog.seconds_of(81) == "5"
    assert catalog.frames_for(tiny, 1, None) == 17 and catalog.frames_for(tiny, "0.5", None) == 9
    assert catalog.frames_for(big, None, None) == 81 and catalog.frames_for(tiny, None, 13) == 13
    for bad_s in ("0", "-1", "6", "abc"):
        with pytest.raises(catalog.CatalogError) as e:
            catalog.frames_for(big, bad_s, None)
        assert e.value.param == "seconds"
    with pytest.raises(catalog.CatalogError):
        catalog.frames_for(tiny, None, 12)


def test_sizes_per_model_and_i2v_adapts_to_aspect() -> None:
    assert catalog.parse_size(catalog.MODELS["wan2.1-t2v-1.3b"], "480x832") == (480, 832)
    with pytest.raises(catalog.CatalogError, match="832x480, 480x832, 624x624"):
        catalog.parse_size(catalog.MODELS["wan2.1-t2v-1.3b"], "1280x720")
    assert catalog.parse_size(catalog.MODELS["wan2.1-t2v-14b"], "1280x720") == (1280, 720)
    i2v = catalog.MODELS["wan2.2-i2v-a14b"]
    assert catalog.parse_size(i2v, None, (1080, 1920)) == (720, 1280)
    assert catalog.parse_size(i2v, None, (500, 510)) == (960, 960)
    with pytest.raises(catalog.CatalogError) as e:
        catalog.get_model("wan2.1-t2v-14b", ["wan-tiny"])
    assert e.value.param == "model"


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


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    sig = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
               '{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_range_parsing() -> None:
    assert _parse_range("bytes=0-9", 100) == (0, 9)
    assert _parse_range("bytes=90-", 100) == (90, 99)
    assert _parse_range("bytes=90-200", 100) == (90, 99)
    assert _parse_range("bytes=-10", 100) == (90, 99)
    for bad in ("bytes=100-", "bytes=5-2", "bytes=-", "items=0-1", "bytes=0-1,5-6", "bytes=-0"):
        assert _parse_range(bad, 100) is None

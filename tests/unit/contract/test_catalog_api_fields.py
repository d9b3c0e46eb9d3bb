"""The catalog's mapping of the API's `seconds`/`size`/`model` fields to frames, sizes and cards
(moved from the gateway's pure tests when the catalog moved to contract/)."""

from __future__ import annotations

import pytest

from contract import catalog


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
        catalog.served_card("wan2.1-t2v-14b", ["wan-tiny"])
    assert e.value.param == "model"

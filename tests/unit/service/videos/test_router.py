"""HTTP-only parts of the videos router: Range parsing, the OpenAPI schema of the create body."""

from __future__ import annotations

from service.videos.router import _CREATE_SCHEMA, _parse_range


def test_range_parsing() -> None:
    assert _parse_range("bytes=0-9", 100) == (0, 9)
    assert _parse_range("bytes=90-", 100) == (90, 99)
    assert _parse_range("bytes=90-200", 100) == (90, 99)
    assert _parse_range("bytes=-10", 100) == (90, 99)
    for bad in ("bytes=100-", "bytes=5-2", "bytes=-", "items=0-1", "bytes=0-1,5-6", "bytes=-0"):
        assert _parse_range(bad, 100) is None


def test_create_schema_documents_every_knob_with_its_range_and_no_local_refs() -> None:
    content = _CREATE_SCHEMA["requestBody"]["content"]
    props = content["application/json"]["schema"]["properties"]
    assert "$defs" not in str(content)
    steps = next(s for s in props["num_steps"]["anyOf"] if s.get("type") == "integer")
    assert (steps["minimum"], steps["maximum"]) == (1, 100)
    assert set(content["multipart/form-data"]["schema"]["properties"]) == set(props)

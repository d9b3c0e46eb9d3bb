"""What `turbovid serve --dev` prints while it starts: where it is, and no access-log line of 503s from
polling the gateway while the model loads."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e


def test_startup_log_says_where_and_has_no_503_lines(dev_stack):
    path = dev_stack.storage_dir.parent / "stack.log"
    deadline = time.monotonic() + 180
    while "turbovid dev stack ready" not in (log := path.read_text(errors="replace")):
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.5)
    assert f"turbovid dev stack starting on {dev_stack.base_url}" in log
    assert f"turbovid dev stack ready: {dev_stack.base_url}" in log
    assert f"playground {dev_stack.base_url}/" in log
    before_ready = log[:log.index("turbovid dev stack ready")]
    assert " 503" not in before_ready, [line for line in before_ready.splitlines() if " 503" in line]

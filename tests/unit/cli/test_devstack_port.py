"""`turbovid serve --dev` takes port 8000 when it is free and says so when it has to use another."""

from __future__ import annotations

import logging
import socket

import pytest

from cli.devstack import DEV_PORT, dev_port, free_port


def test_default_is_the_readme_port() -> None:
    assert DEV_PORT == 8000


def test_preferred_port_when_free() -> None:
    port = free_port()
    assert dev_port(port) == port


def test_taken_port_falls_back_to_a_free_one_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="turbovid.dev"):
            port = dev_port(taken)
    assert port != taken and port > 0
    assert f"port {taken} is taken; the dev stack uses {port} instead" in caplog.text

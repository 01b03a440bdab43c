"""Fixtures shared by the tool tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_remote import LoopbackServer


@pytest.fixture
def remote() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    try:
        yield server
    finally:
        server.close()

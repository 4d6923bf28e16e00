"""Fixtures several test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import RecordingServer


@pytest.fixture(scope="module")
def label_studio() -> Iterator[RecordingServer]:
    """A stand-in for Label Studio serving task files (a module may define its own)."""
    server = RecordingServer()
    yield server
    server.close()

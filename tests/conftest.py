"""Fixtures several test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.label_studio import LabelStudioServer
from tests.servers import RecordingServer


@pytest.fixture(scope="module")
def label_studio() -> Iterator[RecordingServer]:
    """A stand-in for Label Studio serving task files (a module may define its own)."""
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio for the end-to-end modules (started once: it takes a while)."""
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()

"""Fixtures several test modules share."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from tests.label_studio import LabelStudioServer
from tests.servers import RecordingServer

# No test may reach Modal: with a token in the environment (a CI secret, a developer's
# ~/.modal.toml) its client would try, and hang for a minute where there is no network. Every
# process the tests start inherits this: no token variables, and a config file that is not there.
MODAL_CONFIG = os.path.join(tempfile.gettempdir(), "lsfn-tests-no-modal-config.toml")
for _variable in [name for name in os.environ if name.startswith("MODAL_")]:
    del os.environ[_variable]
os.environ["MODAL_CONFIG_PATH"] = MODAL_CONFIG


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

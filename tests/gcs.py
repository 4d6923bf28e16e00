"""A local Cloud Storage server for tests: gcp-storage-emulator, in this process.

The emulator does not check upload preconditions; GCS's documented ``ifGenerationMatch=0`` rule
(412 when the object exists), which the weights store's ``create`` relies on, is added to its
object upload here. Processes reach it through STORAGE_EMULATOR_HOST (google-cloud-storage then
uses it, without credentials).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from tests.servers import free_port

__all__ = ["BUCKET", "gcs_emulator"]

BUCKET = "lsfn-test"


def _with_preconditions() -> None:
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import objects

    def insert(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        if request.query.get("ifGenerationMatch") == ["0"]:
            name = (request.query.get("name") or [None])[0] or request.data["meta"].get("name")
            try:
                storage.get_file_obj(request.params["bucket_name"], name)
            except Exception:  # noqa: BLE001 - the emulator's NotFound: the object is free
                pass
            else:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
        return objects.insert(request, response, storage, *args, **kwargs)

    for _, methods in emulator.HANDLERS:
        if methods.get("POST") is objects.insert:
            methods["POST"] = insert


@contextmanager
def gcs_emulator() -> Iterator[str]:
    """The emulator's URL, serving an empty bucket ``BUCKET``."""
    from gcp_storage_emulator import server as emulator

    _with_preconditions()
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()

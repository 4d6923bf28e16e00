"""shared.weights_store: one behaviour for the three stores, each through its own client against a
local stand-in: a folder; google-cloud-storage against gcp-storage-emulator (tests/gcs.py); a
Modal Volume's client API (read_file, listdir, batch_upload) over a folder, with modal's own
entry types and errors."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lsfn.shared.weights_store import FileStore, GcsStore, ModalVolumeStore, StoreError, WeightsStore, open_store
from tests.gcs import gcs_emulator

# -- stand-ins -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[str]:
    with gcs_emulator() as url:
        yield url


class _Volume:
    """modal.Volume's client methods a store uses, over a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read_file(self, path: str) -> Iterator[bytes]:
        from modal.exception import NotFoundError

        file = self.root / path.lstrip("/")
        if not file.is_file():
            raise NotFoundError(f"No such file: {path}")
        yield file.read_bytes()

    def listdir(self, path: str, recursive: bool = False) -> list[Any]:
        from modal.exception import NotFoundError
        from modal.volume import FileEntry, FileEntryType

        folder = self.root / path.lstrip("/")
        if not folder.is_dir():
            raise NotFoundError(f"No such directory: {path}")
        found = folder.rglob("*") if recursive else folder.iterdir()
        return [FileEntry(path=str(p.relative_to(self.root)), type=FileEntryType.FILE if p.is_file() else FileEntryType.DIRECTORY,
                          mtime=0, size=p.stat().st_size) for p in found]  # fmt: skip

    @contextmanager
    def batch_upload(self, force: bool = False) -> Iterator[Any]:
        volume = self

        class Batch:
            def put_file(self, source: Any, remote: str) -> None:
                target = volume.root / remote.lstrip("/")
                if target.exists() and not force:
                    raise FileExistsError(remote)
                target.parent.mkdir(parents=True, exist_ok=True)
                data = source.read() if isinstance(source, io.IOBase) else Path(source).read_bytes()
                target.write_bytes(data)

        yield Batch()


@pytest.fixture(params=["file", "gcs", "modal-volume"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> WeightsStore:
    if request.param == "file":
        return open_store((tmp_path / "store").as_uri())
    if request.param == "gcs":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        url = request.getfixturevalue("gcs_server")
        client = storage.Client(project="lsfn", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
        return GcsStore("lsfn-test", f"run-{tmp_path.name}", client=client)
    return ModalVolumeStore("lsfn-weights", volume=_Volume(tmp_path / "volume"))


# -- the contract ----------------------------------------------------------------------------------


def test_objects_are_written_read_and_listed(store: WeightsStore, tmp_path: Path) -> None:
    assert store.read("yolo/3/served.json") is None and store.list("yolo/") == []
    store.write("yolo/3/served.json", b'{"version": "a"}')
    store.write("yolo/3/served.json", b'{"version": "b"}')
    assert store.read("yolo/3/served.json") == b'{"version": "b"}'
    weights = tmp_path / "label.pt"
    weights.write_bytes(bytes(range(256)) * 4096)
    store.upload("yolo/3/versions/1/label.pt", weights)
    store.download("yolo/3/versions/1/label.pt", tmp_path / "copy" / "label.pt")
    assert (tmp_path / "copy" / "label.pt").read_bytes() == weights.read_bytes()
    assert store.list("yolo/") == ["yolo/3/served.json", "yolo/3/versions/1/label.pt"]
    assert store.list("yolo/3/versions/") == ["yolo/3/versions/1/label.pt"]
    with pytest.raises(StoreError, match="no yolo/4/served.json"):
        store.download("yolo/4/served.json", tmp_path / "none")


def test_create_writes_only_a_free_key(store: WeightsStore) -> None:
    assert store.create("yolo/3/versions/1/manifest.json", b"first")
    assert not store.create("yolo/3/versions/1/manifest.json", b"second")
    assert store.read("yolo/3/versions/1/manifest.json") == b"first"


def test_concurrent_creates_of_one_key_let_one_win(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    wins: list[bool] = []
    threads = [threading.Thread(target=lambda i=i: wins.append(store.create("k/manifest.json", str(i).encode())))
               for i in range(16)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1 and store.read("k/manifest.json") in {str(i).encode() for i in range(16)}


@pytest.mark.parametrize(
    ("url", "problem"),
    [("s3://bucket/x", "use file:///folder"), ("file://host/x", "a local folder"), ("gs://", "use file:///folder")],
)
def test_an_unknown_store_url_is_refused_naming_the_forms(url: str, problem: str) -> None:
    with pytest.raises(StoreError, match=problem):
        open_store(url)


def test_a_key_outside_a_folder_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="outside the store"):
        FileStore(tmp_path / "store").write("../escape", b"x")

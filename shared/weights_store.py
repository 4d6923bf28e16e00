"""Where trained weights live between instances: one interface, chosen by URL (WEIGHTS_STORE).

    file:///var/lsfn/weights      a folder (lsfn serve; tests)
    gs://bucket/prefix            a Google Cloud Storage bucket (Cloud Run), google-cloud-storage
    modal-volume://name           a Modal Volume (Modal), modal's client

A store holds whole objects under keys (``yolo/3/versions/2/manifest.json``). Objects are
written whole (a reader sees the old bytes or the new, never part), and ``create`` writes one
only if the key is free: that is how two jobs that both finished never take the same version
number. The store is the truth every instance reads; nothing of it is kept in memory here.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FileStore", "GcsStore", "ModalVolumeStore", "StoreError", "WeightsStore", "open_store"]


class StoreError(Exception):
    """A store that cannot be opened or reached; the message names it."""


class WeightsStore(ABC):
    """Keys are '/'-separated paths relative to the store's root."""

    url: str

    @abstractmethod
    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Write the object whole, replacing any."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write the object only if the key is free; whether it was written."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (a folder: ending with '/'), sorted."""

    def upload(self, key: str, source: Path) -> None:
        self.write(key, source.read_bytes())

    def download(self, key: str, target: Path) -> None:
        """The object into ``target``, replacing it at once (a reader never sees part of it)."""
        data = self.read(key)
        if data is None:
            raise StoreError(f"{self.url}: no {key}")
        _replace(target, data)


def _aside(target: Path, data: bytes) -> str:
    """``data`` written to a hidden file beside ``target``: its path (moved or linked in whole)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return tmp


def _replace(target: Path, data: bytes) -> None:
    tmp = _aside(target, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FileStore(WeightsStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"{key!r} is outside the store")
        return path

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        _replace(self._path(key), data)

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        # Written aside, then linked in: link() fails when the name exists (an exclusive create
        # whose content appears whole).
        tmp = _aside(path, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    def upload(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            with source.open("rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)


class GcsStore(WeightsStore):
    """A bucket through google-cloud-storage (STORAGE_EMULATOR_HOST points it at a stand-in).
    ``create`` is a write with ``if_generation_match=0``: GCS refuses it when the object exists."""

    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        from google.cloud import storage

        self.url = f"gs://{bucket}/{prefix}".rstrip("/")
        self._client = client or storage.Client()
        self._bucket = self._client.bucket(bucket)
        self._prefix = prefix.strip("/")

    def _name(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def read(self, key: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        try:
            return self._bucket.blob(self._name(key)).download_as_bytes()
        except NotFound:
            return None

    def write(self, key: str, data: bytes) -> None:
        self._bucket.blob(self._name(key)).upload_from_string(data)

    def create(self, key: str, data: bytes) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        try:
            self._bucket.blob(self._name(key)).upload_from_string(data, if_generation_match=0)
            return True
        except PreconditionFailed:
            return False

    def list(self, prefix: str) -> list[str]:
        start = len(self._prefix) + 1 if self._prefix else 0
        blobs = self._client.list_blobs(self._bucket, prefix=self._name(prefix))
        return sorted(blob.name[start:] for blob in blobs)

    def upload(self, key: str, source: Path) -> None:
        self._bucket.blob(self._name(key)).upload_from_filename(str(source))


class ModalVolumeStore(WeightsStore):
    """A Modal Volume through modal's client (``volume``: a ``modal.Volume`` or a stand-in with
    its read_file/listdir/batch_upload). A Volume has no conditional write: ``create`` checks,
    then writes, so two jobs finishing in the same second could take one number; one job per
    project runs at a time (the trigger coalesces), which is what keeps them apart."""

    def __init__(self, name: str, volume: Any = None) -> None:
        if volume is None:
            import modal

            volume = modal.Volume.from_name(name, create_if_missing=True)
        self.url = f"modal-volume://{name}"
        self._volume = volume

    def read(self, key: str) -> bytes | None:
        try:
            return b"".join(self._volume.read_file(key))
        except FileNotFoundError:
            return None
        except Exception as exc:  # modal raises its NotFoundError, no subclass of the built-in
            if type(exc).__name__ == "NotFoundError":
                return None
            raise

    def write(self, key: str, data: bytes) -> None:
        import io

        with self._volume.batch_upload(force=True) as batch:
            batch.put_file(io.BytesIO(data), "/" + key)

    def create(self, key: str, data: bytes) -> bool:
        if self.read(key) is not None:
            return False
        self.write(key, data)
        return True

    def list(self, prefix: str) -> list[str]:
        try:
            entries = self._volume.listdir("/" + prefix.rstrip("/"), recursive=True)
        except Exception as exc:  # noqa: BLE001 - a missing folder lists nothing
            if type(exc).__name__ in ("NotFoundError", "FileNotFoundError"):
                return []
            raise
        files = [entry.path.lstrip("/") for entry in entries if getattr(entry.type, "name", str(entry.type)) == "FILE"]
        return sorted(files)

    def upload(self, key: str, source: Path) -> None:
        with self._volume.batch_upload(force=True) as batch:
            batch.put_file(str(source), "/" + key)


def open_store(url: str) -> WeightsStore:
    """The store a WEIGHTS_STORE URL names; StoreError for any other."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"WEIGHTS_STORE {url!r}: a file URL names a local folder (file:///path)")
        return FileStore(Path(parts.path))
    if parts.scheme == "gs" and parts.netloc:
        return GcsStore(parts.netloc, parts.path.strip("/"))
    if parts.scheme == "modal-volume" and parts.netloc:
        return ModalVolumeStore(parts.netloc)
    raise StoreError(f"WEIGHTS_STORE {url!r}: use file:///folder, gs://bucket/prefix or modal-volume://name")

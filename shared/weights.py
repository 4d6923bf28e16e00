"""Weights files inside the image: resolving a label config's ``model_path`` safely, and the
short content hash that names a model version.

``model_path`` comes from the project's label config, which any project admin writes: it is
resolved inside the weights directory and nothing outside it (``../``, an absolute path
elsewhere, a symlink pointing out) is ever opened.

A weights directory may hold a manifest (``weights-manifest.json``, written by ``lsfn weights
--manifest``): each file's sha256 and size. The front door's image carries the manifest of its
function's image instead of the files: a file the manifest lists counts as present, and its
content hash is the listed one, so the front door answers the same versions without the GBs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST", "WeightsError", "content_hash", "file_sha256", "listed_file", "read_manifest", "resolve_weights",
    "weights_file", "weights_folder", "write_manifest",
]  # fmt: skip

MANIFEST = "weights-manifest.json"


class WeightsError(ValueError):
    """A weights file that cannot be used (outside the weights directory, missing, corrupt);
    the runtime answers 422 naming it."""


def resolve_weights(root: Path, name: str) -> Path:
    """The file ``name`` inside ``root``, refusing anything that resolves outside it."""
    if not name or "\0" in name:
        raise WeightsError(f"model_path {name!r} is not a file name")
    base = root.resolve()
    path = (base / name).resolve()  # follows symlinks: a link out of the directory is caught
    if not path.is_relative_to(base):
        raise WeightsError(f"model_path {name!r} points outside the weights directory (MODEL_ROOT)")
    if not weights_file(path, base):
        raise WeightsError(f"model_path {name!r}: no such weights file in the weights directory ({base})")
    return path


def write_manifest(path: Path, files: list[dict[str, Any]]) -> None:
    """Record placed weights: ``files`` holds name (relative to the manifest's folder), sha256,
    bytes and whether the weights list pins the hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"files": sorted(files, key=lambda f: f["name"])}, indent=2) + "\n")


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """A manifest's entries by file name; an unreadable manifest is a WeightsError."""
    try:
        document = json.loads(path.read_text())
        return {entry["name"]: entry for entry in document["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"weights manifest {path} is unreadable: {exc}") from None


# Guards the manifest and hash caches below.
_hash_lock = threading.Lock()
_manifests: dict[tuple[Path, int], dict[str, dict[str, Any]]] = {}


def _manifest(root: Path) -> dict[str, dict[str, Any]]:
    """The entries of the manifest in the weights directory ``root`` (none without one)."""
    manifest = root / MANIFEST
    try:
        key = (manifest, manifest.stat().st_mtime_ns)
    except OSError:
        return {}
    with _hash_lock:
        entries = _manifests.get(key)
    if entries is None:
        entries = read_manifest(manifest)
        with _hash_lock:
            _manifests[key] = entries
    return entries


def _inside(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` as a manifest names it, or None when it is not inside."""
    base, target = root.resolve(), path.resolve()
    return target.relative_to(base).as_posix() if target.is_relative_to(base) else None


def listed_file(path: Path, root: Path) -> dict[str, Any] | None:
    """The manifest entry of ``path`` when the file is absent but the manifest of the weights
    directory ``root`` lists it (the front door's image). Only that directory's manifest counts:
    one elsewhere (above it, in a checkout) says nothing about these weights."""
    name = _inside(path, root)
    if name is None or path.exists():
        return None
    return _manifest(root).get(name)


def weights_file(path: Path, root: Path) -> bool:
    """A weights file that is there, or listed in the manifest of the weights directory."""
    return path.is_file() or listed_file(path, root) is not None


def weights_folder(path: Path, root: Path) -> bool:
    """A model folder that is there, or whose files the weights directory's manifest lists."""
    if path.is_dir():
        return True
    name = None if path.exists() else _inside(path, root)
    return name is not None and any(listed.startswith(name + "/") for listed in _manifest(root))


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks (weights files are hundreds of MB)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


_hashes: dict[tuple[Path, int, int], str] = {}
_hashing: dict[tuple[Path, int, int], threading.Lock] = {}


def content_hash(path: Path, length: int = 8, root: Path | None = None) -> str:
    """A short sha256 of the file, computed once per (path, size, mtime); concurrent callers
    wait for the one computing it (a checkpoint of a GB takes seconds). An absent file that the
    manifest of the weights directory ``root`` lists has the listed hash."""
    listed = listed_file(path, root) if root is not None else None
    if listed is not None:
        return str(listed["sha256"])[:length]
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        known = _hashes.get(key)
        computing = _hashing.setdefault(key, threading.Lock()) if known is None else None
    if computing is not None:
        with computing:
            with _hash_lock:
                known = _hashes.get(key)
            if known is None:
                known = file_sha256(path)
                with _hash_lock:
                    _hashes[key] = known
                    _hashing.pop(key, None)
    assert known is not None
    return known[:length]

"""Weights files inside the image: resolving a label config's ``model_path`` safely, and the
short content hash that names a model version.

``model_path`` comes from the project's label config, which any project admin writes: it is
resolved inside the weights directory and nothing outside it (``../``, an absolute path
elsewhere, a symlink pointing out) is ever opened.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

__all__ = ["WeightsError", "content_hash", "file_sha256", "resolve_weights"]


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
    if not path.is_file():
        raise WeightsError(f"model_path {name!r}: no such weights file in the weights directory ({base})")
    return path


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks (weights files are hundreds of MB)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


_hashes: dict[tuple[Path, int, int], str] = {}
_hashing: dict[tuple[Path, int, int], threading.Lock] = {}
_hash_lock = threading.Lock()


def content_hash(path: Path, length: int = 8) -> str:
    """A short sha256 of the file, computed once per (path, size, mtime); concurrent callers
    wait for the one computing it (a checkpoint of a GB takes seconds)."""
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

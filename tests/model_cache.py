"""What the tests' model caches on disk share (tests/yolo_models.py, tests/sam3_models.py): one
builder at a time across processes, and the sets of other keys dropped once unused."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["locked", "prune"]


def prune(keep: Path, pattern: str) -> None:
    """Every change to a builder makes a new cache folder: drop the folders beside ``keep``
    matching ``pattern`` that went unused for two days."""
    stale = time.time() - 2 * 86400
    for other in keep.parent.glob(pattern):
        if other == keep or not other.is_dir():
            continue
        marker = other / ".last-used"
        if (marker.stat().st_mtime if marker.exists() else other.stat().st_mtime) < stale:
            shutil.rmtree(other, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (another process builds: wait, then find what it built)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

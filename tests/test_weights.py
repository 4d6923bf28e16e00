"""shared.weights: model_path stays inside the weights directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.weights import WeightsError, content_hash, resolve_weights


def test_names_inside_the_directory_resolve(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.pt").write_bytes(b"weights")
    (tmp_path / "link.pt").symlink_to(tmp_path / "sub" / "m.pt")  # a link that stays inside
    assert resolve_weights(tmp_path, "sub/m.pt") == (tmp_path / "sub" / "m.pt").resolve()
    assert resolve_weights(tmp_path, "link.pt") == (tmp_path / "sub" / "m.pt").resolve()
    assert resolve_weights(tmp_path, "sub/../sub/m.pt").name == "m.pt"


@pytest.mark.parametrize("name", ["../x.pt", "/etc/passwd", "sub/../../x.pt", "out.pt", "", "a\0b"])
def test_names_outside_or_broken_are_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (tmp_path / "x.pt").write_bytes(b"outside")
    (root / "out.pt").symlink_to(tmp_path / "x.pt")
    with pytest.raises(WeightsError):
        resolve_weights(root, name)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        resolve_weights(tmp_path, "nope.pt")


def test_content_hash_follows_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(b"one")
    assert content_hash(path) == hashlib.sha256(b"one").hexdigest()[:8]
    path.write_bytes(b"two!")  # another size: hashed again
    assert content_hash(path) == hashlib.sha256(b"two!").hexdigest()[:8]

"""shared.weights: model_path stays inside the weights directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lsfn.shared.weights import WeightsError, content_hash, resolve_weights


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


def test_a_manifest_stands_for_absent_files(tmp_path: Path) -> None:
    """The front door's image: the manifest of its function's weights, not the files. Listed
    files count as present with the listed hash; anything else is still missing."""
    from lsfn.functions.grounding_dino.spec import DinoSettings, dino_version
    from lsfn.functions.sam2.spec import Sam2Settings, sam2_version
    from lsfn.shared.weights import MANIFEST, weights_file, weights_folder, write_manifest

    files = [{"name": "sam2.1_hiera_large.pt", "sha256": "ab" * 32, "bytes": 1, "pinned": True},
             {"name": "grounding-dino-tiny/model.safetensors", "sha256": "cd" * 32, "bytes": 1, "pinned": False}]  # fmt: skip
    write_manifest(tmp_path / MANIFEST, files)
    assert resolve_weights(tmp_path, "sam2.1_hiera_large.pt") == tmp_path / "sam2.1_hiera_large.pt"
    assert content_hash(tmp_path / "sam2.1_hiera_large.pt", root=tmp_path) == "abababab"
    assert sam2_version(tmp_path, Sam2Settings()) == "sam2-sam2.1_hiera_large@abababab"
    assert dino_version(tmp_path, DinoSettings()) == "grounding-dino-grounding-dino-tiny@cdcdcdcd"
    assert weights_folder(tmp_path / "grounding-dino-tiny", tmp_path) and not weights_folder(tmp_path / "other", tmp_path)
    # Only the weights directory's own manifest counts, not one above it.
    inner = tmp_path / "models"
    inner.mkdir()
    assert not weights_file(inner / "sam2.1_hiera_large.pt", inner)
    with pytest.raises(WeightsError, match="no such weights file"):
        resolve_weights(inner, "sam2.1_hiera_large.pt")
    with pytest.raises(WeightsError, match="no such weights file"):
        resolve_weights(tmp_path, "sam2.1_hiera_tiny.pt")
    # A file that is there is hashed, whatever a manifest says.
    (tmp_path / "sam2.1_hiera_large.pt").write_bytes(b"real")
    assert content_hash(tmp_path / "sam2.1_hiera_large.pt", root=tmp_path) == hashlib.sha256(b"real").hexdigest()[:8]


def test_an_unreadable_manifest_is_named(tmp_path: Path) -> None:
    from lsfn.shared.weights import MANIFEST

    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(WeightsError, match="manifest .* is unreadable"):
        resolve_weights(tmp_path, "m.pt")

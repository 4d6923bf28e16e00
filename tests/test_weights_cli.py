"""`lsfn weights`: download listed weights, check sha256, explain failures."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.servers import Answer, RecordingServer, free_port

ROOT = Path(__file__).parent.parent


def lsfn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def listing(tmp_path: Path, url: str, sha256: str | None) -> Path:
    path = tmp_path / "weights.json"
    entries = [{"name": "shipped.pt", "shipped": True, "sha256": None},
               {"name": "m.pt", "url": f"{url}/releases/m.pt", "sha256": sha256}]  # fmt: skip
    path.write_text(json.dumps({"weights": entries}))
    return path


def test_weights_are_downloaded_and_checked(tmp_path: Path) -> None:
    server = RecordingServer()
    data = b"weights" * 1000
    server.routes["/releases/m.pt"] = Answer(200, data)
    server.routes["/mirror/m.pt"] = Answer(200, data)
    try:
        digest = hashlib.sha256(data).hexdigest()
        dest = tmp_path / "models"
        done = lsfn("weights", str(listing(tmp_path, server.url, None)), "--dest", str(dest))
        assert done.returncode == 0, done.stderr
        assert (dest / "m.pt").read_bytes() == data and f"sha256 {digest} (not pinned" in done.stdout
        pinned = listing(tmp_path, server.url, digest)
        assert "present, sha256 ok" in lsfn("weights", str(pinned), "--dest", str(dest)).stdout
        (dest / "m.pt").unlink()
        mirrored = lsfn("weights", str(pinned), "--dest", str(dest), "--mirror", f"{server.url}/mirror")
        assert mirrored.returncode == 0 and server.paths()[-1] == "/mirror/m.pt"
        (dest / "m.pt").unlink()
        named = lsfn("weights", str(pinned), "--dest", str(dest), "--only", "m.pt")
        assert named.returncode == 0 and (dest / "m.pt").read_bytes() == data
        unknown = lsfn("weights", str(pinned), "--dest", str(dest), "--only", "other.pt")
        assert unknown.returncode == 1 and "other.pt not in" in unknown.stderr and "shipped.pt, m.pt" in unknown.stderr
        (dest / "m.pt").unlink()
        wrong = lsfn("weights", str(listing(tmp_path, server.url, "0" * 64)), "--dest", str(dest))
        assert wrong.returncode == 1 and "is not the listed" in wrong.stderr and not (dest / "m.pt").exists()
    finally:
        server.close()


def test_a_listing_includes_other_functions_lists() -> None:
    from deploy.weights import listed_weights, listing_for

    names = [entry["name"] for entry in listed_weights(listing_for("grounding_sam"))]
    assert "grounding-dino-tiny/model.safetensors" in names and "sam2.1_hiera_large.pt" in names


def test_an_unreachable_source_is_explained(tmp_path: Path) -> None:
    dest = tmp_path / "models"
    done = lsfn("weights", str(listing(tmp_path, f"http://127.0.0.1:{free_port()}", None)), "--dest", str(dest))
    assert done.returncode == 1
    assert "cannot download m.pt" in done.stderr and "copy the file into" in done.stderr
    assert not list(dest.iterdir())  # no partial file left behind


def test_an_unknown_function_is_named() -> None:
    done = lsfn("weights", "nope")
    assert done.returncode == 1 and "no weights list for 'nope'" in done.stderr

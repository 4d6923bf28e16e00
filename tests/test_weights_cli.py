"""`lsfn weights`: download listed weights, check sha256, explain failures."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import Answer, RecordingServer, free_port

ROOT = Path(__file__).parent.parent


def lsfn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lsfn.shared.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def listing(tmp_path: Path, url: str, sha256: str | None) -> Path:
    # A shipped file lies in models/ beside its list, as functions/yolo/models does.
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "shipped.pt").write_bytes(b"shipped")
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
    from lsfn.deploy.weights import listed_weights, listing_for

    names = [entry["name"] for entry in listed_weights(listing_for("grounding_sam"))]
    assert "grounding-dino-tiny/model.safetensors" in names and "sam2.1_hiera_large.pt" in names


def test_an_unreachable_source_is_explained(tmp_path: Path) -> None:
    dest = tmp_path / "models"
    done = lsfn("weights", str(listing(tmp_path, f"http://127.0.0.1:{free_port()}", None)), "--dest", str(dest))
    assert done.returncode == 1
    assert "cannot download m.pt" in done.stderr and "copy the file into" in done.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["shipped.pt"]  # no partial file left behind


def test_an_unknown_function_is_named() -> None:
    done = lsfn("weights", "nope")
    assert done.returncode == 1 and "no weights list for 'nope'" in done.stderr


def test_a_local_folder_is_used_before_the_url_and_a_manifest_records_it(tmp_path: Path) -> None:
    """How an image bakes weights without reaching their host: --from a folder, checked
    against the pinned hash like a download, and --manifest recording what was placed."""
    data = b"local weights" * 100
    local = tmp_path / "local"
    (local / "folder").mkdir(parents=True)
    (local / "folder" / "m.pt").write_bytes(data)
    unreachable = f"http://127.0.0.1:{free_port()}"
    entries = [{"name": "folder/m.pt", "url": f"{unreachable}/m.pt", "sha256": hashlib.sha256(data).hexdigest()},
               {"name": "extra.pt", "url": f"{unreachable}/extra.pt", "sha256": None, "optional": True}]  # fmt: skip
    listing_path = tmp_path / "weights.json"
    listing_path.write_text(json.dumps({"weights": entries}))
    dest, manifest = tmp_path / "models", tmp_path / "models" / "weights-manifest.json"
    done = lsfn("weights", str(listing_path), "--dest", str(dest), "--from", str(local), "--manifest", str(manifest))
    assert done.returncode == 0, done.stderr
    assert (dest / "folder" / "m.pt").read_bytes() == data and not (dest / "extra.pt").exists()  # optional: skipped
    recorded = json.loads(manifest.read_text())["files"]
    assert recorded == [{"name": "folder/m.pt", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "pinned": True}]
    # A local file with other bytes is refused like a bad download.
    (local / "folder" / "m.pt").write_bytes(b"tampered")
    (dest / "folder" / "m.pt").unlink()
    refused = lsfn("weights", str(listing_path), "--dest", str(dest), "--from", str(local))
    assert refused.returncode == 1 and "is not the listed" in refused.stderr
    # An optional file is fetched when named; unreachable, the message says where a copy goes.
    named = lsfn("weights", str(listing_path), "--dest", str(dest), "--from", str(local), "--only", "extra.pt")
    assert named.returncode == 1 and f"put it at {local / 'extra.pt'}" in named.stderr


def test_a_size_picks_that_checkpoint_instead_of_the_default(tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    entries = []
    for size, optional in (("tiny", True), ("large", False)):
        (local / f"{size}.pt").write_bytes(size.encode())
        entries.append({"name": f"{size}.pt", "size": size, "url": "http://127.0.0.1:9/x", "sha256": None, "optional": optional})
    listing_path = tmp_path / "weights.json"
    listing_path.write_text(json.dumps({"weights": entries}))
    dest = tmp_path / "models"
    assert lsfn("weights", str(listing_path), "--dest", str(dest), "--from", str(local), "--size", "tiny").returncode == 0
    assert sorted(p.name for p in dest.iterdir()) == ["tiny.pt"]
    wrong = lsfn("weights", str(listing_path), "--dest", str(dest), "--from", str(local), "--size", "huge")
    assert wrong.returncode == 1 and "no weights of size 'huge'" in wrong.stderr and "(sizes: large, tiny)" in wrong.stderr


def test_the_sam2_list_bakes_one_size_unless_others_are_named() -> None:
    from lsfn.deploy.weights import listed_weights, listing_for

    default = [e["name"] for e in listed_weights(listing_for("sam2")) if not e.get("optional")]
    assert default == ["sam2.1_hiera_large.pt"]


def test_every_listed_download_is_pinned() -> None:
    from lsfn.deploy.weights import listed_weights, listing_for

    for function in ("yolo", "sam2", "grounding_dino", "grounding_sam"):
        for entry in listed_weights(listing_for(function)):
            assert entry.get("sha256") and len(entry["sha256"]) == 64, (function, entry["name"])


def test_the_image_info_records_torch_and_the_manifest(tmp_path: Path) -> None:
    import torch

    manifest = tmp_path / "weights-manifest.json"
    manifest.write_text(json.dumps({"files": [{"name": "m.pt", "sha256": "ab" * 32, "bytes": 3, "pinned": True}]}))
    done = subprocess.run([sys.executable, "-m", "lsfn.deploy.image_info", "yolo", "--torch-build", "cu126", "--manifest", str(manifest)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    info = json.loads(done.stdout)
    assert info["function"] == "yolo" and info["torch"]["version"] == torch.__version__
    assert info["torch"]["cuda"] == torch.version.cuda and info["torch"]["build"] == "cu126"
    assert info["weights"][0]["name"] == "m.pt"


def test_the_front_door_refuses_to_start_without_an_upstream() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "UPSTREAM_URL"}
    done = subprocess.run([sys.executable, "-m", "lsfn.shared.cli", "serve", "yolo", "--front-door"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 2 and "UPSTREAM_URL" in done.stderr


def test_a_listed_file_that_is_nowhere_fails_the_build(tmp_path: Path) -> None:
    """A user's own model listed without a URL and missing from the local folder: an error,
    never an image built without it."""
    (tmp_path / "local").mkdir()
    listing_path = tmp_path / "weights.json"
    listing_path.write_text(json.dumps({"weights": [{"name": "mine.pt", "sha256": None}]}))
    done = lsfn("weights", str(listing_path), "--dest", str(tmp_path / "models"), "--from", str(tmp_path / "local"))
    assert done.returncode == 1 and f"mine.pt: not found in {tmp_path / 'local'}" in done.stderr


def test_a_named_file_of_another_size_than_asked_is_refused(tmp_path: Path) -> None:
    from lsfn.deploy.weights import WeightsFetchError, fetch_weights, listing_for

    with pytest.raises(WeightsFetchError, match="sam2.1_hiera_tiny.pt is the tiny model, but the size asked for is large"):
        fetch_weights(listing_for("sam2"), tmp_path, only=["sam2.1_hiera_tiny.pt"], size="large")
    with pytest.raises(WeightsFetchError, match="must lie in"):
        fetch_weights(listing_for("sam2"), tmp_path / "models", manifest=tmp_path / "elsewhere" / "m.json")


def test_a_hub_token_goes_to_huggingface_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gated repository (facebook/sam3) is baked with the build's HF_TOKEN; no other host gets it,
    nor the storage huggingface.co redirects to (the header is not carried over a redirect)."""
    from lsfn.deploy.weights import hub_request

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert hub_request("https://huggingface.co/facebook/sam3/resolve/main/config.json").unredirected_hdrs == {
        "Authorization": "Bearer hf_not_a_real_token"}
    assert not hub_request("https://example.com/facebook/sam3/config.json").unredirected_hdrs
    monkeypatch.delenv("HF_TOKEN")
    assert not hub_request("https://huggingface.co/facebook/sam3/resolve/main/config.json").unredirected_hdrs

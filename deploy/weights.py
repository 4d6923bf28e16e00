"""`lsfn weights FUNCTION`: download the weights a function lists in its weights.json and check
their sha256, for a machine with internet access (an image build, a developer's laptop).

Functions never download at request time; this is the one place weights are fetched. A local
folder (``--from``) is looked in first, so an image can bake weights without reaching their
host, and a manifest (``--manifest``) records what was placed: each file's sha256, size and
whether the list pins it. The front door's image carries that manifest instead of the files.
"""

from __future__ import annotations

import hashlib
import os
import json
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from lsfn.shared.weights import file_sha256, write_manifest

__all__ = ["WeightsFetchError", "fetch_weights", "hub_request", "listed_weights", "listing_for"]

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"


class WeightsFetchError(RuntimeError):
    """A download that failed or a file whose sha256 is not the listed one."""


def listing_for(function: str) -> Path:
    """A function's weights.json: ``yolo`` or the path of a weights.json."""
    path = Path(function)
    if path.suffix == ".json" and path.is_file():
        return path
    listing = FUNCTIONS / function / "weights.json"
    if not listing.is_file():
        raise WeightsFetchError(f"no weights list for {function!r} (looked for {listing})")
    return listing


def fetch_weights(listing: Path, dest: Path, mirror: str | None = None, timeout: float = 60.0,
                  only: Sequence[str] = (), local: Path | None = None,
                  manifest: Path | None = None, size: str | None = None) -> list[str]:  # fmt: skip
    """Place every entry of ``listing`` but the optional ones (or those named in ``only``) into ``dest``; lines to
    print. A file already there with the listed sha256 is kept; otherwise it is copied from
    ``local`` when that folder holds it, from the function's folder when it is shipped with
    it, else downloaded (``mirror`` replaces each URL's directory). ``manifest``: where to
    write what was placed (``MANIFEST`` in ``dest`` is where the runtime reads it). ``size``:
    of the entries that have one (SAM 2's checkpoints), the one of that size instead of the
    default."""
    entries = listed_weights(listing)
    unknown = set(only) - {entry["name"] for entry in entries}
    if unknown:
        listed = ", ".join(entry["name"] for entry in entries)
        raise WeightsFetchError(f"{', '.join(sorted(unknown))} not in {listing} (it lists {listed})")
    sizes = sorted({entry["size"] for entry in entries if "size" in entry})
    if size is not None and sizes and size not in sizes:
        raise WeightsFetchError(f"no weights of size {size!r} in {listing} (sizes: {', '.join(sizes) or 'none'})")

    def wanted(entry: dict) -> bool:
        if only:
            return entry["name"] in only
        if size is not None and "size" in entry:
            return entry["size"] == size
        return not entry.get("optional")  # other model sizes only when asked for

    entries = [entry for entry in entries if wanted(entry)]
    for entry in entries:
        if size is not None and entry.get("size", size) != size:
            raise WeightsFetchError(
                f"{entry['name']} is the {entry['size']} model, but the size asked for is {size} (MODEL_SIZE): "
                f"ask for size {entry['size']} instead of naming the file"
            )
    if manifest is not None and not dest.resolve().is_relative_to(manifest.parent.resolve()):
        raise WeightsFetchError(f"the manifest {manifest} must lie in {dest} or above it (it names files relative to its folder)")
    dest.mkdir(parents=True, exist_ok=True)
    # The manifest names files relative to its own folder (MODEL_ROOT when it lies there).
    base = manifest.parent.resolve() if manifest is not None else None
    report, placed = [], []
    for entry in entries:
        name, pinned = entry["name"], entry.get("sha256")
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)  # a model folder's files: "folder/file"
        source = _local_source(entry, listing, local)
        if pinned and target.is_file() and file_sha256(target) == pinned:
            digest, how = pinned, "present"
        elif source is not None:
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
            digest, how = file_sha256(target), f"from {source.parent}"
        elif entry.get("url"):
            url = f"{mirror.rstrip('/')}/{name}" if mirror else entry["url"]
            digest, how = _download(url, target, timeout, local / name if local else None), f"from {url}"
        else:
            where = f"in {local}" if local else "beside the list" if entry.get("shipped") else "anywhere"
            raise WeightsFetchError(f"{name}: not found {where}, and {listing.name} gives no URL for it")
        if pinned and digest != pinned:
            target.unlink()
            raise WeightsFetchError(f"{name}: sha256 {digest} ({how}) is not the listed {pinned}; file removed")
        report.append(f"{name}: {how}, sha256 {'ok' if pinned else digest + ' (not pinned in the list: record it)'}")
        if base is not None:
            placed.append({"name": target.resolve().relative_to(base).as_posix(), "sha256": digest,
                           "bytes": target.stat().st_size, "pinned": bool(pinned)})  # fmt: skip
    if manifest is not None:
        write_manifest(manifest, placed)
        report.append(f"manifest: {manifest} ({len(placed)} files)")
    return report


def _local_source(entry: dict, listing: Path, local: Path | None) -> Path | None:
    """Where a local copy of an entry lies: the --from folder, or the function's own models/
    folder for a file shipped with it."""
    candidates = [local / entry["name"]] if local is not None else []
    if entry.get("shipped"):
        candidates.append(listing.parent / "models" / entry["name"])
    return next((path for path in candidates if path.is_file()), None)


def listed_weights(listing: Path, _seen: frozenset[Path] = frozenset()) -> list[dict]:
    """A listing's weights, then those of the functions it includes (Grounding SAM: both
    models; a function named twice is read once)."""
    document = json.loads(listing.read_text())
    entries = list(document.get("weights", []))
    seen = _seen | {listing.resolve()}
    for function in document.get("include", []):
        included = listing_for(function)
        if included.resolve() not in seen:
            entries.extend(listed_weights(included, seen))
            seen |= {included.resolve()}
    return entries


def hub_request(url: str) -> urllib.request.Request:
    """The request for a listed URL: a gated Hugging Face repository's file (facebook/sam3) with
    the build's HF_TOKEN, sent to huggingface.co only (not to the storage it redirects to)."""
    request = urllib.request.Request(url)
    token = os.environ.get("HF_TOKEN")
    if token and urllib.parse.urlsplit(url).hostname == "huggingface.co":
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    return request


def _download(url: str, target: Path, timeout: float, local: Path | None) -> str:
    """Download ``url`` to ``target``; its sha256. ``local``: where a local copy would have been looked for."""
    digest = hashlib.sha256()
    # Written beside the target and renamed: an interrupted download never looks complete.
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as part:
        try:
            with urllib.request.urlopen(hub_request(url), timeout=timeout) as response:  # noqa: S310 - listed URLs
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    part.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            Path(part.name).unlink(missing_ok=True)
            reason = getattr(exc, "reason", exc)
            where = f"put it at {local}" if local else f"copy the file into {target.parent} yourself"
            raise WeightsFetchError(
                f"cannot download {target.name} from {url}: {reason}. Without access to it, {where} "
                "(functions never download weights)"
            ) from None
    shutil.move(part.name, target)
    return digest.hexdigest()


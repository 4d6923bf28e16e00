"""`lsfn weights FUNCTION`: download the weights a function lists in its weights.json and check
their sha256, for a machine with internet access (an image build, a developer's laptop).

Functions never download at request time; this is the one place weights are fetched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from shared.weights import file_sha256

__all__ = ["WeightsFetchError", "fetch_weights", "listed_weights", "listing_for"]

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
                  only: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """Download every non-shipped entry of ``listing`` (or those named in ``only``) into
    ``dest``; lines to print. A file already there with the listed sha256 is kept. ``mirror``
    replaces each URL's directory."""
    entries = listed_weights(listing)
    unknown = set(only) - {entry["name"] for entry in entries}
    if unknown:
        listed = ", ".join(entry["name"] for entry in entries)
        raise WeightsFetchError(f"{', '.join(sorted(unknown))} not in {listing} (it lists {listed})")
    entries = [entry for entry in entries if not only or entry["name"] in only]
    dest.mkdir(parents=True, exist_ok=True)
    report = []
    for entry in entries:
        if entry.get("shipped") or not entry.get("url"):
            continue
        name, pinned = entry["name"], entry.get("sha256")
        target = dest / name
        if pinned and target.is_file() and file_sha256(target) == pinned:
            report.append(f"{name}: present, sha256 ok")
            continue
        url = f"{mirror.rstrip('/')}/{name}" if mirror else entry["url"]
        target.parent.mkdir(parents=True, exist_ok=True)  # a model folder's files: "folder/file"
        digest = _download(url, target, timeout)
        if pinned and digest != pinned:
            target.unlink()
            raise WeightsFetchError(f"{name}: sha256 {digest} from {url} is not the listed {pinned}; file removed")
        report.append(f"{name}: sha256 {digest}" + ("" if pinned else " (not pinned in weights.json: record it)"))
    return report


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


def _download(url: str, target: Path, timeout: float) -> str:
    digest = hashlib.sha256()
    # Written beside the target and renamed: an interrupted download never looks complete.
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as part:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - listed URLs
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    part.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            Path(part.name).unlink(missing_ok=True)
            reason = getattr(exc, "reason", exc)
            raise WeightsFetchError(
                f"cannot download {target.name} from {url}: {reason}. Without access to it, copy the "
                f"file into {target.parent} yourself (functions never download weights)"
            ) from None
    shutil.move(part.name, target)
    return digest.hexdigest()


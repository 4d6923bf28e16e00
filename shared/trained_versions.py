"""A project's trained versions in a weights store: recorded by training jobs, one of them served.

    <function>/<project>/versions/<n>/claim             n taken (created first, only if free)
    <function>/<project>/versions/<n>/<control>.pt      its weights
    <function>/<project>/versions/<n>/manifest.json     what version n is (written last: complete)
    <function>/<project>/served.json                    the version the project is served with

A version is named ``<function>-<project>-<n>@<sha8>`` (sha8: of its weights' content), so the
name Label Studio stores on a prediction says which weights made it, on every instance and
after every restart. The store is the truth: an instance asks it which version a project is
served with, and never decides that itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lsfn.shared.weights_store import StoreError, WeightsStore

__all__ = ["TrainedVersion", "TrainedVersions", "parse_version_name"]

_NAME = re.compile(r"(?P<function>.+)-(?P<project>\d+)-(?P<n>\d+)@(?P<sha>[0-9a-f]{8})")


def parse_version_name(name: str) -> tuple[str, int, int] | None:
    """(function, project, n) of a trained version's name, or None for any other name."""
    found = _NAME.fullmatch(name)
    return (found["function"], int(found["project"]), int(found["n"])) if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TrainedVersion:
    name: str
    project: int
    n: int
    files: Mapping[str, str]  # file name -> sha256
    manifest: Mapping[str, Any]

    @property
    def metric(self) -> float | None:
        value = (self.manifest.get("metrics") or {}).get("after")
        return float(value) if isinstance(value, (int, float)) else None


class TrainedVersions:
    """The trained versions of one function in a store."""

    def __init__(self, store: WeightsStore, function: str) -> None:
        self.store = store
        self.function = function

    def _base(self, project: int) -> str:
        return f"{self.function}/{project}/"

    def _load(self, project: int, n: int) -> TrainedVersion | None:
        raw = self.store.read(f"{self._base(project)}versions/{n}/manifest.json")
        if raw is None:
            return None
        manifest = json.loads(raw)
        return TrainedVersion(manifest["version"], project, n, manifest["files"], manifest)

    def _numbers(self, project: int) -> list[int]:
        prefix = f"{self._base(project)}versions/"
        found = {int(key[len(prefix):].split("/")[0]) for key in self.store.list(prefix)
                 if key.endswith(("/manifest.json", "/claim")) and key[len(prefix):].split("/")[0].isdigit()}  # fmt: skip
        return sorted(found)

    def list(self, project: int | None = None) -> list[TrainedVersion]:
        """The recorded versions of a project (all projects: None), oldest first."""
        if project is None:
            projects = sorted({int(key.split("/")[1]) for key in self.store.list(f"{self.function}/")
                               if key.split("/")[1].isdigit()})  # fmt: skip
            return [v for p in projects for v in self.list(p)]
        return [v for n in self._numbers(project) if (v := self._load(project, n)) is not None]

    def get(self, name: str) -> TrainedVersion | None:
        parsed = parse_version_name(name)
        if parsed is None or parsed[0] != self.function:
            return None
        found = self._load(parsed[1], parsed[2])
        return found if found is not None and found.name == name else None

    def served(self, project: int) -> TrainedVersion | None:
        """The version the project is served with, or None (the function's own weights)."""
        raw = self.store.read(f"{self._base(project)}served.json")
        if raw is None:
            return None
        return self.get(json.loads(raw)["version"])

    def record(self, project: int, files: Sequence[Path], manifest: Mapping[str, Any]) -> TrainedVersion:
        """A new version of ``files`` with ``manifest``: the next number, claimed in the store."""
        hashes = {path.name: _sha256(path) for path in files}
        sha = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(hashes.items())).encode()).hexdigest()
        n = (self._numbers(project) or [0])[-1] + 1
        while True:
            name = f"{self.function}-{project}-{n}@{sha[:8]}"
            full = {**manifest, "version": name, "function": self.function, "project": project, "n": n,
                    "files": hashes, "sha256": sha, "created_at": datetime.now(UTC).isoformat()}  # fmt: skip
            if self.store.create(f"{self._base(project)}versions/{n}/claim", name.encode()):
                break
            n += 1  # another job took it: the next one
        for path in files:
            self.store.upload(f"{self._base(project)}versions/{n}/{path.name}", path)
        # Last: a version is listed (and can be served) once its files are all there.
        self.store.write(f"{self._base(project)}versions/{n}/manifest.json", json.dumps(full, indent=2).encode())
        return TrainedVersion(name, project, n, hashes, full)

    def promote(self, version: TrainedVersion) -> None:
        """Serve ``version`` to its project from now on (every instance, at its next check)."""
        body = {"version": version.name, "promoted_at": datetime.now(UTC).isoformat()}
        self.store.write(f"{self._base(version.project)}served.json", json.dumps(body).encode())

    def fetch(self, version: TrainedVersion, cache: Path) -> Path:
        """A local folder holding the version's files, each checked against its sha256 (kept in
        ``cache`` between calls: a version's files never change)."""
        folder = cache / self.function / str(version.project) / version.name
        for name, digest in version.files.items():
            target = folder / name
            if target.is_file() and _sha256(target) == digest:
                continue
            self.store.download(f"{self._base(version.project)}versions/{version.n}/{name}", target)
            if _sha256(target) != digest:
                target.unlink()
                raise StoreError(f"{self.store.url}: {version.name}/{name} does not match its sha256")
        return folder

"""Which trained version each project is served with, as the weights store says.

An instance asks the store (WEIGHTS_STORE) about a project when it first meets it, before it
answers: every instance then answers with the version the store names. After that it asks at
most every WEIGHTS_REFRESH seconds, in the background: a newly promoted version's files are
fetched (and checked) while the old version goes on serving, then the project switches at once.
WEIGHTS_PIN overrides the store per project (a rollback): a version's name, or PROJECT:base.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lsfn.shared.runtime.logs import logger
from lsfn.shared.settings import Settings
from lsfn.shared.trained_versions import TrainedVersion, TrainedVersions, parse_version_name
from lsfn.shared.weights_store import open_store

__all__ = ["Served", "TrainedServing", "parse_pins", "trained_serving"]


@dataclass(frozen=True)
class Served:
    """A project's trained version: its name and, where the model is loaded, its files' folder."""

    name: str
    folder: Path | None


@dataclass
class _Entry:
    served: Served | None
    checked: float
    refreshing: bool = False


def parse_pins(pins: Sequence[str], function: str) -> dict[int, str | None]:
    """WEIGHTS_PIN entries as {project: version name, or None for the function's own weights}."""
    out: dict[int, str | None] = {}
    for pin in pins:
        project, sep, rest = pin.partition(":")
        if sep and project.isdecimal() and rest == "base":
            out[int(project)] = None
            continue
        parsed = parse_version_name(pin)
        if parsed is None or parsed[0] != function:
            raise ValueError(f"WEIGHTS_PIN {pin!r}: a version of {function} ({function}-<project>-<n>@<sha8>) or <project>:base")
        out[parsed[1]] = pin
    return out


class TrainedServing:
    def __init__(self, versions: TrainedVersions, refresh: float, cache: Path, pins: dict[int, str | None],
                 with_files: bool = True) -> None:  # fmt: skip
        self.versions = versions
        self.refresh = refresh
        self.cache = cache
        self.pins = pins
        self.with_files = with_files  # a front door answers versions only: it needs no files
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._first: dict[int, threading.Lock] = {}  # one first look-up per project at a time
        self._listed: tuple[float, list[str]] | None = None

    def current(self, project: int | None) -> Served | None:
        """The version the project is served with (None: the function's own weights)."""
        if project is None:
            return None
        with self._lock:
            entry = self._entries.get(project)
            stale = entry is not None and not entry.refreshing and time.monotonic() - entry.checked >= self.refresh
            if stale:
                entry.refreshing = True
        if entry is None:
            with self._lock:
                first = self._first.setdefault(project, threading.Lock())
            with first:  # concurrent first requests of a project fetch its files once
                with self._lock:
                    entry = self._entries.get(project)
                if entry is None:
                    served = self._look_up(project, None)
                    with self._lock:
                        entry = self._entries.setdefault(project, _Entry(served, time.monotonic()))
            return entry.served
        if stale:
            threading.Thread(target=self._refresh, args=(project, entry), name="lsfn-weights-refresh", daemon=True).start()
        return entry.served

    def _refresh(self, project: int, entry: _Entry) -> None:
        served = self._look_up(project, entry.served)
        with self._lock:
            if served != entry.served:
                logger.info("trained version switched", extra={"project": project, "version": served.name if served else "base",
                                                               "previous": entry.served.name if entry.served else "base"})  # fmt: skip
            self._entries[project] = _Entry(served, time.monotonic())

    def _look_up(self, project: int, keep: Served | None) -> Served | None:
        """What the store (or a pin) says now, its files fetched; ``keep`` when it cannot be asked."""
        try:
            if project in self.pins:
                name = self.pins[project]
                version = self.versions.get(name) if name else None
                if name and version is None:
                    logger.error("pinned version not in the store", extra={"project": project, "version": name})
            else:
                version = self.versions.served(project)
            return self._served(version)
        except Exception:  # noqa: BLE001 - a store that cannot be reached keeps what is served
            logger.exception("weights store not readable; serving what was served", extra={"project": project})
            return keep

    def _served(self, version: TrainedVersion | None) -> Served | None:
        if version is None:
            return None
        folder = self.versions.fetch(version, self.cache) if self.with_files else None
        return Served(version.name, folder)

    def listed(self) -> list[str]:
        """Every trained version in the store, newest project versions last (at most every
        WEIGHTS_REFRESH seconds from the store)."""
        now = time.monotonic()
        if self._listed is None or now - self._listed[0] >= self.refresh:
            try:
                self._listed = (now, [v.name for v in self.versions.list()])
            except Exception:  # noqa: BLE001 - /versions answers what it knew
                logger.exception("weights store not readable for /versions")
                return self._listed[1] if self._listed else []
        return self._listed[1]


def trained_serving(settings: Settings, function: str, with_files: bool) -> TrainedServing | None:
    """The trained versions of WEIGHTS_STORE for ``function``; None without a store."""
    if not settings.weights_store:
        return None
    store = open_store(settings.weights_store)
    pins = parse_pins(settings.weights_pin, function)
    return TrainedServing(TrainedVersions(store, function), settings.weights_refresh, settings.weights_cache, pins, with_files)

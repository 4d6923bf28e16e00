"""The error of a task URL that could not be fetched, shared by the parts of the image fetcher."""

from __future__ import annotations

__all__ = ["FetchError"]


class FetchError(Exception):
    """A task URL that could not be fetched; ``status`` is what the runtime answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

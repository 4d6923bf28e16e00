"""HTTP errors as JSON bodies, and the status each library exception is answered with.

Label Studio shows only the status line of a failed call (never the body), so the status must
be right; the JSON body ``{"error", "detail", "request_id"}`` is for people reading logs and
for clients other than Label Studio.
"""

from __future__ import annotations

from collections.abc import Mapping

from werkzeug.exceptions import HTTPException

from lsfn.shared.image_decode import ImageError, ImageTooLarge
from lsfn.shared.images import FetchError
from lsfn.shared.label_config import LabelConfigError
from lsfn.shared.protocol import ProtocolError
from lsfn.shared.ssrf import ForbiddenURL
from lsfn.shared.weights import WeightsError

__all__ = ["HTTPError", "TaskError", "client_error"]


class HTTPError(Exception):
    """An error answered as ``status`` with ``{"error": error, "detail": detail}``."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error}: {detail}" if detail else f"{status} {error}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


class TaskError(ValueError):
    """A task whose data the model cannot use (no video, an unreadable file): that task fails
    with a 422, the others are answered."""


# Exceptions caused by a request or a task's data, first match wins (ImageTooLarge is an ImageError).
_CLIENT_ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (ProtocolError, 422, "invalid request"),
    (TaskError, 422, "task failed"),
    (WeightsError, 422, "unusable weights"),
    (LabelConfigError, 422, "unsupported label config"),
    (ForbiddenURL, 422, "forbidden URL"),
    (ImageTooLarge, 413, "image too large"),
    (ImageError, 422, "unreadable image"),
)


def client_error(exc: BaseException) -> HTTPError | None:
    """The HTTP error for an exception caused by what the client sent (or by a task's data);
    None for anything else, which is a bug answered 500."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, HTTPException) and exc.code and 400 <= exc.code < 500:
        # Raised by werkzeug while reading the request (a client gone mid-body, say).
        return HTTPError(exc.code, "bad request", exc.description)
    for kind, status, title in _CLIENT_ERRORS:
        if isinstance(exc, kind):
            return HTTPError(status, title, str(exc))
    if isinstance(exc, FetchError):
        titles = {413: "image too large", 504: "image fetch timed out", 422: "unusable image URL"}
        return HTTPError(exc.status, titles.get(exc.status, "image fetch failed"), exc.message)
    return None

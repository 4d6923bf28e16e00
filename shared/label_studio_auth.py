"""Label Studio's API key as an ``Authorization`` header, for every lsfn program that calls it.

A legacy key (40 hex characters) is sent as ``Token <key>``. A personal access token (a JWT,
Label Studio 1.23's default) is a refresh token: it is exchanged with
``POST /api/token/refresh/ {"refresh": <token>}`` for an access token, sent as
``Bearer <access>`` and kept until shortly before its ``exp``, or until Label Studio refuses it.

Only the rules live here; each caller brings its own transport as a ``post`` callable (the
image fetcher its SSRF-pinned pool and deadline, the deploy client urllib). Standard library
only: the deploy client runs wherever a user has Python.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable

__all__ = ["REFRESH_PATH", "LabelStudioAuth", "Post", "is_personal_token", "renew_at"]

REFRESH_PATH = "/api/token/refresh/"
ACCESS_LIFETIME = 300.0  # Label Studio's access tokens live 300 s
RENEW_MARGIN = 30.0

_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

# POST a body to a path of Label Studio's, without an Authorization header; the answer's body.
# It raises the caller's own error for a status other than 200.
Post = Callable[[str, bytes], bytes | str]
# The caller's error from (the status its callers should see, a message).
ErrorFactory = Callable[[int, str], Exception]


def is_personal_token(key: str) -> bool:
    """A personal access token (a JWT); otherwise a legacy token (40 hex characters)."""
    return _JWT.fullmatch(key) is not None


def renew_at(access: str) -> float:
    """When to replace an access token (time.time()): shortly before the ``exp`` of its JWT
    payload, or of the lifetime Label Studio gives them when it has none."""
    now = time.time()
    try:
        payload = access.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("exp")
    except (IndexError, ValueError, AttributeError):
        exp = None
    valid = isinstance(exp, (int, float)) and not isinstance(exp, bool)
    lifetime = exp - now if valid else ACCESS_LIFETIME
    return now + lifetime - min(RENEW_MARGIN, max(lifetime, 0.0) / 10)


def _access_token(answer: bytes | str) -> str | None:
    """The access token in the exchange's answer, None when it holds none."""
    try:
        access = json.loads(answer)["access"]
    except (ValueError, KeyError, TypeError):
        return None
    return access if isinstance(access, str) and access else None


class LabelStudioAuth:
    """The Authorization header for one API key, shared by the threads of one caller."""

    def __init__(self, key: str | None, error: ErrorFactory) -> None:
        self.key = key or None
        self.personal = self.key is not None and is_personal_token(self.key)
        self._error = error
        self._lock = threading.Lock()
        self._access: tuple[str, float] | None = None  # (header, time.time() to renew at)

    def header(self, post: Post, wait: float | None = None) -> str | None:
        """The header to send (None without a key), exchanging the key through ``post`` when
        no access token is current; waits at most ``wait`` seconds for another thread's."""
        if not self.personal:
            return f"Token {self.key}" if self.key else None
        current = self._access
        if current is not None and time.time() < current[1]:
            return current[0]
        # One exchange at a time; the threads waiting here then use its token.
        if not self._lock.acquire(timeout=-1 if wait is None else max(wait, 0.0)):
            raise self._error(504, "timed out waiting for a Label Studio access token")
        try:
            current = self._access
            if current is None or time.time() >= current[1]:
                access = self._exchange(post)
                current = self._access = (f"Bearer {access}", renew_at(access))
            return current[0]
        finally:
            self._lock.release()

    def refused(self, header: str | None) -> bool:
        """Forget an access token Label Studio refused (answered 401 to); True when a new one
        may help, that is when the key is a personal access token."""
        if not self.personal or header is None:
            return False
        with self._lock:
            if self._access is not None and self._access[0] == header:
                self._access = None
        return True

    def _exchange(self, post: Post) -> str:
        access = _access_token(post(REFRESH_PATH, json.dumps({"refresh": self.key}).encode()))
        if access is None:
            raise self._error(502, f"Label Studio's answer for {REFRESH_PATH} has no access token")
        return access

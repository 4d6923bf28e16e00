"""Google ID tokens for calling a private Cloud Run service: the front door's credentials for
its GPU function (UPSTREAM_AUTH=google-id-token). Minted by google-auth from the instance's
service account (the metadata server on Cloud Run) for the service's URL, and reused until
shortly before they expire (an hour), so a /predict does not wait on the metadata server.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable

__all__ = ["GoogleIdToken", "token_expiry"]

# A token this close to its expiry is replaced (clock skew, a request in flight).
REFRESH_MARGIN = 300.0


def token_expiry(token: str) -> float:
    """The ``exp`` claim of a JWT (not verified: the token came from Google's metadata server
    and is only being cached here); 0 when it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims.get("exp", 0))
    except (IndexError, ValueError, TypeError):
        return 0.0


def _fetch_from_google(audience: str) -> str:
    # google-auth is imported here: only a front door that calls a private service needs it.
    import urllib3
    from google.auth.transport.urllib3 import Request
    from google.oauth2 import id_token

    return id_token.fetch_id_token(Request(urllib3.PoolManager()), audience)


class GoogleIdToken:
    """A token provider for ``HttpUpstream``: an ID token whose audience is ``audience``."""

    def __init__(self, audience: str, fetch: Callable[[str], str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.audience = audience
        self._fetch = fetch or _fetch_from_google
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires - REFRESH_MARGIN:
                token = self._fetch(self.audience)
                # A token without an expiry is kept for a minute.
                self._token, self._expires = token, token_expiry(token) or self._clock() + REFRESH_MARGIN + 60
            return self._token

"""shared.label_studio_auth: the API key's header, and the deploy client that shares it with the
image fetcher (whose own use is tested in test_images.py) over a real loopback server."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lsfn.shared.label_studio import LabelStudio, LabelStudioError
from lsfn.shared.label_studio_auth import REFRESH_PATH, LabelStudioAuth, is_personal_token, renew_at

LEGACY = "0123456789abcdef0123456789abcdef01234567"


def jwt(claims: dict[str, Any]) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{part(b'{}')}.{part(json.dumps(claims).encode())}.{part(b'signature')}"


class Errors(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def test_personal_and_legacy_tokens_are_told_apart() -> None:
    assert is_personal_token(jwt({"token_type": "refresh"}))
    assert not is_personal_token(LEGACY)
    assert LabelStudioAuth(LEGACY, Errors).header(lambda path, body: b"") == f"Token {LEGACY}"
    assert LabelStudioAuth(None, Errors).header(lambda path, body: b"") is None


def test_renewal_comes_before_exp_or_after_the_default_lifetime() -> None:
    now = time.time()
    assert now + 3600 - 30 - 1 < renew_at(jwt({"exp": int(now) + 3600})) <= now + 3600 - 30 + 1
    assert now + 300 - 30 - 1 < renew_at("not a jwt") <= now + 300 - 30 + 1
    assert renew_at(jwt({"exp": int(now) - 60})) <= now  # already expired


def test_the_exchange_posts_the_token_and_reads_the_access_token() -> None:
    pat, posted = jwt({"token_type": "refresh"}), []

    def post(path: str, body: bytes) -> bytes:
        posted.append((path, json.loads(body)))
        return json.dumps({"access": "a.b.c"}).encode()

    auth = LabelStudioAuth(pat, Errors)
    assert auth.header(post) == "Bearer a.b.c" == auth.header(post)
    assert posted == [(REFRESH_PATH, {"refresh": pat})]  # kept until renew_at
    assert auth.refused("Bearer a.b.c") and auth.header(post) == "Bearer a.b.c" and len(posted) == 2
    with pytest.raises(Errors) as caught:
        LabelStudioAuth(pat, Errors).header(lambda path, body: b'{"detail": "no"}')
    assert caught.value.status == 502 and "no access token" in str(caught.value)


@pytest.fixture
def label_studio() -> Iterator[tuple[str, dict[str, Any]]]:
    """A loopback Label Studio that issues access tokens and refuses one once when told to."""
    state: dict[str, Any] = {"issued": [], "refuse": False, "seen": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == REFRESH_PATH and "Authorization" not in self.headers
            state["issued"].append(jwt({"exp": int(time.time()) + 3600, "n": len(state["issued"]), **body}))
            self.answer(200, {"access": state["issued"][-1]})

        def do_GET(self) -> None:
            header = self.headers.get("Authorization")
            state["seen"].append(header)
            current = bool(state["issued"]) and header == f"Bearer {state['issued'][-1]}"
            if state["refuse"] or not current:
                state["refuse"] = False
                self.answer(401, {"detail": "Given token not valid for any token type"})
            else:
                self.answer(200, {"ok": True})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_the_deploy_client_exchanges_a_personal_token_and_again_on_401(label_studio) -> None:
    url, state = label_studio
    ls = LabelStudio(url, jwt({"token_type": "refresh"}))
    assert len(state["issued"]) == 1  # exchanged when the client is made
    assert ls.get("/api/projects") == {"ok": True}
    state["refuse"] = True
    assert ls.get("/api/projects") == {"ok": True}
    assert len(state["issued"]) == 2
    assert state["seen"] == [f"Bearer {state['issued'][0]}", f"Bearer {state['issued'][0]}", f"Bearer {state['issued'][1]}"]
    assert ls.authorization() == f"Bearer {state['issued'][1]}"


def test_the_deploy_client_sends_a_legacy_token_as_is(label_studio) -> None:
    url, state = label_studio
    with pytest.raises(LabelStudioError, match="Label Studio answered 401 to GET /api/projects") as caught:
        LabelStudio(url, LEGACY).get("/api/projects")  # refused by this server, and not retried
    assert caught.value.status == 401
    assert state["seen"] == [f"Token {LEGACY}"] and state["issued"] == []

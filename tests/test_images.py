"""shared.images: fetching task images over real loopback HTTP, under the SSRF policy.

Every server here is a real listener on 127.0.0.0/8. The only thing observed from inside is
``shared.fetch_connections._connect``, the one place the fetcher opens a socket, so each SSRF
probe can assert that no connection was even attempted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from lsfn.shared import fetch_connections
from lsfn.shared.images import FetchError, ImageFetcher
from lsfn.shared.settings import Settings
from lsfn.shared.ssrf import ForbiddenURL

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # never decoded here: any bytes do
LEGACY_KEY = "0123456789abcdef0123456789abcdef01234567"

Route = Callable[[BaseHTTPRequestHandler], None]


def reply(h: BaseHTTPRequestHandler, status: int = 200, body: bytes = b"",
          headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def serve(body: bytes = IMAGE, status: int = 200) -> Route:
    return lambda h: reply(h, status, body)


def redirect(location: str, status: int = 302) -> Route:
    return lambda h: reply(h, status, headers={"Location": location})


class Stub:
    """A loopback HTTP/1.1 server (keep-alive) that routes by path and records every request."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.requests.append({"method": self.command, "path": self.path, "headers": self.headers,
                                      "body": body})
                stub.routes.get(urlsplit(self.path).path, serve(b"not found", 404))(self)

            do_POST = do_GET

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # type: ignore[method-assign]
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def hits(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if urlsplit(r["path"]).path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Listener:
    """A TCP port that counts the connections made to it and never answers."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    def connections(self) -> int:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.accepted
            conn.close()
            self.accepted += 1


def jwt(claims: dict[str, Any], secret: bytes = b"not-a-secret") -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signed = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + part(json.dumps(claims).encode())
    return signed + "." + part(hmac.new(secret, signed.encode(), hashlib.sha256).digest())


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings.model_validate still reads the environment for the keys it is not given.
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN",
                 "FETCH_ALLOWED_HOSTS", "FETCH_TIMEOUT", "MAX_IMAGE_BYTES", "IMAGE_CACHE_BYTES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def servers() -> Iterator[Callable[..., Stub]]:
    made: list[Stub] = []

    def make(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Stub:
        made.append(Stub(host, tls))
        return made[-1]

    yield make
    for stub in made:
        stub.close()


@pytest.fixture
def fetchers() -> Iterator[Callable[..., ImageFetcher]]:
    made: list[ImageFetcher] = []

    def make(on_cache: Callable[[bool], None] | None = None, **env: Any) -> ImageFetcher:
        made.append(ImageFetcher(Settings.model_validate(env), on_cache=on_cache))
        return made[-1]

    yield make
    for fetcher in made:
        fetcher.close()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every (address, port) the fetcher connects a socket to."""
    seen: list[tuple[str, int]] = []
    real = fetch_connections._connect

    def spy(family: int, address: tuple[Any, ...], *args: Any) -> socket.socket:
        seen.append((address[0], address[1]))
        return real(family, address, *args)

    monkeypatch.setattr(fetch_connections, "_connect", spy)
    return seen


def fetch_error(fetcher: ImageFetcher, value: str, **kwargs: Any) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(value, **kwargs)
    return caught.value


# --- Label Studio paths and its API key ----------------------------------------------------------

def test_label_studio_paths_with_a_legacy_token_keep_the_url_prefix(servers, fetchers, connections) -> None:
    ls = servers()
    ls.routes["/ls/data/upload/2/abc-img.jpg"] = serve(IMAGE)
    ls.routes["/ls/data/local-files/"] = serve(b"local")
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url + "/ls/", LABEL_STUDIO_API_KEY=LEGACY_KEY)

    assert fetcher.fetch("/data/upload/2/abc-img.jpg") == IMAGE
    assert fetcher.fetch("/data/local-files/?d=dir/x.jpg") == b"local"
    # An absolute URL on Label Studio's host:port is Label Studio too: its token, never the project's.
    assert fetcher.fetch(ls.url + "/ls/data/local-files/?d=other.jpg", credentials=("u", "p")) == b"local"

    assert [r["path"] for r in ls.requests] == [
        "/ls/data/upload/2/abc-img.jpg", "/ls/data/local-files/?d=dir/x.jpg", "/ls/data/local-files/?d=other.jpg"]
    assert {r["headers"]["Authorization"] for r in ls.requests} == {f"Token {LEGACY_KEY}"}
    assert connections == [("127.0.0.1", ls.port)]  # one pooled connection for all three


def test_a_personal_access_token_is_exchanged_reused_and_renewed(servers, fetchers) -> None:
    ls = servers()
    pat = jwt({"token_type": "refresh", "exp": int(time.time()) + 10**8, "user_id": 1})
    # Lifetimes of the access tokens handed out in turn; the second is already expired, the third
    # has no exp claim (then 300 s is assumed).
    lifetimes: list[int | None] = [3600, -60, None, 3600]
    issued: list[str] = []
    refuse = {"next": False}

    def refresh(h: BaseHTTPRequestHandler) -> None:
        lifetime = lifetimes[len(issued)]
        claims = {"token_type": "access", "n": len(issued)}
        if lifetime is not None:
            claims["exp"] = int(time.time()) + lifetime
        issued.append(jwt(claims))
        reply(h, 200, json.dumps({"access": issued[-1]}).encode(), {"Content-Type": "application/json"})

    def upload(h: BaseHTTPRequestHandler) -> None:
        if refuse["next"] or h.headers.get("Authorization") != f"Bearer {issued[-1]}":
            refuse["next"] = False
            reply(h, 401, b'{"detail": "Authentication credentials were not provided."}')
        else:
            reply(h, 200, IMAGE)

    ls.routes["/api/token/refresh/"] = refresh
    for name in "abcde":
        ls.routes[f"/data/upload/1/{name}.jpg"] = upload
    ls.routes["/data/upload/1/never.jpg"] = serve(b"", 401)
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=pat)

    fetcher.fetch("/data/upload/1/a.jpg")
    fetcher.fetch("/data/upload/1/b.jpg")
    assert len(issued) == 1  # reused
    refuse["next"] = True  # Label Studio refuses a token once: renewed, and the request retried once
    fetcher.fetch("/data/upload/1/c.jpg")
    assert len(issued) == 2
    assert [r["headers"]["Authorization"] for r in ls.hits("/data/upload/1/c.jpg")] == [
        f"Bearer {issued[0]}", f"Bearer {issued[1]}"]
    fetcher.fetch("/data/upload/1/d.jpg")  # the second token is past its exp: renewed before the request
    assert len(issued) == 3 and len(ls.hits("/data/upload/1/d.jpg")) == 1
    fetcher.fetch("/data/upload/1/e.jpg")
    assert len(issued) == 3

    error = fetch_error(fetcher, "/data/upload/1/never.jpg")
    assert error.status == 502 and "LABEL_STUDIO_API_KEY" in error.message and "401" in error.message
    assert len(ls.hits("/data/upload/1/never.jpg")) == 2 and len(issued) == 4  # one retry only

    exchanges = ls.hits("/api/token/refresh/")
    assert all(r["method"] == "POST" and "Authorization" not in r["headers"] for r in exchanges)
    assert {r["body"] for r in exchanges} == {json.dumps({"refresh": pat}).encode()}
    assert pat not in error.message


def test_concurrent_fetches_share_one_token_exchange(servers, fetchers) -> None:
    ls = servers()

    def refresh(h: BaseHTTPRequestHandler) -> None:
        time.sleep(0.2)  # the other fetches arrive while this exchange is under way
        reply(h, 200, json.dumps({"access": jwt({"exp": int(time.time()) + 300})}).encode())

    ls.routes["/api/token/refresh/"] = refresh
    for n in range(4):
        ls.routes[f"/data/upload/1/{n}.jpg"] = serve(IMAGE)
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=jwt({"token_type": "refresh"}))
    assert fetcher.fetch_many([(f"/data/upload/1/{n}.jpg", 1, None) for n in range(4)]) == [IMAGE] * 4
    assert len(ls.hits("/api/token/refresh/")) == 1


def test_without_an_api_key_label_studio_refusal_names_the_setting(servers, fetchers) -> None:
    ls = servers()
    ls.routes["/data/upload/2/x.jpg"] = lambda h: reply(
        h, 200 if "Authorization" in h.headers else 401, b'{"detail": "Authentication credentials were not provided."}')
    error = fetch_error(fetchers(LABEL_STUDIO_URL=ls.url), "/data/upload/2/x.jpg")
    assert error.status == 502 and "LABEL_STUDIO_API_KEY" in error.message and "401" in error.message
    assert "Authorization" not in ls.requests[0]["headers"]


def test_label_studio_paths_need_label_studio_url(fetchers, connections) -> None:
    error = fetch_error(fetchers(), "/data/upload/2/x.jpg")
    assert error.status == 422 and "LABEL_STUDIO_URL" in error.message
    assert connections == []


# --- cloud storage URIs -----------------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "status"), [("s3://bucket/dir/img 1.png", 302), ("gs://bucket/a.png", 303),
                                             ("azure-blob://container/a.png", 307)])
def test_cloud_uris_are_resolved_by_label_studio_and_the_presigned_url_gets_no_token(
    servers, fetchers, uri: str, status: int
) -> None:
    ls, bucket = servers(), servers("127.0.0.2")
    ls.routes["/tasks/7/resolve/"] = redirect(bucket.url + "/obj.png?X-Amz-Signature=s3cr3t", status)
    bucket.routes["/obj.png"] = serve(IMAGE)
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_KEY, FETCH_ALLOWED_HOSTS="127.0.0.2")

    assert fetcher.fetch(uri, task_id=7, credentials=("u", "p")) == IMAGE
    (resolve,) = ls.requests
    assert parse_qs(urlsplit(resolve["path"]).query)["fileuri"] == [base64.urlsafe_b64encode(uri.encode()).decode()]
    assert resolve["headers"]["Authorization"] == f"Token {LEGACY_KEY}"
    (presigned,) = bucket.requests
    assert presigned["path"] == "/obj.png?X-Amz-Signature=s3cr3t"
    assert "Authorization" not in presigned["headers"]


def test_cloud_uri_bytes_proxied_by_label_studio_and_failures(servers, fetchers) -> None:
    ls = servers()
    ls.routes["/tasks/3/resolve/"] = serve(IMAGE)
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_KEY)
    assert fetcher.fetch("s3://bucket/a.png", task_id=3) == IMAGE

    error = fetch_error(fetcher, "s3://bucket/a.png", task_id=None)
    assert error.status == 422 and "task id" in error.message
    # Another task naming the same URI is resolved for itself (its project may have no such
    # storage), not served from the first task's fetch.
    ls.routes["/tasks/5/resolve/"] = lambda h: reply(h, 403, b'{"detail": "no storage"}')
    assert fetch_error(fetcher, "s3://bucket/a.png", task_id=5).status == 502
    assert len(ls.hits("/tasks/3/resolve/")) == 1 and fetcher.fetch("s3://bucket/a.png", task_id=3) == IMAGE
    error = fetch_error(fetcher, "s3://bucket/none.png", task_id=4)  # no matching storage: 404
    assert error.status == 502 and "404" in error.message and "s3://bucket/none.png" in error.message


# --- the project's credentials ------------------------------------------------------------------------

def test_project_credentials_go_as_basic_auth_to_the_first_host_only(servers, fetchers) -> None:
    ls, files, other = servers(), servers("127.0.0.2"), servers("127.0.0.3")
    files.routes["/a.jpg"] = serve(IMAGE)
    files.routes["/same-host.jpg"] = redirect("/a.jpg")
    files.routes["/other-host.jpg"] = redirect(other.url + "/b.jpg")
    other.routes["/b.jpg"] = serve(IMAGE)
    ls.routes["/data/upload/1/c.jpg"] = serve(IMAGE)
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_KEY,
                       FETCH_ALLOWED_HOSTS="127.0.0.2, 127.0.0.3")
    credentials = ("user", "pa:ss")
    basic = "Basic " + base64.b64encode(b"user:pa:ss").decode()

    for value in (files.url + "/same-host.jpg", files.url + "/other-host.jpg", "/data/upload/1/c.jpg"):
        assert fetcher.fetch(value, credentials=credentials) == IMAGE
    assert [r["headers"]["Authorization"] for r in files.requests] == [basic] * 3
    assert "Authorization" not in other.requests[0]["headers"]
    assert ls.requests[0]["headers"]["Authorization"] == f"Token {LEGACY_KEY}"


# --- data: URLs ------------------------------------------------------------------------------------------

def test_data_urls_are_decoded_locally(fetchers, connections) -> None:
    hits: list[bool] = []
    fetcher = fetchers(on_cache=hits.append, MAX_IMAGE_BYTES=len(IMAGE))
    encoded = base64.b64encode(IMAGE).decode()
    assert fetcher.fetch(f"data:image/png;base64,{encoded}") == IMAGE
    assert fetcher.fetch(f"data:image/png;base64,{encoded[:40]}\n{encoded[40:]}") == IMAGE
    assert fetcher.fetch("data:,a%20b%00") == b"a b\x00"
    assert connections == [] and hits == []  # no network, no cache


@pytest.mark.parametrize(("url", "status"), [
    ("data:image/png;base64", 422),  # no comma
    ("data:image/png;base64,@@@@", 422),
    ("data:image/png;base64,QUJD=QUJD", 422),
    ("data:image/png;base64," + base64.b64encode(b"x" * 101).decode(), 413),
    ("data:image/png;base64," + "A" * 10**6, 413),
    ("data:text/plain," + "x" * 101, 413),
])
def test_bad_data_urls(fetchers, url: str, status: int) -> None:
    assert fetch_error(fetchers(MAX_IMAGE_BYTES=100), url).status == status


# --- the SSRF policy ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/x.jpg",
    "http://192.168.1.1/x.jpg",
    "http://172.16.0.1/x.jpg",
    "http://100.64.0.1/x.jpg",
    "http://[fd00::1]/x.jpg",
    "http://[::1]:8080/x.jpg",
    "http://[::ffff:169.254.169.254]/x.jpg",
    "http://0.0.0.0/x.jpg",
    "https://127.0.0.9/x.jpg",
])
def test_non_public_addresses_are_refused_without_a_connection(servers, fetchers, connections, url: str) -> None:
    fetcher = fetchers(LABEL_STUDIO_URL=servers().url)
    with pytest.raises(ForbiddenURL, match="non-public"):
        fetcher.fetch(url)
    assert connections == []


def test_loopback_is_refused_unless_it_is_label_studio(servers, fetchers, connections) -> None:
    ls = servers()  # allowed by its host name, "127.0.0.1"
    elsewhere, same_address = Listener("127.0.0.2"), Listener("127.0.0.1")
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url)
    for url in (f"http://127.0.0.2:{elsewhere.port}/",
                # "localhost" resolves to 127.0.0.1, but the allowed host is the name "127.0.0.1"
                f"http://localhost:{same_address.port}/", f"http://localhost:{ls.port}/"):
        with pytest.raises(ForbiddenURL):
            fetcher.fetch(url)
    assert connections == [] and ls.requests == []
    assert elsewhere.connections() == 0 and same_address.connections() == 0


def test_label_studio_host_is_allowed_on_its_own_port_only(servers, fetchers, connections) -> None:
    ls, other_service = servers(), Listener("127.0.0.1")  # say, Redis beside Label Studio
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_KEY)
    with pytest.raises(ForbiddenURL):
        fetcher.fetch(f"http://127.0.0.1:{other_service.port}/")
    assert connections == [] and other_service.connections() == 0


@pytest.mark.parametrize("how", ["task URL", "redirect"])
def test_a_url_whose_host_reads_two_ways_never_gets_the_token(servers, fetchers, connections, how: str) -> None:
    """``http://evil\\@ls/`` is Label Studio to urlsplit and evil to urllib3."""
    ls, evil = servers(), servers("127.0.0.2")
    evil.routes["/x.jpg"] = serve(IMAGE)
    tricky = f"http://127.0.0.2:{evil.port}\\@127.0.0.1:{ls.port}/x.jpg"
    ls.routes["/data/upload/1/x.jpg"] = redirect(tricky)
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_KEY, FETCH_ALLOWED_HOSTS="127.0.0.2")
    with pytest.raises(ForbiddenURL, match="ambiguous"):
        fetcher.fetch(tricky if how == "task URL" else "/data/upload/1/x.jpg")
    assert evil.requests == []
    assert connections == ([] if how == "task URL" else [("127.0.0.1", ls.port)])


@pytest.mark.parametrize("target", ["metadata", "loopback", "file", "data"])
def test_redirects_are_checked_at_every_hop(servers, fetchers, connections, target: str) -> None:
    ls, forbidden = servers(), Listener("127.0.0.2")
    location = {"metadata": "http://169.254.169.254/latest/meta-data/iam/",
                "loopback": f"http://127.0.0.2:{forbidden.port}/",
                "file": "file:///etc/passwd", "data": "data:,x"}[target]
    ls.routes["/data/upload/1/x.jpg"] = redirect(location)
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_KEY)
    with pytest.raises(ForbiddenURL):
        fetcher.fetch("/data/upload/1/x.jpg")
    assert connections == [("127.0.0.1", ls.port)] and forbidden.connections() == 0


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.jpg", "gopher://example.com/",
                                 "img.jpg", "javascript:alert(1)"])
def test_other_schemes_are_refused(fetchers, connections, url: str) -> None:
    with pytest.raises(ForbiddenURL):
        fetchers().fetch(url)
    assert connections == []


@pytest.mark.parametrize("allowed", ["127.0.0.2", "127.0.0.0/30", "localhost"])
def test_the_allow_list_opens_hosts_and_networks(servers, fetchers, allowed: str) -> None:
    files = servers("127.0.0.1" if allowed == "localhost" else "127.0.0.2")
    files.routes["/x.jpg"] = serve(IMAGE)
    host = "localhost" if allowed == "localhost" else "127.0.0.2"
    fetcher = fetchers(FETCH_ALLOWED_HOSTS=allowed)
    assert fetcher.fetch(f"http://{host}:{files.port}/x.jpg") == IMAGE
    assert files.requests[0]["headers"]["Host"] == f"{host}:{files.port}"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("certs")

    def make(name: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        return cert, key

    return make


def test_https_verifies_the_certificate_for_the_host_name(servers, fetchers, connections, certificates,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = certificates("localhost")
    names: list[str | None] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda sock, name, context: names.append(name)  # type: ignore[assignment,return-value]
    files = servers("127.0.0.1", tls)
    files.routes["/x.jpg"] = serve(IMAGE)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted as a CA by the fetcher's context
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="localhost, 127.0.0.1")

    assert fetcher.fetch(f"https://localhost:{files.port}/x.jpg") == IMAGE
    assert names == ["localhost"] and connections[-1] == ("127.0.0.1", files.port)
    assert files.requests[0]["headers"]["Host"] == f"localhost:{files.port}"
    # The same server by its address: the certificate does not name it.
    error = fetch_error(fetcher, f"https://127.0.0.1:{files.port}/x.jpg")
    assert error.status == 502 and "certificate" in error.message.lower()


# --- limits, timeouts and upstream errors --------------------------------------------------------------

def test_a_content_length_over_the_limit_is_refused_before_the_body(servers, fetchers) -> None:
    files, release = servers("127.0.0.2"), threading.Event()

    def headers_only(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(10**9))
        h.end_headers()
        h.wfile.flush()
        release.wait(10)  # the body never comes: reading it would time out (504)

    files.routes["/huge.jpg"] = headers_only
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2", MAX_IMAGE_BYTES=1000, FETCH_TIMEOUT=5)
    try:
        error = fetch_error(fetcher, files.url + "/huge.jpg")
    finally:
        release.set()
    assert error.status == 413 and "1000000000" in error.message


def chunked(total: int, size: int = 4096) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for start in range(0, total, size):
            n = min(size, total - start)
            h.wfile.write(b"%x\r\n" % n + b"x" * n + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    return route


def test_a_chunked_body_is_cut_off_at_the_limit(servers, fetchers) -> None:
    files = servers("127.0.0.2")
    files.routes["/small.jpg"] = chunked(10_000)
    files.routes["/endless.jpg"] = chunked(10**8)
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2", MAX_IMAGE_BYTES=10_000)
    assert fetcher.fetch(files.url + "/small.jpg") == b"x" * 10_000
    assert fetch_error(fetcher, files.url + "/endless.jpg").status == 413


def trickle(head: bytes, then: bytes) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(head)
        for byte in then:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.05)  # each wait is far below the read timeout

    return route


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",  # body
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",  # body until the connection closes
    b"HTTP/1.1 200 OK\r\nX-Slow: ",  # headers
])
def test_a_trickling_server_times_out_with_the_overall_deadline(servers, fetchers, head: bytes) -> None:
    files = servers("127.0.0.2")
    files.routes["/slow.jpg"] = trickle(head, b"y" * 1000)
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2", FETCH_TIMEOUT=0.5)
    started = time.monotonic()
    error = fetch_error(fetcher, files.url + "/slow.jpg")
    assert error.status == 504 and "FETCH_TIMEOUT" in error.message
    assert time.monotonic() - started < 2.0


def test_a_silent_server_times_out(fetchers) -> None:
    silent = Listener("127.0.0.2")
    error = fetch_error(fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2", FETCH_TIMEOUT=0.3),
                        f"http://127.0.0.2:{silent.port}/x.jpg")
    assert error.status == 504 and silent.connections() == 1


def test_upstream_errors_name_the_status_and_the_url_without_secrets(servers, fetchers) -> None:
    files = servers("127.0.0.2")
    files.routes["/loop.jpg"] = redirect("/loop.jpg")
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2")
    error = fetch_error(fetcher, f"http://user:pw-s3cr3t@127.0.0.2:{files.port}/missing.jpg?X-Amz-Signature=s3cr3t")
    assert error.status == 502 and "404" in error.message
    assert f"http://127.0.0.2:{files.port}/missing.jpg" in error.message and "s3cr3t" not in error.message
    error = fetch_error(fetcher, files.url + "/loop.jpg")
    assert error.status == 502 and "redirects" in error.message and len(files.hits("/loop.jpg")) == 6


def test_unreachable_hosts_are_bad_gateways(fetchers) -> None:
    with socket.create_server(("127.0.0.2", 0)) as closed:
        port = closed.getsockname()[1]
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2, nonexistent.invalid")
    error = fetch_error(fetcher, f"http://127.0.0.2:{port}/x.jpg")
    assert error.status == 502 and "refused" in error.message.lower()
    error = fetch_error(fetcher, "http://nonexistent.invalid/x.jpg")
    assert error.status == 502 and "resolve" in error.message


def test_a_keep_alive_connection_dropped_by_the_server_is_retried_once(servers, fetchers, connections) -> None:
    files = servers("127.0.0.2")

    def second_request_dropped(h: BaseHTTPRequestHandler) -> None:
        served = getattr(h, "served", 0)
        h.served = served + 1  # type: ignore[attr-defined]
        if served:  # as if the server's keep-alive timeout ran out just as the request came
            h.close_connection = True
        else:
            reply(h, 200, IMAGE)

    files.routes["/x.jpg"] = second_request_dropped
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2", IMAGE_CACHE_BYTES=0)
    assert fetcher.fetch(files.url + "/x.jpg") == fetcher.fetch(files.url + "/x.jpg") == IMAGE
    assert len(files.requests) == 3 and len(connections) == 2


# --- the cache ---------------------------------------------------------------------------------------------

def test_a_cached_image_is_not_fetched_again(servers, fetchers) -> None:
    files, hits = servers("127.0.0.2"), []
    files.routes["/x.jpg"] = serve(IMAGE)
    fetcher = fetchers(on_cache=hits.append, FETCH_ALLOWED_HOSTS="127.0.0.2")
    assert fetcher.fetch(files.url + "/x.jpg") == fetcher.fetch(files.url + "/x.jpg") == IMAGE
    assert len(files.requests) == 1 and hits == [False, True]
    files.routes["/x.jpg"] = serve(b"new")
    assert fetcher.fetch(files.url + "/x.jpg", cached=False) == b"new" and len(files.requests) == 2
    assert fetcher.fetch(files.url + "/x.jpg") == IMAGE and hits == [False, True, True]  # not stored either


def test_the_cache_keeps_its_byte_budget_least_recently_used_first(servers, fetchers) -> None:
    files = servers("127.0.0.2")
    for name in "abc":
        files.routes[f"/{name}"] = serve(name.encode() * 100)
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2", IMAGE_CACHE_BYTES=250)
    for name in "abacab":  # c evicts b (a was used more recently); b then evicts c
        assert fetcher.fetch(f"{files.url}/{name}") == name.encode() * 100
    assert [len(files.hits(f"/{name}")) for name in "abc"] == [1, 2, 1]


def test_identity_names_what_a_fetch_would_get_without_fetching(fetchers, connections) -> None:
    fetcher = fetchers(LABEL_STUDIO_URL="http://ls.example:8080", LABEL_STUDIO_API_KEY=LEGACY_KEY)
    same = fetcher.identity("/data/upload/1/a.png") == fetcher.identity("  /data/upload/1/a.png")
    assert same and fetcher.identity("/data/upload/1/a.png") != fetcher.identity("/data/upload/1/b.png")
    url = "https://files.example/a b.png"
    assert fetcher.identity(url) != fetcher.identity(url, credentials=("u", "p")) != fetcher.identity(url, credentials=("u", "q"))
    assert fetcher.identity("s3://b/a.png", task_id=1) != fetcher.identity("s3://b/a.png", task_id=2)
    assert fetcher.identity("data:image/png;base64,AAAA") != fetcher.identity("data:image/png;base64,AAAB")
    with pytest.raises(ForbiddenURL):
        fetcher.identity("file:///etc/passwd")
    assert connections == []  # nothing was fetched


def test_cache_entries_are_per_credentials(servers, fetchers) -> None:
    files = servers("127.0.0.2")
    files.routes["/x.jpg"] = lambda h: reply(h, 200, (h.headers.get("Authorization") or "none").encode())
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2")
    url = files.url + "/x.jpg"
    results = [fetcher.fetch(url, credentials=credentials)
               for credentials in (("a", "1"), ("b", "2"), None, ("a", "1"), None)]
    assert len(files.requests) == 3
    assert results[0] == results[3] != results[1] and results[2] == results[4] == b"none"


@pytest.mark.parametrize(("budget", "requests"), [(0, 2), (len(IMAGE) - 1, 2), (len(IMAGE), 1)])
def test_a_zero_budget_disables_the_cache_and_big_images_are_not_kept(servers, fetchers, budget: int,
                                                                      requests: int) -> None:
    files, hits = servers("127.0.0.2"), []
    files.routes["/x.jpg"] = serve(IMAGE)
    fetcher = fetchers(on_cache=hits.append, FETCH_ALLOWED_HOSTS="127.0.0.2", IMAGE_CACHE_BYTES=budget)
    fetcher.fetch(files.url + "/x.jpg")
    fetcher.fetch(files.url + "/x.jpg")
    assert len(files.requests) == requests
    assert hits == ([] if budget == 0 else [False, requests == 1])


def test_simultaneous_fetches_of_one_image_make_one_request(servers, fetchers) -> None:
    files, release = servers("127.0.0.2"), threading.Event()
    files.routes["/x.jpg"] = lambda h: (release.wait(5), reply(h, 200, IMAGE))
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2", FETCH_TIMEOUT=5)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(fetcher.fetch(files.url + "/x.jpg"))) for _ in range(3)]
    threads[0].start()
    deadline = time.monotonic() + 5
    while not files.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.1)
    release.set()
    for thread in threads:
        thread.join(5)
    assert results == [IMAGE] * 3 and len(files.requests) == 1


# --- fetch_many ------------------------------------------------------------------------------------------

def test_fetch_many_keeps_the_order_and_returns_failures_in_place(servers, fetchers) -> None:
    ls = servers()
    ls.routes["/data/upload/1/a.jpg"] = serve(b"a")
    ls.routes["/data/upload/1/c.jpg"] = serve(b"c")
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_KEY)
    results = fetcher.fetch_many([("/data/upload/1/a.jpg", 1, None), ("/data/upload/1/missing.jpg", 2, None),
                                  ("/data/upload/1/c.jpg", 3, None), ("http://169.254.169.254/", 4, None),
                                  ("data:,d", 5, None)])
    assert results[0] == b"a" and results[2] == b"c" and results[4] == b"d"
    assert isinstance(results[1], FetchError) and results[1].status == 502
    assert isinstance(results[3], ForbiddenURL)
    assert fetcher.fetch_many([]) == []


def test_fetch_many_fetches_concurrently(servers, fetchers) -> None:
    files = servers("127.0.0.2")
    together = threading.Barrier(4, timeout=5)  # opens only when four requests are in flight at once

    def route(h: BaseHTTPRequestHandler) -> None:
        try:
            together.wait()
        except threading.BrokenBarrierError:
            reply(h, 500)
        else:
            reply(h, 200, IMAGE)

    for n in range(4):
        files.routes[f"/{n}.jpg"] = route
    fetcher = fetchers(FETCH_ALLOWED_HOSTS="127.0.0.2", FETCH_TIMEOUT=10)
    assert fetcher.fetch_many([(f"{files.url}/{n}.jpg", None, None) for n in range(4)]) == [IMAGE] * 4


def test_fetch_to_streams_into_a_file_with_its_own_limit(servers, fetchers, tmp_path) -> None:
    ls = servers()
    video = bytes(range(256)) * 4000  # ~1 MB, more than this fetcher's image limit
    ls.routes["/data/upload/1/clip.mp4"] = serve(video)
    fetcher = fetchers(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_KEY, MAX_IMAGE_BYTES=1000)
    with open(tmp_path / "clip.mp4", "wb") as sink:
        written = fetcher.fetch_to("/data/upload/1/clip.mp4", sink, limit=len(video), timeout=5)
    assert written == len(video) and (tmp_path / "clip.mp4").read_bytes() == video
    with open(tmp_path / "short.mp4", "wb") as sink, pytest.raises(FetchError) as refused:
        fetcher.fetch_to("/data/upload/1/clip.mp4", sink, limit=len(video) - 1, timeout=5)
    assert refused.value.status == 413
    assert len(ls.hits("/data/upload/1/clip.mp4")) == 2  # never cached

"""What a task's data value points to: the URL to fetch and the credentials it is fetched with.

A value is a data: URL (decoded here, never fetched), a Label Studio path (``/data/upload/...``,
``/storage-data/...``: Label Studio's URL with its token), a cloud storage URI (``s3://``,
``gs://``, ``azure-blob://``: resolved by Label Studio for its task) or an absolute URL, which
the SSRF policy checks, and which is Label Studio's own when it names Label Studio's origin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, unquote_to_bytes, urlencode, urlsplit

from urllib3.exceptions import LocationValueError
from urllib3.util import parse_url

from lsfn.shared.fetch_error import FetchError
from lsfn.shared.ssrf import AddressPolicy, ForbiddenURL, display_url

__all__ = ["CLOUD_SCHEMES", "FetchTarget", "FetchTargets", "decode_data_url", "origin", "parse_value", "resolving"]

# The URI schemes of Label Studio's import storages (io_storages url_scheme).
CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob"})

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class FetchTarget:
    url: str  # the URL to fetch
    via_ls: bool  # Label Studio's: fetched with its API key
    key: str  # the cache key (a cloud URI as written, with its task)
    basic: str | None  # the project's basic auth header, for a URL not Label Studio's
    digest: str | None  # a digest of those credentials, to keep them in the cache key


def origin(parts: SplitResult) -> tuple[str, str, int | None]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").rstrip("."), parts.port or {"http": 80, "https": 443}.get(scheme)


def parse_value(value: str) -> tuple[str, str]:
    """A task's data value, stripped, and its URL scheme (lower case; "" for a path)."""
    if not isinstance(value, str) or not value.strip():
        raise FetchError(422, "the task has no file URL")
    value = value.strip()
    match = _SCHEME.match(value)
    return value, match.group(1).lower() if match else ""


@contextmanager
def resolving(value: str, scheme: str) -> Iterator[None]:
    """Name the cloud URI in a failure to fetch what Label Studio resolved it to."""
    try:
        yield
    except FetchError as exc:
        if scheme in CLOUD_SCHEMES:
            raise FetchError(exc.status, f"{exc.message} (resolving {display_url(value)})") from None
        raise


def decode_data_url(url: str, limit: int) -> bytes:
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise FetchError(422, "malformed data: URL: no comma before the data")
    too_large = FetchError(413, f"the data: URL holds more than MAX_IMAGE_BYTES ({limit} bytes)")
    if header.lower().endswith(";base64"):
        text = re.sub(r"\s+", "", unquote(payload) if "%" in payload else payload)
        if len(text) > (limit + 2) // 3 * 4:  # refused by its encoded length, before decoding
            raise too_large
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise FetchError(422, "malformed data: URL: the data is not valid base64") from None
    else:
        if len(payload) > 3 * limit:  # each byte takes at most three characters ("%xx")
            raise too_large
        data = unquote_to_bytes(payload)
    if len(data) > limit:
        raise too_large
    return data


def _same_parse(url: str, parts: SplitResult) -> None:
    """Refuse a URL whose host the standard library and urllib3 read differently: decisions
    (is it Label Studio? the same origin?) are taken on one reading, the connection on the
    other, so ``http://evil\\@label-studio/`` would carry Label Studio's token to evil."""
    try:
        theirs = parse_url(url)
    except LocationValueError:
        raise ForbiddenURL(f"malformed URL {display_url(url)}") from None
    try:  # urllib3 reads an international name as its ASCII (punycode) form
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except UnicodeError:
        raise ForbiddenURL(f"malformed host name in {display_url(url)}") from None
    ours = host.rstrip(".").lower(), parts.port
    if ((theirs.host or "").strip("[]").rstrip(".").lower(), theirs.port) != ours:
        raise ForbiddenURL(f"ambiguous URL {display_url(url)}: its host reads two ways")


class FetchTargets:
    """Task data values to URLs, under the SSRF policy of Label Studio's URL and the allowed hosts."""

    def __init__(self, label_studio_url: str | None, allowed_hosts: Iterable[str] = ()) -> None:
        self.policy = AddressPolicy.build(label_studio_url, allowed_hosts)
        self._ls = label_studio_url
        self.ls_origin: tuple[str, str, int | None] | None = None
        if self._ls:
            try:
                parts = urlsplit(self._ls)
                if parts.scheme.lower() in ("http", "https") and parts.hostname:
                    self.ls_origin = origin(parts)
            except ValueError:
                pass

    def target(self, value: str, scheme: str, task_id: int | None, credentials: tuple[str, str] | None) -> FetchTarget:
        """Where a value (parsed by ``parse_value``, not a data: URL) is fetched from, and how."""
        if value.startswith("/"):
            url = self.label_studio(f"{urlsplit(value).path} is a Label Studio path") + value
            via_ls, key = True, url
        elif scheme in CLOUD_SCHEMES:
            # Label Studio resolves a URI for a task of a project whose storage holds it: a
            # URI in another project's task must be resolved (and maybe refused) for that task.
            url, via_ls, key = self._resolve_url(value, task_id), True, f"{value} (task {task_id})"
        else:
            parts = self.policy.check_url(value)
            url, key = value, value
            via_ls = self.ls_origin is not None and origin(parts) == self.ls_origin
        basic = digest = None
        if credentials and any(credentials) and not via_ls:
            user, password = (str(part or "") for part in credentials)
            basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            # Bytes fetched with one project's credentials are never served without them.
            digest = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
        return FetchTarget(url, via_ls, key, basic, digest)

    def check_hop(self, url: str) -> SplitResult:
        """A URL about to be requested (the first or a redirect's), checked; its parts."""
        parts = self.policy.check_url(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise ForbiddenURL(f"a redirect to a {parts.scheme} URL is not followed")
        _same_parse(url, parts)
        return parts

    def label_studio(self, what: str) -> str:
        """LABEL_STUDIO_URL, to fetch ``what`` from; FetchError when it is not set or not http(s)."""
        if not self._ls:
            raise FetchError(422, f"{what}: set LABEL_STUDIO_URL to fetch it")
        if self.ls_origin is None:
            raise FetchError(422, f"{what}, but LABEL_STUDIO_URL is not an http(s) URL")
        return self._ls

    def _resolve_url(self, uri: str, task_id: int | None) -> str:
        what = f"{display_url(uri)} is a cloud storage URI"
        base = self.label_studio(what)
        if task_id is None:
            raise FetchError(422, f"{what} that Label Studio resolves per task, and no task id came with it")
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        return f"{base}/tasks/{int(task_id)}/resolve/?{urlencode({'fileuri': fileuri})}"

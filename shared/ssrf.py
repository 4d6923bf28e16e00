"""The address policy for fetching task URLs.

On a cloud host every fetch of a client-supplied URL is a potential SSRF: the metadata server
(169.254.169.254) hands out the service account's token. Only http, https and data URLs are
fetched, and an http(s) host must resolve to public addresses unless it is Label Studio's own
host or explicitly allowed. The fetcher checks the address it actually connects to with
``AddressPolicy.check_address`` (no DNS-rebinding gap) and repeats the check on every redirect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

__all__ = ["AddressPolicy", "ForbiddenURL", "display_url", "is_public_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https", "data"})


class ForbiddenURL(ValueError):
    """A URL the policy refuses to fetch (scheme, host or address); the runtime answers 422."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to (mapped, 6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


# Ranges the ipaddress module of some Python versions counts as global: IPv4-compatible and
# IPv4-translated IPv6, local-use NAT64, deprecated site-local.
_NOT_GLOBAL = tuple(
    ipaddress.IPv6Network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "fec0::/10")
)


def is_public_address(address: IPAddress | str) -> bool:
    """True for globally routable unicast addresses: not loopback, link-local, private,
    unique-local, shared (CGNAT), unspecified, multicast or reserved, also when an IPv6
    address carries an IPv4 one."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_public_address(inner)
        if any(ip in network for network in _NOT_GLOBAL):
            return False
    return ip.is_global and not ip.is_multicast


def display_url(url: str) -> str:
    """``scheme://host:port/path`` for messages: no user info, query or fragment (presigned
    URLs carry their signature in the query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(malformed URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}" if host else f"{parts.scheme}:{parts.path[:40]}"


def _host_key(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@dataclass(frozen=True)
class AddressPolicy:
    """Which URLs may be fetched: public addresses, Label Studio's host on its own port, and
    the allowed hosts and networks on any port."""

    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    # (host, port) of Label Studio: only its own port, not every service on its machine.
    label_studio: tuple[str, int] | None = None

    @classmethod
    def build(
        cls, label_studio_url: str | None = None, allowed: Iterable[str] = ()
    ) -> "AddressPolicy":
        """A policy from Label Studio's URL and an allow-list of host names, addresses and
        networks (``files.internal``, ``10.0.0.7``, ``10.1.0.0/16``)."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        label_studio = None
        if label_studio_url:
            parts = urlsplit(label_studio_url)
            if parts.hostname:
                default = 443 if parts.scheme.lower() == "https" else 80
                label_studio = (_host_key(parts.hostname), parts.port or default)
        for entry in allowed:
            entry = entry.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(_host_key(entry), strict=False))
            except ValueError:
                hosts.add(_host_key(entry))
        return cls(frozenset(hosts), tuple(networks), label_studio)

    def host_allowed(self, host: str) -> bool:
        return _host_key(host) in self.allowed_hosts

    def check_url(self, url: str) -> SplitResult:
        """Refuse a URL by its form: scheme other than http/https/data, or no host."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:
            raise ForbiddenURL(f"malformed URL {display_url(url)}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ForbiddenURL(f"URL scheme {scheme or '(none)'!r} is not fetched: only http, https and data")
        if scheme != "data" and not parts.hostname:
            raise ForbiddenURL(f"URL {display_url(url)} has no host")
        return parts

    def check_address(self, host: str, address: IPAddress | str, port: int | None = None) -> None:
        """Refuse connecting to ``address`` (the one actually connected to) for ``host``:``port``."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if is_public_address(ip) or self.host_allowed(host):
            return
        if self.label_studio is not None and (_host_key(host), port) == self.label_studio:
            return
        if any(ip in network for network in self.allowed_networks if network.version == ip.version):
            return
        # The address itself is left out: task authors must not map internal DNS through it.
        raise ForbiddenURL(
            f"host {host!r} resolves to a non-public address; add it to FETCH_ALLOWED_HOSTS to fetch from it"
        )

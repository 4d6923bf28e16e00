"""shared.ssrf: the address policy for task URLs."""

from __future__ import annotations

import re

import pytest

from lsfn.shared.ssrf import AddressPolicy, ForbiddenURL, is_public_address

FORBIDDEN = [
    "127.0.0.1",
    "127.255.0.9",
    "0.0.0.0",
    "169.254.169.254",  # cloud metadata server
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # shared address space (CGNAT)
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fd00::1",  # unique-local
    "ff02::1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "::a9fe:a9fe",  # IPv4-compatible
    "::ffff:0:a9fe:a9fe",  # IPv4-translated
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
    "fec0::1",  # site-local
]
PUBLIC = ["8.8.8.8", "151.101.1.69", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(address)
    with pytest.raises(ForbiddenURL, match="non-public"):
        AddressPolicy().check_address("example.com", address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str) -> None:
    assert is_public_address(address)
    AddressPolicy().check_address("example.com", address)


def test_label_studio_host_and_allow_list_open_private_addresses() -> None:
    policy = AddressPolicy.build(
        "http://Label-Studio.internal:8080/", ["files.local.", " 10.9.0.0/16 ", "[fd00::7]", ""]
    )
    policy.check_address("label-studio.internal", "10.0.0.5", 8080)
    with pytest.raises(ForbiddenURL):  # Label Studio's host, but another service on it
        policy.check_address("label-studio.internal", "10.0.0.5", 6379)
    with pytest.raises(ForbiddenURL) as refused:
        policy.check_address("label-studio.internal", "10.0.0.5")
    assert "10.0.0.5" not in str(refused.value)
    policy.check_address("FILES.LOCAL", "127.0.0.1", 6379)  # allow-listed: any port
    policy.check_address("FILES.LOCAL", "127.0.0.1")
    policy.check_address("other.host", "10.9.200.1")
    policy.check_address("other.host", "fd00::7")
    with pytest.raises(ForbiddenURL):
        policy.check_address("other.host", "10.8.0.1")
    with pytest.raises(ForbiddenURL):  # an allowed network does not open the metadata server
        policy.check_address("other.host", "169.254.169.254")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://x/", "scheme 'gopher'"),
        ("/data/upload/2/x.jpg", "scheme '(none)'"),
        ("http:///nohost", "no host"),
        ("http://host:99999/x", "malformed"),
        ("http://[::1/x", "malformed"),
        ("ftp://user:pw@host/x?sig=abc", "scheme 'ftp'"),
    ],
)
def test_urls_refused_by_form(url: str, message: str) -> None:
    with pytest.raises(ForbiddenURL, match=re.escape(message)):
        AddressPolicy().check_url(url)


def test_refusals_do_not_echo_secrets() -> None:
    with pytest.raises(ForbiddenURL) as refused:
        AddressPolicy().check_url("http://user:pw@host:99999/x?X-Amz-Signature=abc")
    assert "pw" not in str(refused.value) and "abc" not in str(refused.value)


def test_urls_accepted_by_form() -> None:
    policy = AddressPolicy()
    assert policy.check_url("HTTPS://example.com/a.png").hostname == "example.com"
    assert policy.check_url("data:image/png;base64,AAAA").scheme == "data"

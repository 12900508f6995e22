"""Trusted proxies (forkserve.proxy): allow lists, forwarding headers, PROXY protocol."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

import pytest

from forkserve.config import load
from forkserve.errors import ConfigError, HTTPError
from forkserve.proxy import (
    V2_SIGNATURE,
    AllowList,
    ProxyProtocolError,
    apply_forwarded,
    parse_forwarded,
    parse_proxy_header,
)

LOCAL = AllowList(["127.0.0.1", "::1"])


def test_allow_list_addresses_networks_and_star() -> None:
    allow = AllowList(["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"])
    assert "10.1.2.3" in allow
    assert "192.168.1.7" in allow
    assert "192.168.1.8" not in allow
    assert "2001:db8::5" in allow
    assert "::ffff:10.0.0.1" in allow  # IPv4-mapped IPv6 peers of a dual-stack socket
    assert "fe80::1%eth0" not in allow
    assert "not-an-ip" not in allow
    assert "unknown" not in allow
    assert allow.trusts(None)  # a UNIX-socket peer
    assert not allow.trusts(("8.8.8.8", 1))
    everyone = AllowList(["*"])
    assert "8.8.8.8" in everyone and "anything" in everyone


def test_allow_list_setting_validation() -> None:
    cfg, origin = load({}, {})
    assert cfg.forwarded_allow_ips == ["127.0.0.1", "::1"]
    assert cfg.proxy_allow_ips == ["127.0.0.1", "::1"]
    cfg, origin = load({}, {"FORWARDED_ALLOW_IPS": "10.0.0.0/8, *"})
    assert cfg.forwarded_allow_ips == ["10.0.0.0/8", "*"]
    assert origin["forwarded_allow_ips"] == "env FORWARDED_ALLOW_IPS"
    with pytest.raises(ConfigError, match="forwarded-allow-ips"):
        load({"forwarded_allow_ips": "10.0.0.0/8,nginx"}, {})
    with pytest.raises(ConfigError, match="proxy-allow-ips"):
        load({"proxy_allow_ips": "300.1.1.1"}, {})


def env(**headers: str) -> dict[str, Any]:
    environ: dict[str, Any] = {"wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1",
                               "REMOTE_PORT": "5555"}
    environ.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return environ


@pytest.mark.parametrize(
    ("headers", "scheme", "addr", "port"),
    [
        ({}, "http", "127.0.0.1", "5555"),
        ({"x_forwarded_proto": "https"}, "https", "127.0.0.1", "5555"),
        ({"x_forwarded_proto": "HTTPS"}, "https", "127.0.0.1", "5555"),
        ({"x_forwarded_ssl": "on"}, "https", "127.0.0.1", "5555"),
        ({"x_forwarded_for": "203.0.113.9"}, "http", "203.0.113.9", "0"),
        # the client's own claims, left of the first untrusted hop, are not believed
        ({"x_forwarded_for": "1.1.1.1, 203.0.113.9"}, "http", "203.0.113.9", "0"),
        # our own proxies on the right are skipped
        ({"x_forwarded_for": "203.0.113.9, 127.0.0.1"}, "http", "203.0.113.9", "0"),
        ({"x_forwarded_for": "127.0.0.1, ::1"}, "http", "127.0.0.1", "0"),
        ({"x_forwarded_for": "[2001:db8::1]:4711"}, "http", "2001:db8::1", "4711"),
        ({"x_forwarded_for": "203.0.113.9:4711"}, "http", "203.0.113.9", "4711"),
        ({"x_forwarded_for": "203.0.113.9, 127.0.0.1", "x_forwarded_proto": "https, http"},
         "https", "203.0.113.9", "0"),
        ({"forwarded": "for=192.0.2.60;proto=https;by=203.0.113.43"}, "https", "192.0.2.60",
         "0"),
        ({"forwarded": 'for="[2001:db8:cafe::17]:4711"'}, "http", "2001:db8:cafe::17", "4711"),
        ({"forwarded": "for=1.1.1.1;proto=http, for=192.0.2.43;proto=https"}, "https",
         "192.0.2.43", "0"),
        ({"forwarded": "for=192.0.2.43, for=127.0.0.1"}, "http", "192.0.2.43", "0"),
        ({"forwarded": "for=unknown;proto=https"}, "https", "unknown", "0"),
        ({"forwarded": "proto=https"}, "https", "127.0.0.1", "5555"),
        ({"forwarded": "for=192.0.2.43;proto=https", "x_forwarded_proto": "https",
          "x_forwarded_for": "198.51.100.1"}, "https", "198.51.100.1", "0"),
    ],
)
def test_forwarded_from_a_trusted_proxy(headers: dict[str, str], scheme: str, addr: str,
                                        port: str) -> None:
    environ = env(**headers)
    apply_forwarded(environ, LOCAL)
    assert (environ["wsgi.url_scheme"], environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == (
        scheme, addr, port)
    for key in headers:
        assert environ["HTTP_" + key.upper()] == headers[key]  # passed on untouched


@pytest.mark.parametrize(
    "headers",
    [
        {"x_forwarded_proto": "https", "x_forwarded_ssl": "off"},
        {"x_forwarded_proto": "http", "forwarded": "proto=https"},
        {"x_forwarded_proto": "ftp"},
        {"x_forwarded_ssl": "maybe"},
        {"forwarded": "for"},
        {"forwarded": "for=1.2.3.4;proto=gopher"},
        {"forwarded": 'for="unterminated'},
    ],
)
def test_conflicting_or_bad_forwarding_headers_are_400(headers: dict[str, str]) -> None:
    with pytest.raises(HTTPError) as info:
        apply_forwarded(env(**headers), LOCAL)
    assert info.value.status == 400


def test_parse_forwarded_grammar() -> None:
    assert parse_forwarded('for=a;proto=https, for="[::1]:80";by=b,,') == [
        {"for": "a", "proto": "https"}, {"for": "[::1]:80", "by": "b"}]
    assert parse_forwarded('For="a\\"b"') == [{"for": 'a"b'}]
    with pytest.raises(ValueError):
        parse_forwarded("for=a b")


# -- PROXY protocol ----------------------------------------------------------


def v2(command: int, family: int, payload: bytes, version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([(version << 4) | command, family]) + struct.pack(
        "!H", len(payload)) + payload


IPV4_PAYLOAD = (socket.inet_pton(socket.AF_INET, "192.168.1.10")
                + socket.inet_pton(socket.AF_INET, "192.168.1.1") + struct.pack("!HH", 12345, 443))
IPV6_PAYLOAD = (ipaddress.IPv6Address("2001:db8::1").packed
                + ipaddress.IPv6Address("2001:db8::2").packed + struct.pack("!HH", 54321, 80))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", ("192.168.0.1", 56324)),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", ("2001:db8::1", 1)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
        (v2(1, 0x11, IPV4_PAYLOAD), ("192.168.1.10", 12345)),
        (v2(1, 0x21, IPV6_PAYLOAD), ("2001:db8::1", 54321)),
        (v2(1, 0x11, IPV4_PAYLOAD + b"\x04\x00\x01x"), ("192.168.1.10", 12345)),  # a TLV
        (v2(0, 0x00, b""), None),  # LOCAL: a health check from the balancer itself
        (v2(1, 0x00, b""), None),
        (v2(1, 0x31, b"\x00" * 216), None),  # AF_UNIX: no address to report
    ],
)
def test_proxy_header_good(header: bytes, expected: tuple[str, int] | None) -> None:
    data = header + b"GET / HTTP/1.1\r\n"
    assert parse_proxy_header(data) == (len(header), expected)
    # incomplete: asks for more, at every length
    for cut in range(len(header)):
        assert parse_proxy_header(data[:cut]) is None


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 192.168.0.1 192.16...\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 65iii 100000\r\n",
        b"PROXY TCP4 not-an-ip 192.168.0.11 56324 443\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 65536\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",
        b"PROXY TCP4 2001:db8::1 192.168.0.11 1 2\r\n",
        b"PROXY TCP6 192.168.0.1 192.168.0.11 1 2\r\n",
        b"PROXY TCP4  192.168.0.1 192.168.0.11 1 2\r\n",
        b"PROXY UDP4 192.168.0.1 192.168.0.11 1 2\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 1 2\n",
        b"PROXY " + b"A" * 120,
        b"GET / HTTP/1.1\r\n",
        b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
        v2(1, 0x11, IPV4_PAYLOAD, version=1),
        v2(2, 0x11, IPV4_PAYLOAD),
        v2(1, 0x12, IPV4_PAYLOAD),  # DGRAM
        v2(1, 0x11, IPV4_PAYLOAD[:8]),
        v2(1, 0x21, IPV4_PAYLOAD),
        v2(1, 0x41, IPV4_PAYLOAD),
        V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x0c" + IPV4_PAYLOAD,
        V2_SIGNATURE + b"\x21\x11\xff\xff",  # longer than anything a proxy sends
    ],
)
def test_proxy_header_bad(header: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(header + b"GET / HTTP/1.1\r\n\r\n")

"""Requests that came through a proxy: whom to trust, and what they tell us.

Pure: strings and bytes in, values out; no sockets. Two mechanisms:

- `X-Forwarded-For` / `X-Forwarded-Proto` / `X-Forwarded-Ssl` and `Forwarded`
  (RFC 7239) request headers, believed only when the connection comes from a
  peer in `--forwarded-allow-ips` (`apply_forwarded`);
- the PROXY protocol (HAProxy's spec, v1 text and v2 binary), a header sent
  once before the first request by a load balancer in `--proxy-allow-ips`
  (`parse_proxy_header`).

A peer's trust is decided once per connection (`AllowList.trusts`), not per
request.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from forkserve.config import parse_allow_entry
from forkserve.errors import HTTPError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowList:
    """Peers trusted for one purpose: addresses, CIDR networks, or everyone (`*`)."""

    __slots__ = ("everyone", "networks", "_cache")

    def __init__(self, entries: Iterable[str]) -> None:
        self.everyone = False
        self.networks: list[IPNetwork] = []
        for entry in entries:
            if parse_allow_entry(entry) == "*":
                self.everyone = True
            else:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        self._cache: dict[str, bool] = {}

    def __contains__(self, host: object) -> bool:
        """Is `host` (an IP address string) trusted? Non-addresses never are, unless `*`."""
        if self.everyone:
            return True
        if not isinstance(host, str):
            return False
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            found = False
        else:
            mapped = getattr(address, "ipv4_mapped", None)
            found = any(address in net or (mapped is not None and mapped in net)
                        for net in self.networks)
        if len(self._cache) < 4096:
            self._cache[host] = found
        return found

    def trusts(self, peer: tuple[str, int] | None) -> bool:
        """Trust for a connection's peer. A UNIX-socket peer (None) is trusted: only
        processes the socket file's permissions let in can connect (gunicorn agrees)."""
        return peer is None or peer[0] in self


# -- X-Forwarded-* and Forwarded ---------------------------------------------

# RFC 7239 §4: forwarded-pair = token "=" value, value = token / quoted-string.
_PAIR = re.compile(
    r'[ \t]*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)=("(?:[^"\\]|\\.)*"|[!#$%&\'*+\-.^_`|~0-9A-Za-z:\[\]]*)'
    r"[ \t]*([;,]|$)"
)


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 `Forwarded` -> one dict per element (hop), lowercased parameter names.

    Raises ValueError on a malformed header.
    """
    elements: list[dict[str, str]] = [{}]
    pos = 0
    value = value.strip(" \t")
    while pos < len(value):
        if value[pos] in ",;":  # empty pair or element, allowed by the grammar
            if value[pos] == ",":
                elements.append({})
            pos += 1
            continue
        if value[pos] in " \t":
            pos += 1
            continue
        m = _PAIR.match(value, pos)
        if m is None:
            raise ValueError(f"malformed Forwarded header at {value[pos:pos + 20]!r}")
        name, raw, sep = m.group(1).lower(), m.group(2), m.group(3)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elements[-1][name] = raw
        if sep == ",":
            elements.append({})
        pos = m.end()
    return [e for e in elements if e]


def split_node(node: str) -> tuple[str, str | None]:
    """`1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:80`, `2001:db8::1` -> (host, port or None)."""
    node = node.strip(" \t")
    if node.startswith("["):
        host, _, rest = node[1:].partition("]")
        return host, (rest[1:] if rest.startswith(":") and rest[1:].isdigit() else None)
    if node.count(":") == 1:
        host, _, port = node.partition(":")
        return host, (port if port.isdigit() else None)
    return node, None


def _pick_hop(hosts: list[str], trusted: AllowList) -> int:
    """Index of the client among forwarding hops, read right to left.

    Each proxy appends the address it received the request from, so the
    rightmost entries are the most trustworthy: skip those that are our own
    trusted proxies; the first untrusted one is the client. Anything further
    left was written by that client and is not believed.
    """
    for index in range(len(hosts) - 1, -1, -1):
        if hosts[index] not in trusted:
            return index
    return 0


_SCHEMES = {"http": "http", "https": "https"}
_SSL_FLAGS = {"on": "https", "off": "http"}


def apply_forwarded(environ: MutableMapping[str, Any], trusted: AllowList) -> None:
    """Use a trusted proxy's forwarding headers: set `wsgi.url_scheme` and REMOTE_ADDR.

    Called only for connections from a peer in `--forwarded-allow-ips`. The
    headers stay in the environ as they came. Scheme headers that disagree are
    a 400 (gunicorn does the same): one of them is lying, and guessing which is
    how an http request gets treated as https.
    """
    xff = environ.get("HTTP_X_FORWARDED_FOR")
    xfp = environ.get("HTTP_X_FORWARDED_PROTO")
    xfs = environ.get("HTTP_X_FORWARDED_SSL")
    fwd = environ.get("HTTP_FORWARDED")
    if xff is None and xfp is None and xfs is None and fwd is None:
        return
    schemes: list[str] = []
    client: tuple[str, str | None] | None = None
    if fwd is not None:
        try:
            elements = parse_forwarded(fwd)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        if elements:
            nodes = [split_node(e.get("for", "unknown")) for e in elements]
            index = _pick_hop([host for host, _ in nodes], trusted)
            if "for" in elements[index]:
                client = nodes[index]
            proto = elements[index].get("proto")
            if proto is not None:
                schemes.append(_scheme(proto, "Forwarded proto"))
    hop_from_right = 1
    if xff is not None:
        hosts = [split_node(h) for h in xff.split(",")]
        hosts = [h for h in hosts if h[0]]
        if hosts:
            index = _pick_hop([host for host, _ in hosts], trusted)
            hop_from_right = len(hosts) - index
            client = hosts[index]  # X-Forwarded-For wins over Forwarded for the address
    if xfp is not None:
        protos = [p.strip(" \t") for p in xfp.split(",") if p.strip(" \t")]
        if protos:
            proto = protos[-hop_from_right] if hop_from_right <= len(protos) else protos[0]
            schemes.append(_scheme(proto, "X-Forwarded-Proto"))
    if xfs is not None:
        flag = _SSL_FLAGS.get(xfs.strip(" \t").lower())
        if flag is None:
            raise HTTPError(400, f"invalid X-Forwarded-Ssl {xfs!r}")
        schemes.append(flag)
    if schemes:
        if any(s != schemes[0] for s in schemes):
            raise HTTPError(400, "forwarding headers disagree on the scheme")
        environ["wsgi.url_scheme"] = schemes[0]
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = client[1] or "0"


def _scheme(proto: str, where: str) -> str:
    scheme = _SCHEMES.get(proto.strip(" \t").lower())
    if scheme is None:
        raise HTTPError(400, f"invalid {where} {proto!r}")
    return scheme


# -- PROXY protocol ----------------------------------------------------------

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_PAYLOAD = 16384  # addresses plus TLVs; real ones are far smaller
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


class ProxyProtocolError(ValueError):
    """A malformed PROXY protocol header: the connection is closed without an answer."""


def parse_proxy_header(buf: bytes | bytearray) -> tuple[int, tuple[str, int] | None] | None:
    """Parse a PROXY protocol v1 or v2 header at the start of `buf`.

    Returns None when more bytes are needed, else (bytes consumed, the real
    client's (address, port)) — or (consumed, None) when the header says to use
    the connection's own peer (v2 LOCAL, v1 UNKNOWN, unspecified family).
    """
    head = bytes(buf[:16])
    if V1_PREFIX.startswith(head[:6]) and (len(head) < 6 or head.startswith(V1_PREFIX)):
        return _parse_v1(buf)
    if V2_SIGNATURE.startswith(head[:12]):
        return _parse_v2(buf)
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(buf: bytes | bytearray) -> tuple[int, tuple[str, int] | None] | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyProtocolError("PROXY v1 line too long")
        return None
    try:
        line = bytes(buf[:end]).decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 line is not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return end + 2, None  # §2.1: the receiver must ignore the rest and use the peer
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed PROXY v1 line {line!r}")
    _, family, src, dst, sport, dport = parts
    try:
        src_ip = ipaddress.ip_address(src)
        dst_ip = ipaddress.ip_address(dst)
    except ValueError:
        raise ProxyProtocolError(f"bad address in PROXY v1 line {line!r}") from None
    want = 4 if family == "TCP4" else 6
    if src_ip.version != want or dst_ip.version != want:
        raise ProxyProtocolError(f"address family mismatch in PROXY v1 line {line!r}")
    for port in (sport, dport):
        if not _V1_PORT.fullmatch(port) or int(port) > 65535:
            raise ProxyProtocolError(f"bad port in PROXY v1 line {line!r}")
    return end + 2, (str(src_ip), int(sport))


def _parse_v2(buf: bytes | bytearray) -> tuple[int, tuple[str, int] | None] | None:
    if len(buf) < 16:
        return None
    ver_cmd, fam, length = buf[12], buf[13], int.from_bytes(buf[14:16], "big")
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("PROXY v2: unsupported version")
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyProtocolError("PROXY v2: unknown command")
    if length > V2_MAX_PAYLOAD:
        raise ProxyProtocolError("PROXY v2: header too long")
    total = 16 + length
    if len(buf) < total:
        return None
    if command == 0:  # LOCAL: the proxy's own connection (health checks)
        return total, None
    family, transport = fam >> 4, fam & 0x0F
    if transport not in (0, 1):  # UNSPEC or STREAM; DGRAM makes no sense for HTTP/1
        raise ProxyProtocolError("PROXY v2: not a stream transport")
    payload = bytes(buf[16:total])
    if family == 1:  # AF_INET
        if length < 12:
            raise ProxyProtocolError("PROXY v2: short IPv4 addresses")
        src = str(ipaddress.IPv4Address(payload[0:4]))
        return total, (src, int.from_bytes(payload[8:10], "big"))
    if family == 2:  # AF_INET6
        if length < 36:
            raise ProxyProtocolError("PROXY v2: short IPv6 addresses")
        src = str(ipaddress.IPv6Address(payload[0:16]))
        return total, (src, int.from_bytes(payload[32:34], "big"))
    if family in (0, 3):  # UNSPEC, AF_UNIX: no address to report; keep the peer
        return total, None
    raise ProxyProtocolError("PROXY v2: unknown address family")

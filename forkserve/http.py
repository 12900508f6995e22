"""The request pre-check and body framing: what h11 accepts but an origin server must refuse.

Pure: bytes in, `HTTPError` out; no sockets. Runs on the raw head before h11
sees it (DESIGN.md §2 "Why a pre-check before h11"), and decodes request
bodies itself, because h11 0.16 accepts in bodies what a server must refuse
(measured; see docs/security.md): chunk sizes of 17-20 hex digits (values
past 2**64), trailing whitespace after a chunk size, any bytes at all in
chunk extensions (bare CR, NUL, controls), and trailer sections with bare LF,
obs-fold, control bytes and framing fields (Content-Length, Host, ...).

Every rule is a linear scan or a regex that cannot backtrack, so a crafted
request costs microseconds however it is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from forkserve.errors import HTTPError

# RFC 9110 §5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: a field value holds VCHAR, obs-text, SP and HTAB; RFC 9112 §2.2
# allows no other control byte anywhere in a head. CR and LF are counted apart.
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Request targets are URIs (RFC 9112 §3.2, RFC 3986 §2): visible ASCII only. Raw
# UTF-8 must be percent-encoded; h11 refuses it too, so say so before it does.
_BAD_TARGET_BYTE = re.compile(rb"[^\x21-\x7e]")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
# RFC 9110 §2.5: a higher minor version of HTTP/1.x is handled as the highest
# one the recipient supports (1.1); another major version is not HTTP/1.
_LATER_HTTP1 = re.compile(rb"HTTP/1\.[2-9]")
# Bytes that cannot appear in a request line (RFC 9112 §3: method SP target SP
# version, all visible ASCII). CR is looked at apart: it may begin the CRLF.
_BAD_LINE_BYTE = re.compile(rb"[^\x20-\x7e\r]")
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
TLS_HANDSHAKE = 0x16  # the first byte of every TLS record that opens a handshake
PLAIN_HTTP_BODY = (
    b"400 Bad Request\n"
    b"This port speaks plain HTTP, not HTTPS (TLS): use an http:// URL here.\n"
)
_DIGITS = re.compile(rb"[0-9]{1,18}")
# RFC 9110 §7.2: Host = uri-host [ ":" port ]; uri-host is an IP-literal or a
# reg-name (unreserved / pct-encoded / sub-delims, RFC 3986 §3.2.2). Empty is allowed.
_HOST = re.compile(
    rb"(?:\[[0-9A-Za-z:.\-_~!$&'()*+,;=]+\]|[0-9A-Za-z.\-_~%!$&'()*+,;=]*)(?::[0-9]*)?"
)
# RFC 9112 §7.1 / §7.1.1: chunk-size = 1*HEXDIG; chunk-ext = *( BWS ";" BWS
# ext-name [ BWS "=" BWS ( token / quoted-string ) ] ). At most 16 hex digits,
# so every size fits in 64 bits. No backtracking: ";" separates the repeats and
# the alternatives start with different bytes.
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})"
    rb"(?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb"(?:[ \t]*=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb'|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*'
)

# RFC 9110 §9.1: methods are case-sensitive tokens, and an origin server answers
# one it does not recognise with 501. These are the ones llhttp (httptools)
# recognises in a request: the registered methods of HTTP, WebDAV, CalDAV,
# UPnP and the QUERY draft. h11 would take any token; refusing the rest under
# both parsers keeps the two answering alike (tests/conformance/test_parsers.py
# checks this list against llhttp). CONNECT is refused on its own (501).
METHODS = frozenset(
    b"ACL BIND CHECKOUT CONNECT COPY DELETE GET HEAD LINK LOCK M-SEARCH MERGE MKACTIVITY "
    b"MKCALENDAR MKCOL MOVE NOTIFY OPTIONS PATCH POST PROPFIND PROPPATCH PURGE PUT QUERY "
    b"REBIND REPORT SEARCH SOURCE SUBSCRIBE TRACE UNBIND UNLINK UNLOCK UNSUBSCRIBE".split()
)

# A chunk-size line with its extensions. Extensions are ignored, so anything
# longer is an attack, not a client (gunicorn, nginx and node cap it similarly).
MAX_CHUNK_LINE = 4096

# RFC 9110 §6.5.1: fields a sender must not put in a trailer section, because
# they frame the message, route it, modify the request, authenticate or
# describe the content. A request carrying one is refused rather than having
# the field silently dropped: a proxy in front may have acted on it.
FORBIDDEN_TRAILERS = frozenset(
    {
        b"authorization",
        b"cache-control",
        b"connection",
        b"content-encoding",
        b"content-length",
        b"content-range",
        b"content-type",
        b"cookie",
        b"expect",
        b"host",
        b"if-match",
        b"if-modified-since",
        b"if-none-match",
        b"if-range",
        b"if-unmodified-since",
        b"keep-alive",
        b"max-forwards",
        b"pragma",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"range",
        b"set-cookie",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"www-authenticate",
    }
)


@dataclass(frozen=True)
class Limits:
    """The request limits, in bytes and counts (gunicorn's names and defaults).

    `body` is `--limit-request-body`; 0 means no limit.
    """

    request_line: int = 4094
    fields: int = 100
    field_size: int = 8190
    head: int = 65536
    body: int = 0


def find_head_end(buf: bytes | bytearray, start: int, limits: Limits) -> int:
    """Index just past the head's final CRLF CRLF in `buf`, or -1 if not there yet.

    `start` is where the previous call stopped looking, so a head trickled in
    byte by byte is still scanned once. Raises on a bare LF (which would leave
    us waiting for a CRLF CRLF that never comes) and on a head over the limits
    before it is complete.
    """
    begin = max(0, start - 3)
    end = buf.find(b"\r\n\r\n", begin)
    scan_to = len(buf) if end < 0 else end + 4
    # Every LF in [begin, scan_to) must end a CRLF: two counts in C. The CRLF
    # count starts one byte early so that a CR just before `begin` still pairs.
    if buf.count(b"\n", begin, scan_to) != buf.count(b"\r\n", max(0, begin - 1), scan_to):
        raise HTTPError(400, "bare LF in request head")
    if end >= 0:
        return end + 4
    line_max = limits.request_line + 2
    if len(buf) > line_max and buf.find(b"\r\n", 0, line_max) < 0:
        raise HTTPError(414, "request line too long")
    if len(buf) > limits.head:
        raise HTTPError(431, "request head too large")
    return -1


def strip_leading_empty_lines(buf: bytes | bytearray) -> int:
    """How many bytes of leading CRLFs to skip (RFC 9112 §2.2: ignore at least one).

    Any number is skipped, so the verdict does not depend on how the bytes
    were split into reads; the head deadline bounds a client that sends only
    CRLFs. Anything irregular (a bare LF) is left for `find_head_end` to refuse.
    """
    if not buf.startswith(b"\r\n"):
        return 0
    run = len(buf) - len(buf.lstrip(b"\r\n"))
    pairs = run // 2
    if buf.startswith(b"\r\n" * pairs):
        return pairs * 2
    skip = 0
    while buf.startswith(b"\r\n", skip):
        skip += 2
    return skip


class HeadFacts(NamedTuple):
    """What the pre-check learnt that the server needs before h11 answers.

    A NamedTuple rather than a frozen dataclass: one is built per request, and
    a frozen dataclass's `__init__` costs a microsecond more.
    """

    method: bytes
    http11: bool
    chunked: bool
    content_length: int | None
    expect_continue: bool
    # RFC 9112 §9.3: HTTP/1.1 persists unless `Connection: close`; HTTP/1.0 only
    # with `Connection: keep-alive` (and no close).
    keep_alive: bool


def _check_line_endings(block: bytes) -> None:
    """Every CR and every LF is part of a CRLF: three C-speed counts, no copy."""
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf:
        raise HTTPError(400, "bare CR in request head")
    if block.count(b"\n") != crlf:
        raise HTTPError(400, "bare LF in request head")
    if _CTL.search(block):
        raise HTTPError(400, "control byte in request head")


def _field_lines(lines: list[bytes], limits: Limits) -> list[tuple[bytes, bytes]]:
    """Split field lines into (lowercase name, raw value); RFC 9112 §5 rules."""
    if len(lines) > limits.fields:
        raise HTTPError(431, "too many header fields")
    fields = []
    field_size = limits.field_size - 2  # the line without its CRLF
    good = _FIELD_LINE.fullmatch
    for line in lines:
        m = good(line)
        if m is not None and len(line) <= field_size:
            fields.append((m[1].lower(), m[2]))
            continue
        _refuse_field_line(line, limits)
    return fields


# The common case of one field line: token ":" anything (the head's bytes were
# already checked for controls, bare CR and LF). Whatever does not match is
# looked at rule by rule, to say exactly what is wrong with it.
_FIELD_LINE = re.compile(b"(" + _TOKEN.pattern + rb"):(.*)", re.S)


def _refuse_field_line(line: bytes, limits: Limits) -> NoReturn:
    """Raise the HTTPError that says why `line` is not a valid field line."""
    if len(line) + 2 > limits.field_size:
        # The line with its CRLF, as gunicorn counts --limit-request-field-size.
        raise HTTPError(431, "header field too long")
    if not line:
        raise HTTPError(400, "empty header line")
    if line[0] in b" \t":
        # §5.2: a server MUST reject obs-fold (or replace it; rejecting is safer).
        raise HTTPError(400, "obsolete line folding in header")
    name, colon, value = line.partition(b":")
    if not colon:
        raise HTTPError(400, "header line without a colon")
    if not _TOKEN.fullmatch(name):
        # §5.1: no whitespace between name and colon (an empty name fails too).
        raise HTTPError(400, "invalid header name")
    raise AssertionError(f"field line {line!r} matched no rule")  # pragma: no cover


def check_head(head: bytes, limits: Limits) -> HeadFacts:
    """Validate a complete request head (ending in CRLF CRLF); raise HTTPError if bad."""
    if len(head) > limits.head:
        raise HTTPError(431, "request head too large")
    _check_line_endings(head)
    lines = head[:-4].split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > limits.request_line:
        raise HTTPError(414, "request line too long")
    method, target, version = _split_request_line(request_line)
    http11 = _http11(version)
    _check_target(method, target)

    content_lengths: list[bytes] = []
    transfer_encodings: list[bytes] = []
    hosts: list[bytes] = []
    content_types = 0
    expect_continue = False
    connection: list[bytes] = []
    for name, value in _field_lines(lines[1:], limits):
        if name == b"content-length":
            content_lengths.append(value.strip(b" \t"))
        elif name == b"transfer-encoding":
            transfer_encodings.append(value)
        elif name == b"host":
            hosts.append(value.strip(b" \t"))
        elif name == b"content-type":
            content_types += 1
        elif name == b"connection":
            connection.append(value)
        elif name == b"expect" and value.strip(b" \t").lower() == b"100-continue":
            expect_continue = http11

    # RFC 9112 §3.2: 400 for a missing Host in HTTP/1.1, more than one Host, or
    # an invalid Host value.
    if len(hosts) > 1:
        raise HTTPError(400, "more than one Host header")
    if hosts:
        if not _HOST.fullmatch(hosts[0]):
            raise HTTPError(400, "invalid Host header")
    elif http11:
        raise HTTPError(400, "missing Host header")
    if content_types > 1:
        # RFC 9110 §5.3: Content-Type is a singleton; the app could only see one of
        # them, perhaps not the one a proxy in front checked.
        raise HTTPError(400, "more than one Content-Type header")
    content_length = _check_framing(content_lengths, transfer_encodings, http11)
    keep_alive = http11
    if connection:
        tokens = {t.strip(b" \t").lower() for value in connection for t in value.split(b",")}
        keep_alive = b"close" not in tokens and (http11 or b"keep-alive" in tokens)
    if method not in METHODS:
        # Last: a malformed head is a 400 whatever its method.
        raise HTTPError(501, "method not implemented")
    return HeadFacts(method, http11, bool(transfer_encodings), content_length, expect_continue,
                     keep_alive)


def as_http11(head: bytes) -> bytes:
    """`head` (checked, HTTP/1.1 or later 1.x) with its version as served: HTTP/1.1.

    RFC 9110 §2.5: HTTP/1.2 and up are handled as HTTP/1.1. The head is
    rewritten before either parser sees it, so both give the same answer: h11
    would pass `1.2` through to the environ, llhttp refuses it ("Invalid HTTP
    version"). check_head has proved the version is the request line's last
    8 bytes.
    """
    end = head.index(b"\r\n")
    if head[end - 8 : end] == b"HTTP/1.1":
        return head
    return head[: end - 8] + b"HTTP/1.1" + head[end:]


def _http11(version: bytes) -> bool:
    """True for HTTP/1.1 (and a later 1.x), False for HTTP/1.0; raise for the rest."""
    if version == b"HTTP/1.1":
        return True
    if version == b"HTTP/1.0":
        return False
    if _LATER_HTTP1.fullmatch(version):
        return True  # RFC 9110 §2.5: handled as HTTP/1.1
    if not _VERSION.fullmatch(version):
        raise HTTPError(400, "malformed HTTP version")
    raise HTTPError(505, "HTTP version not supported")


def check_first_byte(buf: bytes | bytearray) -> None:
    """Refuse at once a request whose first byte cannot begin a method (O(1))."""
    if not buf:
        return
    first = buf[0]
    if first not in _TCHAR:
        if first == TLS_HANDSHAKE:
            raise HTTPError(400, "TLS handshake on the plain HTTP port", body=PLAIN_HTTP_BODY)
        if first != 13 or len(buf) > 1:  # a lone CR may be the start of an empty line
            raise HTTPError(400, "request does not begin with a method")


def judge_request_line(buf: bytes | bytearray, start: int, limits: Limits) -> bool:
    """Judge the request line of a head that is not complete yet, as far as it arrived.

    True once the line has ended and is valid (it need not be judged again);
    False while it may still become valid; raises HTTPError as soon as it
    cannot (a first byte that cannot begin a method, a byte no request line
    holds, a bare CR, a complete line that is not `method SP target SP
    HTTP/x.y`). Without this a TLS ClientHello, an SSH banner or `GET /` of
    HTTP/0.9 waits for the header timeout and gets a 408 instead of a 400.
    `start` is how much of `buf` an earlier call already looked at, so a line
    trickled in byte by byte is still scanned once.
    """
    check_first_byte(buf)
    line_max = limits.request_line + 2
    begin = max(0, start - 1)
    eol = buf.find(b"\r\n", begin, line_max)
    scan_to = min(len(buf), line_max) if eol < 0 else eol
    bad = _BAD_LINE_BYTE.search(buf, begin, scan_to)
    if bad is not None:
        raise HTTPError(400, "invalid byte in request line")
    cr = buf.find(b"\r", begin, scan_to)
    if cr >= 0 and cr + 1 < len(buf):
        raise HTTPError(400, "bare CR in request line")
    if eol < 0:
        return False  # find_head_end refuses a line over the limit
    line = bytes(buf[:eol])
    if len(line) > limits.request_line:
        raise HTTPError(414, "request line too long")
    method, target, version = _split_request_line(line)
    _http11(version)
    _check_target(method, target)
    return True


_LOGGABLE_LINE = re.compile(rb"([!-~]{1,32}) ([!-~]{1,4096}) (HTTP/[0-9]\.[0-9])")


def request_line_of(raw: bytes | bytearray, limits: Limits) -> tuple[bytes, bytes, bytes] | None:
    """The (method, target, version) of a refused head, if its first line has that shape.

    For the access log of a request refused before it was parsed: only visible
    ASCII comes back, so nothing a client sends can forge or break a log line.
    """
    eol = raw.find(b"\r\n", 0, limits.request_line + 2)
    if eol < 0:
        return None
    m = _LOGGABLE_LINE.fullmatch(raw, 0, eol)
    if m is None:
        return None
    return m[1], m[2], m[3]


def _split_request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HTTPError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HTTPError(400, "invalid method")
    return method, target, version


def _check_target(method: bytes, target: bytes) -> None:
    """RFC 9112 §3.2: origin-form, absolute-form, and the two special forms."""
    if _BAD_TARGET_BYTE.search(target):
        raise HTTPError(400, "invalid byte in request target")
    if method == b"CONNECT":
        # §3.2.3: authority-form belongs to CONNECT, which asks for a tunnel:
        # nothing a WSGI app can serve.
        raise HTTPError(501, "CONNECT is not supported")
    if target[0] == 47:  # "/": origin-form, by far the common case
        return
    if target == b"*":
        if method == b"OPTIONS":
            return
        raise HTTPError(400, "asterisk-form target is only for OPTIONS")
    lowered = target[:8].lower()
    if lowered.startswith(b"http://") or lowered.startswith(b"https://"):
        authority = target.split(b"://", 1)[1]
        for sep in b"/?#":
            authority = authority.split(bytes((sep,)), 1)[0]
        if not authority or b"@" in authority or not _HOST.fullmatch(authority):
            # RFC 9110 §4.2.4: userinfo in an http(s) URI is to be treated as an error.
            raise HTTPError(400, "invalid absolute-form target")
        if b"#" in target:
            # RFC 9112 §3.2.2: absolute-form is an absolute-URI, which has no
            # fragment (RFC 3986 §4.3). llhttp refuses `http://a#f`, h11 takes it.
            raise HTTPError(400, "fragment in absolute-form target")
        return
    raise HTTPError(400, "request target is not origin-form or absolute-form")


def _check_framing(
    content_lengths: list[bytes], transfer_encodings: list[bytes], http11: bool
) -> int | None:
    """RFC 9112 §6: exactly one unambiguous way to find where the body ends."""
    if transfer_encodings:
        if content_lengths:
            # §6.1: a request with both may be an attempt at request smuggling.
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        if not http11:
            # §6.1: chunked framing in HTTP/1.0 is faulty; close after answering.
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = [
            c.strip(b" \t").lower() for te in transfer_encodings for c in te.split(b",")
        ]
        if codings[-1] != b"chunked":
            # §6.3: chunked must be final, else the length cannot be determined.
            raise HTTPError(400, "Transfer-Encoding does not end in chunked")
        if codings.count(b"chunked") > 1:
            # §7.1: a sender MUST NOT apply chunked more than once.
            raise HTTPError(400, "chunked applied more than once")
        if len(codings) > 1:
            # §6.1: a server that does not understand a transfer coding answers 501.
            raise HTTPError(501, "unsupported transfer coding")
        return None
    if not content_lengths:
        return None
    if len(content_lengths) > 1:
        raise HTTPError(400, "more than one Content-Length header")
    if not _DIGITS.fullmatch(content_lengths[0]):
        # §6.3: an invalid Content-Length is unrecoverable; this also refuses the
        # list form "5, 5" that RFC 9110 §8.6 lets a recipient collapse.
        raise HTTPError(400, "invalid Content-Length")
    return int(content_lengths[0])


def check_trailers(section: bytes, limits: Limits) -> None:
    """Validate a trailer section (its field lines and final CRLF).

    The same line rules as the head (RFC 9112 §7.1.2 uses the field syntax),
    plus RFC 9110 §6.5.1's forbidden fields. Trailers are never merged into the
    environ: they arrive after the app may have started reading.
    """
    _check_line_endings(section)
    if section == b"\r\n":
        return
    for name, _value in _field_lines(section[:-4].split(b"\r\n"), limits):
        if name in FORBIDDEN_TRAILERS:
            raise HTTPError(400, f"forbidden trailer field {name.decode('latin-1')}")


class BodyDecoder:
    """Sans-IO request body framing: raw bytes in, decoded body pieces out.

    `decode(data)` returns the body bytes found in `data`; once `done`, `rest`
    holds what followed the body (a pipelined request). Raises HTTPError on a
    framing error or when the body passes `--limit-request-body` (413).
    """

    __slots__ = ("done", "rest", "received")

    def __init__(self) -> None:
        self.done = False
        self.rest = b""
        self.received = 0  # decoded body bytes so far

    def decode(self, data: bytes) -> list[bytes]:
        raise NotImplementedError


class LengthDecoder(BodyDecoder):
    """A Content-Length body (RFC 9112 §6.2)."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        super().__init__()
        self.remaining = length
        self.done = length == 0

    def decode(self, data: bytes) -> list[bytes]:
        if self.done:
            self.rest += data
            return []
        if len(data) < self.remaining:
            self.remaining -= len(data)
            self.received += len(data)
            return [data]
        piece, self.rest = data[: self.remaining], data[self.remaining :]
        self.received += self.remaining
        self.remaining = 0
        self.done = True
        return [piece]


_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)


class ChunkedDecoder(BodyDecoder):
    """A chunked body (RFC 9112 §7.1), strictly and in linear time.

    Chunk sizes are 1-16 hex digits with no surrounding whitespace; extensions
    must be well-formed and are ignored; chunk data must be followed by CRLF;
    the trailer section is checked by `check_trailers` and then dropped.
    """

    __slots__ = ("limits", "state", "line", "remaining")

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self.limits = limits
        self.state = _SIZE
        self.line = bytearray()  # a chunk-size line, CRLF after data, or the trailers
        self.remaining = 0

    def decode(self, data: bytes) -> list[bytes]:
        pieces: list[bytes] = []
        pos = 0
        size = len(data)
        while pos < size:
            state = self.state
            if state == _DATA:
                take = min(self.remaining, size - pos)
                pieces.append(data[pos : pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = _DATA_END
            elif state == _SIZE:
                pos = self._size_line(data, pos)
            elif state == _DATA_END:
                need = 2 - len(self.line)
                self.line += data[pos : pos + need]
                pos += need
                if len(self.line) == 2 or not b"\r\n".startswith(self.line):
                    if self.line != b"\r\n":
                        raise HTTPError(400, "chunk data not followed by CRLF")
                    self.line.clear()
                    self.state = _SIZE
            elif state == _TRAILERS:
                pos = self._trailers(data, pos)
            else:  # _DONE
                self.rest += data[pos:]
                pos = size
        return pieces

    def _size_line(self, data: bytes, pos: int) -> int:
        lf = data.find(b"\n", pos)
        end = len(data) if lf < 0 else lf + 1
        self.line += data[pos:end]
        if lf < 0:
            if len(self.line) > MAX_CHUNK_LINE:
                raise HTTPError(400, "chunk size line too long")
            return end
        line = bytes(self.line)
        self.line.clear()
        if not line.endswith(b"\r\n") or len(line) > MAX_CHUNK_LINE:
            raise HTTPError(400, "malformed chunk size line")
        m = _CHUNK_LINE.fullmatch(line, 0, len(line) - 2)
        if m is None:
            raise HTTPError(400, "invalid chunk size or extension")
        chunk = int(m.group(1), 16)
        if chunk:
            self.received += chunk
            if self.limits.body and self.received > self.limits.body:
                raise HTTPError(413, "request body larger than --limit-request-body")
            self.remaining = chunk
            self.state = _DATA
        else:
            self.state = _TRAILERS
        return end

    def _trailers(self, data: bytes, pos: int) -> int:
        start = max(0, len(self.line) - 3)
        self.line += data[pos:]
        line = self.line
        if line.startswith(b"\r\n"):
            end = 2  # no trailer fields: the common case
        elif len(line) >= 2 and line[0] == 13:  # CR then not LF
            raise HTTPError(400, "bare CR after the last chunk")
        else:
            found = line.find(b"\r\n\r\n", start)
            if found < 0:
                if len(line) > self.limits.head:
                    raise HTTPError(431, "trailer section too large")
                lf = line.find(b"\n", start)
                while lf >= 0:
                    if lf == 0 or line[lf - 1] != 13:
                        raise HTTPError(400, "bare LF in trailer section")
                    lf = line.find(b"\n", lf + 1)
                return len(data)
            end = found + 4
            check_trailers(bytes(line[:end]), self.limits)
        used_from_data = end - (len(line) - (len(data) - pos))
        self.line = bytearray()
        self.state = _DONE
        self.done = True
        return pos + used_from_data

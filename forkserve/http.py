"""The request head pre-check: what h11 accepts but an origin server must refuse.

Pure: bytes in, `HTTPError` out. Runs on the raw head before h11 sees it (see
DESIGN.md §2 "Why a pre-check before h11"). Every rule is a linear scan, so a
crafted head costs microseconds however it is built (h11's header regex can
backtrack for seconds on a long run of spaces before a bad byte).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forkserve.errors import HTTPError

# RFC 9110 §5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: field values are VCHAR, obs-text, SP and HTAB; no other controls.
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Request targets: no controls, no spaces (RFC 9112 §3.2). obs-text is let through.
_BAD_TARGET_BYTE = re.compile(rb"[\x00-\x20\x7f]")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_DIGITS = re.compile(rb"[0-9]{1,18}")

MAX_LEADING_EMPTY_LINES = 8


@dataclass(frozen=True)
class Limits:
    """The head limits, in bytes and counts (gunicorn's names and defaults)."""

    request_line: int = 4094
    fields: int = 100
    field_size: int = 8190
    head: int = 65536


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
    lf = buf.find(b"\n", begin, scan_to)
    while lf >= 0:
        if lf == 0 or buf[lf - 1] != 13:  # 13 = CR
            raise HTTPError(400, "bare LF in request head")
        lf = buf.find(b"\n", lf + 1, scan_to)
    if end >= 0:
        return end + 4
    if len(buf) > limits.head:
        raise HTTPError(431, "request head too large")
    first_line_end = buf.find(b"\r\n")
    if first_line_end < 0 and len(buf) > limits.request_line + 2:
        raise HTTPError(414, "request line too long")
    return -1


def strip_leading_empty_lines(buf: bytes | bytearray) -> int:
    """How many bytes of leading CRLFs to skip (RFC 9112 §2.2: ignore at least one)."""
    skip = 0
    for _ in range(MAX_LEADING_EMPTY_LINES):
        if buf.startswith(b"\r\n", skip):
            skip += 2
        else:
            break
    return skip


@dataclass(frozen=True)
class HeadFacts:
    """What the pre-check learnt that the server needs before h11 answers."""

    method: bytes
    http11: bool
    chunked: bool
    content_length: int | None
    expect_continue: bool


def check_head(head: bytes, limits: Limits) -> HeadFacts:
    """Validate a complete request head (ending in CRLF CRLF); raise HTTPError if bad."""
    if len(head) > limits.head:
        raise HTTPError(431, "request head too large")
    if b"\r" in head.replace(b"\r\n", b""):
        raise HTTPError(400, "bare CR in request head")
    lines = head[:-4].split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > limits.request_line:
        raise HTTPError(414, "request line too long")
    method, target, version = _split_request_line(request_line)
    major_minor = _VERSION.fullmatch(version)
    if major_minor is None:
        raise HTTPError(400, "malformed HTTP version")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HTTPError(505, "HTTP version not supported")
    http11 = version == b"HTTP/1.1"
    _check_target(method, target)

    if len(lines) - 1 > limits.fields:
        raise HTTPError(431, "too many header fields")
    content_lengths: list[bytes] = []
    transfer_encodings: list[bytes] = []
    hosts = 0
    expect_continue = False
    for line in lines[1:]:
        if len(line) > limits.field_size:
            raise HTTPError(431, "header field too long")
        if not line:
            raise HTTPError(400, "empty header line")
        if line[0] in b" \t":
            raise HTTPError(400, "obsolete line folding in header")
        name, colon, value = line.partition(b":")
        if not colon:
            raise HTTPError(400, "header line without a colon")
        if not _TOKEN.fullmatch(name):
            raise HTTPError(400, "invalid header name")
        if _BAD_VALUE_BYTE.search(value):
            raise HTTPError(400, "control byte in header value")
        lname = name.lower()
        if lname == b"content-length":
            content_lengths.append(value.strip(b" \t"))
        elif lname == b"transfer-encoding":
            transfer_encodings.append(value.strip(b" \t"))
        elif lname == b"host":
            hosts += 1
        elif lname == b"expect" and value.strip(b" \t").lower() == b"100-continue":
            expect_continue = http11

    if hosts > 1:
        raise HTTPError(400, "more than one Host header")
    if http11 and hosts == 0:
        raise HTTPError(400, "missing Host header")
    content_length = _check_framing(content_lengths, transfer_encodings, http11)
    return HeadFacts(method, http11, bool(transfer_encodings), content_length, expect_continue)


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
        # authority-form belongs to CONNECT, which tunnels: nothing a WSGI app can serve.
        raise HTTPError(501, "CONNECT is not supported")
    if target.startswith(b"/"):
        return
    if target == b"*":
        if method == b"OPTIONS":
            return
        raise HTTPError(400, "asterisk-form target is only for OPTIONS")
    lowered = target[:8].lower()
    if lowered.startswith(b"http://") or lowered.startswith(b"https://"):
        rest = target.split(b"://", 1)[1]
        authority = rest.split(b"/", 1)[0].split(b"?", 1)[0]
        if not authority or b"@" in authority:
            raise HTTPError(400, "invalid absolute-form target")
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
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if len(transfer_encodings) > 1:
            raise HTTPError(400, "more than one Transfer-Encoding header")
        codings = [c.strip(b" \t").lower() for c in transfer_encodings[0].split(b",")]
        if codings[-1] != b"chunked":
            # §6.3: chunked must be final, else the length cannot be determined.
            raise HTTPError(400, "Transfer-Encoding does not end in chunked")
        if len(codings) > 1:
            raise HTTPError(501, "unsupported transfer coding")
        return None
    if not content_lengths:
        return None
    if len(content_lengths) > 1:
        raise HTTPError(400, "more than one Content-Length header")
    if not _DIGITS.fullmatch(content_lengths[0]):
        raise HTTPError(400, "invalid Content-Length")
    return int(content_lengths[0])

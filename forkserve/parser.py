"""The parser seam: a checked request head in, method, target, version and fields out.

Pure: no sockets. `http.check_head` has already refused everything an origin
server must refuse and decided the body framing and keep-alive, so a parser
here only splits a valid head into its parts. h11 is the reference parser; a
faster one plugs in by offering the same function (DESIGN.md §2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import h11

from forkserve.errors import HTTPError


class RequestHead(NamedTuple):
    """One parsed request head, as both the environ and the hooks see it."""

    method: bytes
    target: bytes
    http_version: bytes  # b"1.1", b"1.0"
    headers: list[tuple[bytes, bytes]]  # (name as sent, value) in arrival order


HeadParser = Callable[[bytes], RequestHead]
"""Turns a complete head (ending in CRLF CRLF) into a RequestHead; raises HTTPError."""


def parse_h11(head: bytes) -> RequestHead:
    """The reference parser: h11, one throwaway connection per head."""
    # The pre-check already enforced --limit-request-head on the whole head.
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
    parser.receive_data(head)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        raise HTTPError(exc.error_status_hint, str(exc)) from None
    if not isinstance(event, h11.Request):
        raise HTTPError(400, f"unexpected {type(event).__name__}")
    # raw_items() is a plain list: cheaper to iterate than h11's Headers.
    return RequestHead(event.method, event.target, event.http_version,
                       event.headers.raw_items())

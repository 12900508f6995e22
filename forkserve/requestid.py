"""Request ids (--request-id, --request-id-header): one per request, end to end.

Runs in a worker, after fork, as the outermost layer around the app, so the
pre_request hook, the app, the response and the access log all see the same
id. A sane incoming id is kept (a proxy or the client made it, and their logs
carry it); anything else is replaced, so a client cannot smuggle quotes,
newlines or megabytes into every log line that shows the id.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[..., Iterable[bytes]]

MAX_LENGTH = 128
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_BATCH = 256  # ids made per getrandom() call


def environ_key(header: str) -> str:
    """The CGI name of a request header: X-Request-ID -> HTTP_X_REQUEST_ID."""
    return "HTTP_" + header.upper().replace("-", "_")


class IdSource:
    """Random version-4 UUIDs as 32 hex digits, 256 per system call.

    uuid.uuid4().hex costs one getrandom() and a UUID object per request; this
    slices a batch of random bytes and sets the same version and variant bits.
    Made after fork (each worker its own), so no two workers share a batch.
    """

    __slots__ = ("pool", "used")

    def __init__(self) -> None:
        self.pool = b""
        self.used = _BATCH

    def new(self) -> str:
        if self.used == _BATCH:
            self.pool = os.urandom(16 * _BATCH)
            self.used = 0
        start = self.used * 16
        self.used += 1
        raw = bytearray(self.pool[start : start + 16])
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4 (RFC 9562 §5.4)
        raw[8] = (raw[8] & 0x3F) | 0x80  # variant 10
        return raw.hex()


def with_request_id(app: WSGIApp, header: str, ids: IdSource) -> WSGIApp:
    """`app` with the request id kept or made, put in the environ and the response."""
    key = environ_key(header)
    lowered = header.lower()
    sane = _SANE.fullmatch

    def request_id(environ: dict[str, Any], start_response: Callable[..., Any]
                   ) -> Iterable[bytes]:
        given = environ.get(key)
        if given is None or not sane(given):
            environ[key] = given = ids.new()

        def start_with_id(status: str, headers: list[tuple[str, str]],
                          exc_info: Any = None) -> Callable[[bytes], Any]:
            # The app's own header wins (it may forward an upstream id on purpose).
            if not any(name.lower() == lowered for name, _ in headers):
                headers = [*headers, (header, given)]
            if exc_info is None:
                return start_response(status, headers)  # type: ignore[no-any-return]
            return start_response(status, headers, exc_info)  # type: ignore[no-any-return]

        return app(environ, start_with_id)

    return request_id

"""The response side of PEP 3333: `start_response`, header policy, file wrapper.

Pure: nothing here touches a socket. `StartResponse` records what the app
said and hands body bytes from `write()` to a callable passed in by the
connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, Any, NamedTuple

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# "200 OK": three digits, a space, a reason of visible characters, SP and HTAB
# (RFC 9112 §4). h11 writes the reason verbatim, so a CR or LF here would split
# the response.
_STATUS = re.compile(r"[1-9][0-9]{2} [\t\x20-\x7e\x80-\xff]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")

# RFC 9110 §7.6.1 connection-specific fields; PEP 3333 forbids apps from
# sending them. The server owns framing and connection management.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class ResponseError(Exception):
    """The app broke PEP 3333's response rules; the server answers 500 if it can."""


# Apps send a handful of distinct status lines and header names: each is
# validated once and remembered (bounded, so an app that makes them up as it
# goes only loses the shortcut).
_CACHE_MAX = 512
_STATUS_CODES: dict[str, int] = {}
_NAMES: dict[str, str] = {}  # valid header name -> its lowercase form


def check_status(status: object) -> int:
    """Validate a WSGI status line; return its code."""
    if type(status) is str:
        code = _STATUS_CODES.get(status)
        if code is not None:
            return code
    else:
        raise ResponseError(f"status must be a str, got {type(status).__name__}")
    code = _check_status(status)
    if len(_STATUS_CODES) < _CACHE_MAX:
        _STATUS_CODES[status] = code
    return code


def _check_status(status: str) -> int:
    if not _STATUS.fullmatch(status):
        raise ResponseError(f"invalid status line {status!r}")
    code = int(status[:3])
    if code < 200:
        raise ResponseError(f"a WSGI app cannot send informational status {status!r}")
    return code


class Cleaned(NamedTuple):
    """The app's headers as the server will send them, and what it needs to know of them."""

    headers: list[tuple[str, str]]
    close: bool  # the app sent `Connection: close`
    content_length: int | None
    has_date: bool
    has_server: bool


def clean_headers(headers: object) -> Cleaned:
    """Validate the app's headers and drop hop-by-hop ones."""
    if type(headers) is not list:
        raise ResponseError(f"headers must be a list, got {type(headers).__name__}")
    out: list[tuple[str, str]] = []
    close = has_date = has_server = False
    content_length: int | None = None
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise ResponseError(f"header {item!r} is not a (name, value) tuple")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise ResponseError(f"header {item!r}: name and value must be str")
        lname = _NAMES.get(name)
        if lname is None:
            if not _TOKEN.fullmatch(name):
                raise ResponseError(f"invalid header name {name!r}")
            lname = name.lower()
            if len(_NAMES) < _CACHE_MAX:
                _NAMES[name] = lname
        if _BAD_VALUE_CHAR.search(value):
            raise ResponseError(f"invalid character in header {name!r} value {value!r}")
        if lname in HOP_BY_HOP:
            if lname == "connection" and "close" in value.lower():
                close = True
            continue
        if lname == "content-length":
            text = value.strip()
            if not text.isdigit() or not text.isascii() or content_length is not None:
                raise ResponseError(f"invalid Content-Length {value!r}")
            content_length = int(text)
        elif lname == "date":
            has_date = True
        elif lname == "server":
            has_server = True
        out.append((name, value.strip(" \t")))
    return Cleaned(out, close, content_length, has_date, has_server)


class StartResponse:
    """The `start_response` callable for one request (PEP 3333 §"The start_response() Callable")."""

    __slots__ = (
        "status",
        "code",
        "headers",
        "close",
        "content_length",
        "has_date",
        "has_server",
        "headers_sent",
        "extra_header",
        "_write",
    )

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.status: str | None = None
        self.code = 0
        self.headers: list[tuple[str, str]] = []
        self.close = False
        self.content_length: int | None = None
        self.has_date = self.has_server = False
        self.headers_sent = False
        # (name, lowercase name, value) the response writer adds unless the
        # app sent that header itself: set by the request-id layer, which
        # would otherwise wrap start_response and have its header validated
        # again on every request (it made or checked the value itself).
        self.extra_header: tuple[str, str, str] | None = None
        self._write = write

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    # Too late to change the response: re-raise so the server
                    # aborts the connection (PEP 3333).
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the traceback cycle, as PEP 3333 asks
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        code = check_status(status)
        cleaned = clean_headers(headers)
        self.status, self.code = status, code
        self.headers, self.close, self.content_length = cleaned[:3]
        self.has_date, self.has_server = cleaned.has_date, cleaned.has_server
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy `write()` callable: body bytes sent right away."""
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, got {type(data).__name__}")
        self._write(data)


class FileWrapper:
    """`wsgi.file_wrapper`: lets the server send a real file with `os.sendfile`."""

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self.filelike.read(self.blksize)
            if not data:
                return
            yield data

    def fileno(self) -> int | None:
        """The file's descriptor if it is a real file the kernel can send, else None."""
        try:
            fd: Any = self.filelike.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        return fd if isinstance(fd, int) else None

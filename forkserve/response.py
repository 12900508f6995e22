"""The response side of a connection: framing and writing what the app returned.

Runs in a worker, after fork. `ResponseWriter` turns the status and headers
the app gave `start_response` (already validated by `wsgi.StartResponse`) and
its body iterable into bytes, and hands them to the connection to write; it
never touches a socket itself. `error_response` is the answer for a request
the server refuses without the app.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Protocol

from forkserve import SERVER_SOFTWARE
from forkserve.environ import Body
from forkserve.errors import ClientGone, WriteTimeout
from forkserve.log import log
from forkserve.wsgi import FileWrapper, ResponseError, StartResponse

REASONS = {
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(seconds: float) -> str:
    """RFC 9110 §5.6.7 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.

    Formatted by hand: strftime's %a/%b follow the process locale (an app may
    set one), and email.utils would load the whole email package per worker.
    """
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


class DateCache:
    """The `Date` header value, formatted at most once a second."""

    def __init__(self) -> None:
        self.second = 0
        self.value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = http_date(now)
        return self.value


DATE = DateCache()


def error_body(status: int) -> bytes:
    """The body of the server's own error page for `status`."""
    return f"{status} {REASONS.get(status, 'Error')}\n".encode("ascii")


def error_response(status: int, detail: str = "", body: bytes | None = None) -> bytes:
    """A complete response the server sends for a request it refuses itself.

    `detail` stays in the error log, never on the wire (it may describe the
    app's internals); `body` replaces the standard page where the server has
    something more useful to say to the client.
    """
    reason = REASONS.get(status, "Error")
    if body is None:
        body = error_body(status)
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Date: {DATE.get()}\r\nServer: {SERVER_SOFTWARE}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode("ascii") + body


_SEQUENCES = (list, tuple)  # response bodies sent in one write, with a Content-Length


class ResponseChannel(Protocol):
    """What a writer needs of its connection (`connection.Connection`)."""

    keep_alive: bool
    draining: bool
    tls: bool

    def send_all(self, data: bytes | memoryview) -> None: ...
    def sendfile(self, fd: int, offset: int, count: int) -> int: ...


class ResponseWriter:
    """Frames and writes one response from what the app gave `start_response`."""

    __slots__ = (
        "conn",
        "head_only",
        "http11",
        "start",
        "headers_sent",
        "sent",
        "sent_headers",
        "close",
        "broken",
        "chunked",
        "remaining",
        "status",
        "body",
    )

    def __init__(
        self, conn: ResponseChannel, head_only: bool, http_version: bytes, body: Body | None = None
    ) -> None:
        self.conn = conn
        self.body = body
        self.head_only = head_only
        self.http11 = http_version == b"1.1"
        self.start: StartResponse | None = None
        self.headers_sent = False
        self.sent = 0
        self.sent_headers: list[tuple[str, str]] = []
        self.close = not conn.keep_alive
        self.broken = False
        self.chunked = False
        self.remaining: int | None = None  # body bytes still owed under Content-Length
        self.status = ""

    def status_line(self) -> str:
        return self.status or "-"

    def _head(self, body_length: int | None) -> bytes:
        """Serialize the status line and headers, deciding the framing."""
        start = self.start
        assert start is not None
        if start.status is None:
            raise ResponseError("the app returned without calling start_response")
        code = start.code
        headers = list(start.headers)
        extra = start.extra_header
        if extra is not None:
            # The app's own header wins (it may forward an upstream id on purpose).
            name, lowered, value = extra
            size = len(name)
            for own, _ in headers:
                if len(own) == size and own.lower() == lowered:
                    break
            else:
                headers.append((name, value))
        no_body = self.head_only or code in (204, 304)
        length = start.content_length
        if start.close:
            self.close = True
        if self.body is not None and self.body.waiting_for_continue:
            # RFC 9110 §10.1.1: the client will not send the body it announced,
            # so the connection cannot carry another request.
            self.close = True
        if length is None and code not in (204, 304):
            if body_length is not None:
                length = body_length
                headers.append(("Content-Length", str(length)))
            elif self.head_only:
                pass  # the GET would have been framed some way we cannot know: say nothing
            elif self.http11:
                self.chunked = True
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                self.close = True  # HTTP/1.0 without a length: the close ends the body
        self.remaining = None if no_body else length
        if self.conn.draining:
            self.close = True
        if not start.has_date:
            headers.append(("Date", DATE.get()))
        if not start.has_server:
            headers.append(("Server", SERVER_SOFTWARE))
        if self.close:
            headers.append(("Connection", "close"))
        elif not self.http11:
            headers.append(("Connection", "keep-alive"))
        self.sent_headers = headers
        self.status = start.status or ""
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers])
        return f"HTTP/1.1 {start.status}\r\n{lines}\r\n".encode("latin-1")

    def _frame(self, data: bytes) -> bytes:
        """Body bytes as they go on the wire, checking Content-Length."""
        if self.head_only or (self.start is not None and self.start.code in (204, 304)):
            return b""
        if self.remaining is not None:
            if len(data) > self.remaining:
                raise ResponseError(
                    f"app sent more than its Content-Length ({self.sent + len(data)} bytes)"
                )
            self.remaining -= len(data)
        self.sent += len(data)
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def write_legacy(self, data: bytes) -> None:
        """The `write()` callable: send the head first if needed, then `data`."""
        if not data:
            return
        if self.headers_sent:
            self.conn.send_all(self._frame(data))
            return
        head = self._head(None)
        # Framed before the head counts as sent: a first chunk longer than the
        # Content-Length raises here, while a clean 500 can still replace it.
        out = head + self._frame(data)
        self._mark_head_sent()
        self.conn.send_all(out)

    def send_iterable(self, result: Iterable[bytes]) -> None:
        """Send the app's response iterable; one write for a small known body."""
        if isinstance(result, FileWrapper) and not self.headers_sent:
            if self._try_sendfile(result):
                return
        if isinstance(result, _SEQUENCES) and not self.headers_sent:
            for item in result:
                if type(item) is not bytes:
                    raise TypeError(f"app yielded {type(item).__name__}, not bytes")
            body = b"".join(result)
            assert self.start is not None
            if self.start.status is None:
                raise ResponseError("the app returned without calling start_response")
            head = self._head(len(body))
            out = head + self._frame(body) if body else head
            if self.chunked:
                out += b"0\r\n\r\n"
            self._mark_head_sent()
            self.conn.send_all(out)
            self._check_complete()
            return
        for data in result:
            if type(data) is not bytes:
                raise TypeError(f"app yielded {type(data).__name__}, not bytes")
            if data:
                self.write_legacy(data)
        self.end()

    def end(self) -> None:
        """After the last body piece: send any unsent head and the final chunk."""
        out = b""
        if not self.headers_sent:
            out = self._head(0 if self.start and self.start.content_length is None else None)
            self._mark_head_sent()
        if self.chunked:
            out += b"0\r\n\r\n"
        if out:
            self.conn.send_all(out)
        self._check_complete()

    def _mark_head_sent(self) -> None:
        """From here on the status cannot change: `start_response(..., exc_info)`
        must re-raise (PEP 3333), so StartResponse has to see this too."""
        self.headers_sent = True
        if self.start is not None:
            self.start.headers_sent = True

    def _check_complete(self) -> None:
        if self.remaining:
            self.close = True
            log.error(
                "app sent %d bytes less than its Content-Length; closing the connection",
                self.remaining,
            )

    def _try_sendfile(self, wrapper: FileWrapper) -> bool:
        if self.conn.tls:
            return False  # the kernel cannot encrypt: iterate the file through ssl instead
        fd = wrapper.fileno()
        if fd is None:
            return False
        try:
            size = os.fstat(fd).st_size
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            return False
        assert self.start is not None
        if self.start.status is None:
            raise ResponseError("the app returned without calling start_response")
        available = max(0, size - offset)
        head = self._head(available if self.start.content_length is None else None)
        self._mark_head_sent()
        self.conn.send_all(head)
        if self.remaining is None:
            return True  # HEAD / 204 / 304: no body
        count = min(available, self.remaining)
        sent = self.conn.sendfile(fd, offset, count)
        self.sent += sent
        self.remaining -= sent
        self._check_complete()
        return True

    def fail(self, status: int, message: str, exc: BaseException | None = None,
             log_traceback: bool = True) -> None:
        """The app (or the body) failed: log it; answer `status` if nothing was sent yet."""
        if log_traceback and exc is not None:
            log.error("%s", message, exc_info=(type(exc), exc, exc.__traceback__))
        else:
            log.warning("%s", message)
        self.close = True
        if self.headers_sent:
            self.broken = True  # mid-stream: the only honest signal left is closing
            return
        self.status = f"{status} {REASONS.get(status, 'Error')}"
        self._mark_head_sent()
        # What the access log reports is what went out: the error page, not
        # the head the app's response had before it failed.
        body = error_body(status)
        self.sent_headers = [("Content-Type", "text/plain; charset=utf-8"),
                             ("Content-Length", str(len(body))), ("Connection", "close")]
        self.sent = 0
        try:
            self.conn.send_all(error_response(status, body=body))
        except (ClientGone, WriteTimeout):
            self.broken = True
            return
        self.sent = len(body)

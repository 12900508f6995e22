"""The request side of PEP 3333: a request head becomes an environ dict.

Pure: `build_environ` is a function of its arguments (no sockets, no globals
but caches), tested with a table of inputs. `Body` is `wsgi.input`, reading
from chunks already received and an optional function that pulls more.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from forkserve import SERVER_SOFTWARE

# Header names come from a small set in practice; cache their environ keys.
_KEY_CACHE: dict[bytes, str | None] = {}
_KEY_CACHE_MAX = 1024


def header_key(name: bytes) -> str | None:
    """`User-Agent` (any case) -> `HTTP_USER_AGENT`; None for names that must be dropped.

    Names with `_` are dropped: `X_Auth` and `X-Auth` would both become
    HTTP_X_AUTH, letting a client spoof a header a proxy set (the reason
    nginx, Apache and gunicorn drop them too). The cache is keyed by the name
    as it arrived, so the case-folding happens once per spelling, not per request.
    """
    key = _KEY_CACHE.get(name)
    if key is not None or name in _KEY_CACHE:
        return key
    lowered = name.lower()
    if b"_" in lowered:
        key = None
    elif lowered == b"content-type":
        key = "CONTENT_TYPE"
    elif lowered == b"content-length":
        key = "CONTENT_LENGTH"
    else:
        key = "HTTP_" + lowered.decode("latin-1").upper().replace("-", "_")
    if len(_KEY_CACHE) < _KEY_CACHE_MAX:
        _KEY_CACHE[name] = key
    return key


@dataclass(frozen=True)
class ServerFacts:
    """What a worker knows about one listener, fixed for its lifetime."""

    server_name: str
    server_port: str
    url_scheme: str = "http"
    script_name: str = ""

    def base_environ(self, errors: Any, file_wrapper: Any,
                     multithread: bool = False) -> dict[str, Any]:
        """The keys every request on this listener shares; copied per request.

        `multithread`: whether another thread of this process may call the app
        at the same time (a threaded worker, forkserve.threads), as PEP 3333 says.
        """
        return {
            "SCRIPT_NAME": self.script_name,
            "SERVER_NAME": self.server_name,
            "SERVER_PORT": self.server_port,
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": self.url_scheme,
            "wsgi.errors": errors,
            "wsgi.multithread": multithread,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": file_wrapper,
        }


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Request target -> (raw path, raw query). Absolute-form loses scheme and authority."""
    if target[:1] == b"/" and b"?" not in target and b"#" not in target:
        return target, b""  # the common case: a plain origin-form path
    if not target.startswith(b"/"):
        if target == b"*":
            return b"*", b""
        scheme_end = target.find(b"://")
        if scheme_end >= 0:
            slash = target.find(b"/", scheme_end + 3)
            qmark = target.find(b"?", scheme_end + 3)
            if slash < 0 or (0 <= qmark < slash):
                rest = target[qmark:] if qmark >= 0 else b""
                target = b"/" + rest
            else:
                target = target[slash:]
    path, _, query = target.partition(b"?")
    path = path.partition(b"#")[0]
    query = query.partition(b"#")[0]
    return path, query


def decode_path(raw_path: bytes) -> str:
    """PEP 3333: PATH_INFO is the percent-decoded path, as latin-1 'bytes in a str'."""
    if b"%" in raw_path:
        raw_path = unquote_to_bytes(raw_path)
    return raw_path.decode("latin-1")


# A server sees few distinct Host values; bounded so a client cannot grow it.
_HOST_CACHE: dict[tuple[str, str], tuple[str, str]] = {}
_HOST_CACHE_MAX = 256


def split_host(host: str, default_port: str) -> tuple[str, str]:
    """`example.com:8080` / `[::1]:8080` / `example.com` -> (name, port)."""
    cached = _HOST_CACHE.get((host, default_port))
    if cached is not None:
        return cached
    parts = _split_host(host, default_port)
    if len(_HOST_CACHE) < _HOST_CACHE_MAX:
        _HOST_CACHE[(host, default_port)] = parts
    return parts


def _split_host(host: str, default_port: str) -> tuple[str, str]:
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            port = host[end + 2 :] if host[end + 1 : end + 2] == ":" else ""
            return host[: end + 1], port or default_port
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, port
    return host, default_port


def build_environ(
    base: dict[str, Any],
    method: bytes,
    target: bytes,
    http_version: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    peer: tuple[str, int] | None,
    wsgi_input: Any,
) -> dict[str, Any]:
    """One request's environ (PEP 3333), from the parsed head and the listener's base.

    `headers` are (name, value) pairs in arrival order, names in any case
    (h11's `raw_items()`); repeated headers are joined with ',' (RFC 9110
    §5.3), except Cookie, joined with '; ' (RFC 6265 §5.4).
    """
    environ = base.copy()
    raw_path, query = split_target(target)
    path_info = decode_path(raw_path)
    script_name = environ["SCRIPT_NAME"]
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        path_info = path_info[len(script_name) :]
    environ["REQUEST_METHOD"] = method.decode("latin-1")
    environ["PATH_INFO"] = path_info
    environ["QUERY_STRING"] = query.decode("latin-1")
    environ["RAW_URI"] = target.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/" + http_version.decode("latin-1")
    environ["wsgi.input"] = wsgi_input
    if peer is not None:
        environ["REMOTE_ADDR"] = peer[0]
        environ["REMOTE_PORT"] = str(peer[1])
    else:  # unix socket: no peer address
        environ["REMOTE_ADDR"] = ""
    for name, value in headers:
        key = header_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ and key.startswith("HTTP_"):
            sep = "; " if key == "HTTP_COOKIE" else ","
            environ[key] = environ[key] + sep + text
        else:
            environ[key] = text
    if target[:1] != b"/" and b"://" in target:
        # RFC 9112 §3.2.2: with an absolute-form target the server MUST ignore
        # Host and use the target's authority (http.check_head validated it).
        authority = target.split(b"://", 1)[1].split(b"/", 1)[0].split(b"?", 1)[0]
        environ["HTTP_HOST"] = authority.split(b"#", 1)[0].decode("latin-1")
    host = environ.get("HTTP_HOST")
    if host:
        default_port = "443" if environ["wsgi.url_scheme"] == "https" else "80"
        environ["SERVER_NAME"], environ["SERVER_PORT"] = split_host(host, default_port)
    return environ


class Body:
    """`wsgi.input`: the decoded request body as a binary file-like object.

    `chunks` holds body bytes already received; `pull` (if any) returns the
    next piece from the connection, or b"" once the body has ended. Reading
    past the end returns b"" (PEP 3333 and `wsgi.input_terminated`). A body
    received in full before the app runs is seekable; one spooled to disk is
    read from `file` (already at offset 0). A streamed body (`pull`) is not.
    """

    __slots__ = ("_buf", "_pos", "_pull", "_on_first_read", "_file", "_streamed")

    def __init__(
        self,
        chunks: list[bytes] | None = None,
        pull: Callable[[], bytes] | None = None,
        on_first_read: Callable[[], None] | None = None,
        file: IO[bytes] | None = None,
    ) -> None:
        self._buf = b"".join(chunks) if chunks else b""
        self._pos = 0
        self._pull = pull
        self._on_first_read = on_first_read
        self._file = file
        self._streamed = pull is not None  # read as it arrives: what was read is gone

    @property
    def waiting_for_continue(self) -> bool:
        """The client waits for 100 Continue and the app never read: no body will come."""
        return self._on_first_read is not None and self._pull is not None

    @property
    def complete(self) -> bool:
        """True once the whole body has been received (read or not)."""
        return self._pull is None

    def _more(self) -> bool:
        if self._pull is None:
            return False
        if self._on_first_read is not None:
            callback, self._on_first_read = self._on_first_read, None
            callback()
        piece = self._pull()
        if not piece:
            self._pull = None
            return False
        if self._pos:
            self._buf = self._buf[self._pos :] + piece
            self._pos = 0
        else:
            self._buf += piece
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._file is not None:
            return self._file.read(-1 if size is None else size)
        if size is None or size < 0:
            while self._more():
                pass
            out = self._buf[self._pos :]
            self._pos = len(self._buf)  # kept: a received body can be read again after seek(0)
            return out
        while len(self._buf) - self._pos < size and self._more():
            pass
        out = self._buf[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def readline(self, size: int | None = -1) -> bytes:
        if self._file is not None:
            return self._file.readline(-1 if size is None else size)
        limit = sys.maxsize if size is None or size < 0 else size
        while True:
            nl = self._buf.find(b"\n", self._pos, self._pos + limit)
            if nl >= 0:
                end = nl + 1
                break
            if len(self._buf) - self._pos >= limit or not self._more():
                end = min(len(self._buf), self._pos + limit)
                break
        out = self._buf[self._pos : end]
        self._pos = end
        return out

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                break
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def seekable(self) -> bool:
        return not self._streamed

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move within a body received in full (not a streamed one: it is gone once read)."""
        if self._file is not None:
            return self._file.seek(offset, whence)
        if self._streamed:
            raise io.UnsupportedOperation("a streamed request body cannot seek")
        base = (0, self._pos, len(self._buf))[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        if self._file is not None:
            return self._file.tell()
        if self._streamed:
            raise io.UnsupportedOperation("a streamed request body cannot tell")
        return self._pos

    def drain(self, limit: int) -> bool:
        """Discard up to `limit` unread bytes; True if the body then ended."""
        self._buf, self._pos = b"", 0
        # Drain without triggering 100-continue: a client that waits for it
        # sends no body, and then the connection is simply closed.
        if self._on_first_read is not None:
            return self._pull is None
        seen = 0
        while self._pull is not None and seen <= limit:
            piece = self._pull()
            if not piece:
                self._pull = None
                break
            seen += len(piece)
        return self._pull is None

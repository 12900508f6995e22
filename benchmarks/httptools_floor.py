"""A reference point, not a server: the least a prefork httptools WSGI server can do.

    python -m benchmarks.httptools_floor MODULE:APP --port PORT [--workers N]

The same loop as `benchmarks/h11_floor.py` (a master that forks N children,
each a `selectors` loop over the shared listening socket and its keep-alive
connections, a minimal environ, one `sendall` per response), with httptools
(llhttp) parsing requests instead of h11, and the response head formatted
with one `%`. It sets the ceiling `--http httptools` can reach in Python on
this machine: forkserve's own cost is the difference.

It has none of a server's safety: no head pre-check, no limits or timeouts,
no logging, no signals but SIGTERM, no graceful anything. Never serve with it.
"""

from __future__ import annotations

import io
import selectors
import socket
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from benchmarks.client import HOST
from benchmarks.h11_floor import App, floor_args, fork_and_wait, load


class Client:
    """One keep-alive connection: httptools' callbacks collect each request as it arrives."""

    def __init__(self, sock: socket.socket, peer: tuple[str, int], app: App, port: int) -> None:
        self.sock = sock
        self.peer = peer
        self.app = app
        self.port = port
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.out = bytearray()
        self.keep_alive = True

    # -- httptools callbacks ---------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        # Asked here: once the message is complete llhttp resets, and
        # should_keep_alive() no longer remembers a `Connection: close`.
        self.keep_alive = self.parser.should_keep_alive()
        self.out += self.respond(self.environ())

    # -- the request ----------------------------------------------------------
    def environ(self) -> dict[str, Any]:
        path, _, query = self.url.partition(b"?")
        parser = self.parser
        environ: dict[str, Any] = {
            "REQUEST_METHOD": parser.get_method().decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": HOST,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": "HTTP/" + parser.get_http_version(),
            "REMOTE_ADDR": self.peer[0],
            "REMOTE_PORT": str(self.peer[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b"".join(self.body)),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in self.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        return environ

    def respond(self, environ: dict[str, Any]) -> bytes:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            started[:] = [status, headers]
            return lambda data: None  # the write() callable: none of our apps use it

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        if not any(name.lower() == "content-length" for name, _ in headers):
            lines += f"Content-Length: {len(body)}\r\n"
        if not self.keep_alive:
            # Say so, as h11 does for the h11 floor: a client that asked for
            # keep-alive (wrk) counts an unannounced close as a read error.
            lines += "Connection: close\r\n"
        return b"HTTP/1.1 %s\r\n%s\r\n%s" % (status.encode("latin-1"),
                                             lines.encode("latin-1"), body)


def serve(listener: socket.socket, app: App, port: int) -> None:
    """One child's loop; runs until the process is killed."""
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _events in selector.select():
            client: Client | None = key.data
            if client is None:
                try:
                    sock, peer = listener.accept()
                except BlockingIOError:
                    continue  # another child took it
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(sock, selectors.EVENT_READ, Client(sock, peer, app, port))
                continue
            keep = True
            try:
                data = client.sock.recv(65536)
                if data:
                    client.parser.feed_data(data)
                if client.out:
                    client.sock.sendall(client.out)
                    client.out = bytearray()
                keep = bool(data) and client.keep_alive
            except (httptools.HttpParserError, OSError):
                keep = False
            if not keep:
                selector.unregister(client.sock)
                client.sock.close()


def main(argv: list[str] | None = None) -> int:
    args = floor_args(argv, __doc__)
    app = load(args.app)
    listener = socket.create_server((HOST, args.port), backlog=1024)
    listener.setblocking(False)  # every child races for each connection
    return fork_and_wait(args.workers, lambda: serve(listener, app, args.port))

if __name__ == "__main__":
    sys.exit(main())

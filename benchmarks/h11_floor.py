"""A reference point, not a server: the least a prefork h11 WSGI server can do.

    python -m benchmarks.h11_floor MODULE:APP --port PORT [--workers N]

Issue 6 sets its targets from "a minimal h11 keep-alive server with a fair
selector loop". This is that server, run in the same benchmark run as the
others, so each run shows what h11 itself allows on that machine and how
close forkserve gets to it: forkserve's own cost is the difference.

It does only what a hello-world, Flask, streaming or echo request needs: a
master that binds one socket and forks N children, each with a `selectors`
loop over the listening socket and its keep-alive connections, one
`h11.Connection` per client, a minimal environ, and `sendall` per event. It
has none of a server's safety: no head pre-check, no limits or timeouts, no
logging, no signals but SIGTERM, no graceful anything. Never serve with it.
"""

from __future__ import annotations

import argparse
import io
import os
import selectors
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

from benchmarks.client import HOST

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def load(spec: str) -> App:
    module_name, _, attr = spec.partition(":")
    module = __import__(module_name, fromlist=[attr or "application"])
    app: App = getattr(module, attr or "application")
    return app


def environ_for(request: h11.Request, body: bytes, peer: tuple[str, int],
                port: int) -> dict[str, Any]:
    target = request.target
    path, _, query = target.partition(b"?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": HOST,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "REMOTE_ADDR": peer[0],
        "REMOTE_PORT": str(peer[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in request.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def respond(sock: socket.socket, conn: h11.Connection, app: App,
            environ: dict[str, Any]) -> None:
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [status, headers]
        return lambda data: None  # the write() callable: none of our apps use it

    result = app(environ, start_response)
    try:
        # One send for a small response, as any server worth measuring does;
        # a large one goes out every 64 KiB.
        out = bytearray()
        for chunk in result:
            if conn.our_state is h11.SEND_RESPONSE:
                out += conn.send(_response(started))
            if chunk:
                out += conn.send(h11.Data(data=chunk))
            if len(out) >= 65536:
                sock.sendall(out)
                out = bytearray()
        if conn.our_state is h11.SEND_RESPONSE:
            out += conn.send(_response(started))
        out += conn.send(h11.EndOfMessage())
        sock.sendall(out)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _response(started: list[Any]) -> h11.Response:
    status, headers = started
    code, _, reason = status.partition(" ")
    return h11.Response(status_code=int(code), reason=reason, headers=headers)


class Client:
    """One keep-alive connection: its h11 state and the request being read."""

    def __init__(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        self.sock = sock
        self.peer = peer
        self.h11 = h11.Connection(h11.SERVER)
        self.request: h11.Request | None = None
        self.body: list[bytes] = []

    def advance(self, app: App, port: int) -> None:
        """Handle every complete event h11 has: answer each request as it ends."""
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request, self.body = event, []
            elif isinstance(event, h11.Data):
                self.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert self.request is not None
                environ = environ_for(self.request, b"".join(self.body), self.peer, port)
                respond(self.sock, conn, app, environ)
                self.request, self.body = None, []
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
            else:  # ConnectionClosed
                return


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
                selector.register(sock, selectors.EVENT_READ, Client(sock, peer))
                continue
            try:
                data = client.sock.recv(65536)
                client.h11.receive_data(data)
                client.advance(app, port)
            except (h11.ProtocolError, OSError):
                data = b""
            if not data or client.h11.our_state in (h11.MUST_CLOSE, h11.CLOSED):
                selector.unregister(client.sock)
                client.sock.close()


def floor_args(argv: list[str] | None, doc: str) -> argparse.Namespace:
    """The command line every reference server here takes: APP --port P [--workers N]."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("app", help="MODULE:APP")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args(argv)


def fork_and_wait(workers: int, child: Callable[[], None]) -> int:
    """Fork `workers` children that each run `child`; SIGKILL them all on TERM or INT.

    A reference has no respawning: when any child dies, the rest are killed
    and the parent exits, so a broken run shows as a dead server.
    """
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(1)
        children.append(pid)

    def stop(signum: int, frame: Any) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the child that died, already reaped
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while children:
        pid, _status = os.wait()
        if pid in children:
            stop(signal.SIGTERM, None)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = floor_args(argv, __doc__)
    app = load(args.app)
    listener = socket.create_server((HOST, args.port), backlog=1024)
    listener.setblocking(False)  # every child races for each connection
    return fork_and_wait(args.workers, lambda: serve(listener, app, args.port))

if __name__ == "__main__":
    sys.exit(main())

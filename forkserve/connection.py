"""One client connection in a worker: the only code that reads or writes a client socket.

Runs in a worker, after fork, in its single thread. A connection lives in the
worker's selector while its TLS handshake, PROXY protocol header, request
head (and a small body) are still arriving, or while it is idle between
keep-alive requests; none of that costs the worker any time. Only once a
request is complete does `run()` call the app, with the socket read and
written under deadlines so a client that stops reading or sending cannot hold
the worker past them.

The parser seam (`forkserve.parser`) splits each request head, after
`http.check_head` has refused what h11 would let through; bodies are framed by
`http`'s own strict decoders (h11's chunked parser accepts malformed chunk
extensions and trailers). Responses are framed by `forkserve.response` from
the already validated status and headers, which also saves h11's 17 µs send
path per request; this module writes them.
"""

from __future__ import annotations

import enum
import errno
import os
import select
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

from forkserve.config import Config
from forkserve.environ import Body, build_environ
from forkserve.errors import ClientGone, HTTPError, WriteTimeout
from forkserve.http import (
    BodyDecoder,
    ChunkedDecoder,
    HeadFacts,
    LengthDecoder,
    Limits,
    as_http11,
    check_first_byte,
    check_head,
    find_head_end,
    judge_request_line,
    request_line_of,
    strip_leading_empty_lines,
)
from forkserve.log import AccessLog, log
from forkserve.parser import HeadParser, RequestHead, head_parser, parse_h11
from forkserve.proxy import AllowList, ProxyProtocolError, apply_forwarded, parse_proxy_header
from forkserve.response import ResponseWriter, error_body, error_response
from forkserve.tls import make_context
from forkserve.wsgi import ResponseError, StartResponse

if TYPE_CHECKING:
    # ssl is imported only once TLS is configured (forkserve.tls): loading it
    # costs every process ~14 ms and libssl's pages. Until then no socket can
    # raise its errors, so the code below looks at them only on TLS connections.
    import ssl

RECV_SIZE = 65536
# An unread body larger than this is not drained after the response: the
# connection is closed instead (reading it would only waste the worker).
MAX_DRAIN = 256 * 1024
LINGER_SECONDS = 2.0
# After the FIN that ends an idle keep-alive connection, how long its input is
# read and discarded before the last close: long enough for a request that
# crossed the FIN in flight to land here (and not on a closed socket, which
# answers with a reset), short enough not to hold a draining worker.
IDLE_LINGER_SECONDS = 0.5
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

class State(enum.Enum):
    """Where a connection is in its life (only READY, once run, holds the worker)."""

    IDLE = "idle"  # keep-alive, waiting for the next request's first byte
    HEAD = "head"  # TLS handshake, PROXY header or part of a request head is arriving
    BODY = "body"  # head done, a small body is being received before the app runs
    READY = "ready"  # a complete request waits for its turn
    CLOSING = "closing"  # answered with an error; reading the rest before closing
    CLOSED = "closed"


class ClientSocket(Protocol):
    """What a connection uses of its socket (a `socket.socket`, an `ssl.SSLSocket`)."""

    def fileno(self) -> int: ...
    def recv(self, size: int, /) -> bytes: ...
    def send(self, data: bytes | memoryview, /) -> int: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


RequestLine = tuple[bytes, bytes, bytes]  # method, target, version ("HTTP/1.1") as received


class Refusal(NamedTuple):
    """A request the server answered itself, before (or instead of) the app."""

    status: int
    detail: str  # why, for the error log (never sent)
    peer: tuple[str, int] | None
    request_line: RequestLine | None  # None when no valid-looking line was read
    sent: int  # body bytes of the error page that went out


@dataclass
class Settings:
    """The few values a connection needs (not the whole config); built once per worker."""

    limits: Limits
    keepalive: float
    header_timeout: float
    body_timeout: float
    write_timeout: float
    body_buffer_size: int
    forwarded: AllowList | None = None  # peers whose X-Forwarded-*/Forwarded are believed
    proxy_protocol: AllowList | None = None  # peers that must send a PROXY header; None = off
    tls: ssl.SSLContext | None = None
    parse_head: HeadParser = parse_h11  # the parser seam (forkserve.parser)
    app_name: str = "APP"  # the APP spec, to name the app in its errors
    stream_body_paths: tuple[bytes, ...] = ()  # --stream-body-path prefixes, as bytes
    # Told of every request refused before the app (the worker's access and
    # error logs); None = a debug line only.
    on_refused: Callable[[Refusal], None] | None = None


_NO_BODY = LengthDecoder(0)  # never fed: a request with bytes after it gets its own


class Connection:
    """A client socket and the request cycle on it."""

    __slots__ = (
        "sock",
        "fd",
        "peer",
        "peer_label",
        "base",
        "settings",
        "state",
        "buf",
        "scan",
        "deadline",
        "spool",
        "last_active",
        "request",
        "facts",
        "decoder",
        "body_chunks",
        "body_size",
        "keep_alive",
        "requests",
        "draining",
        "handshaking",
        "proxy_pending",
        "forward_trusted",
        "tls",
        "peer_closed",
        "hold_fd",
        "line_judged",
        "writer",
        "raw_head",
    )

    def __init__(
        self,
        sock: ClientSocket,
        peer: tuple[str, int] | None,
        base: dict[str, Any],
        settings: Settings,
        now: float,
    ) -> None:
        self.fd = sock.fileno()
        self.tls = settings.tls is not None
        self.handshaking = False
        if settings.tls is not None:
            assert isinstance(sock, socket.socket), "TLS needs a kernel socket"
            # The handshake runs non-blocking while parked, under the head deadline,
            # so a client that never finishes it costs the worker nothing.
            self.handshaking = True
            try:
                sock = settings.tls.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:
                # Gone already (reset before accept): the first read closes it;
                # closing here would leave the worker a dead fd to register.
                log.debug("TLS setup for %s failed: %s", peer, exc)
        self.sock = sock
        self.peer = peer
        self.peer_label = _peer_label(peer)
        self.base = base
        self.settings = settings
        self.state = State.HEAD
        self.buf = bytearray()
        self.scan = 0
        self.line_judged = False  # the request line in `buf` has ended and is valid
        self.writer: ResponseWriter | None = None  # while the app runs: its response
        self.raw_head = b""  # the last head as received (kept for `carried`, not copied)
        self.deadline = now + settings.header_timeout
        # The body past --body-buffer-size, on disk while it arrives (None = all in memory).
        self.spool: IO[bytes] | None = None
        self.last_active = now
        self.request: RequestHead | None = None
        self.facts: HeadFacts | None = None
        self.decoder: BodyDecoder = _NO_BODY
        self.body_chunks: list[bytes] = []
        self.body_size = 0
        self.keep_alive = True
        self.requests = 0
        self.draining = False
        self.peer_closed = False
        # On a pool thread (forkserve.threads) close() leaves the socket open
        # for the loop to close once it has forgotten this connection: the loop
        # keys connections by fd, and a number freed early could be reused by
        # the next accept before the loop hears this one is gone.
        self.hold_fd = False
        self.proxy_pending = (
            settings.proxy_protocol is not None and settings.proxy_protocol.trusts(peer)
        )
        self.forward_trusted = (
            settings.forwarded is not None and settings.forwarded.trusts(peer)
        )

    @property
    def body_done(self) -> bool:
        return self.decoder.done

    # -- receiving, while parked in the selector -------------------------
    def on_readable(self, now: float) -> State:
        """Read what the socket has and advance; returns the new state."""
        state = self.state
        if state is State.READY:
            return state  # its turn comes; the bytes wait in the kernel until then
        if self.handshaking and not self.handshake():
            return self.state
        try:
            data = self.sock.recv(RECV_SIZE)
            if self.tls and data:
                # A TLS record may hold more than one recv returned; epoll would
                # not wake us for bytes already inside OpenSSL.
                while self.sock.pending():  # type: ignore[attr-defined]
                    data += self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return state
        except OSError as exc:
            if self.tls and _tls_wants(exc):
                return state
            self.close()
            return self.state
        if state is State.CLOSING:
            if not data:
                self.close()
            return self.state
        if not data:
            if state is State.BODY:
                self.refuse(400, "client closed during the request body")
            else:
                self.close()
            return self.state
        self.last_active = now
        if state is State.IDLE:
            self.state = State.HEAD
            self.deadline = now + self.settings.header_timeout
        if self.state is State.HEAD:
            if self.buf or self.proxy_pending:
                self.buf += data
                return self.advance_head(now)
            return self.advance_head(now, data)  # the common case: a whole head in one read
        if self.state is State.BODY:
            # --body-timeout limits inactivity: every read starts it again.
            self.deadline = now + self.settings.body_timeout
            return self.advance_body(data)
        return self.state

    def carried(self) -> bytes | None:
        """What another worker needs besides the socket to go on exactly from here; None if
        the state is more than bytes.

        Between requests or with a head arriving: the bytes read so far. A
        complete request without a body, waiting for its turn: its head as
        received and whatever came after it. A body arriving or a request in
        the app: None (forkserve.handoff moves only what this rebuilds).
        """
        state = self.state
        if self.handshaking:
            return None
        if state is State.IDLE or state is State.HEAD:
            return bytes(self.buf)
        facts = self.facts
        if (state is State.READY and facts is not None and not facts.content_length
                and not facts.chunked):
            return self.raw_head + self.decoder.rest
        return None

    def handshake(self) -> bool:
        """One non-blocking step of the TLS handshake; True once it is done.

        Also called by the worker's handoff watcher for a connection whose
        handshake would otherwise wait for a slow request (forkserve.worker).
        """
        import ssl  # already loaded: only TLS connections handshake

        sock = self.sock
        if not isinstance(sock, ssl.SSLSocket):
            self.close()
            return False
        try:
            sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # WantWrite would need the socket writable; a handshake flight is a few
            # KiB against a send buffer of 16 KiB or more, so in practice only
            # WantRead happens, and the head deadline bounds the rest.
            return False
        except (ssl.SSLError, OSError) as exc:
            # Plain HTTP on the TLS port, a protocol or cipher mismatch, a client
            # that hangs up: nothing to answer in a protocol both sides speak.
            log.debug("TLS handshake with %s failed: %s", self.peer, exc)
            self.close()
            return False
        self.handshaking = False
        return True

    def advance_head(self, now: float, fresh: bytes | None = None) -> State:
        """Look for a complete head in `buf`; validate it and hand it to the parser.

        `fresh` is a read that arrived while `buf` was empty: it is scanned where
        it lies (a head that came in one read is never copied) and goes into
        `buf` only if the head is not complete yet.
        """
        buf: bytes | bytearray = self.buf if fresh is None else fresh
        try:
            if self.proxy_pending:
                if not self._proxy_header():
                    return self.state
                buf = self.buf
            skip = strip_leading_empty_lines(buf)
            if skip:
                if fresh is None:
                    del self.buf[:skip]
                else:
                    buf = fresh = fresh[skip:]
                self.scan = 0
            limits = self.settings.limits
            check_first_byte(buf)  # before the line-ending rules: a TLS hello gets its own 400
            end = find_head_end(buf, self.scan, limits)
            if end < 0:
                # Incomplete: judge the request line as far as it came, so a
                # client that will never send a valid head hears so now, not
                # at the header timeout.
                if not self.line_judged:
                    self.line_judged = judge_request_line(buf, self.scan, limits)
                if fresh is not None:
                    self.buf += fresh
                self.scan = len(self.buf)
                return self.state
            head = self.raw_head = bytes(buf[:end])  # a whole bytes object is not copied
            rest = bytes(buf[end:])
            facts = check_head(head, limits)
            if facts.http11:
                # HTTP/1.2 and up (RFC 9110 §2.5): served as HTTP/1.1, and the
                # app is told so (SERVER_PROTOCOL, docs/security.md). Rewritten
                # before the parser, so h11 and httptools answer alike.
                head = as_http11(head)
            event = self.settings.parse_head(head)
            self.buf = bytearray()
            self.scan = 0
            self.line_judged = False
            length = facts.content_length
            if limits.body and length is not None and length > limits.body:
                raise HTTPError(413, "Content-Length larger than --limit-request-body")
        except HTTPError as exc:
            self.refuse(exc.status, exc.detail, exc.body, raw=buf)
            return self.state
        self.request, self.facts = event, facts
        self.body_chunks, self.body_size = [], 0
        self.keep_alive = facts.keep_alive and self.settings.keepalive > 0
        if not length and not facts.chunked:
            # No body, the common case. A pipelined request after it is kept
            # by a decoder of its own; with nothing after it, none is needed.
            if rest:
                self.decoder = LengthDecoder(0)
                self.decoder.decode(rest)
            else:
                self.decoder = _NO_BODY
            self.state = State.READY
            return self.state
        self.decoder = ChunkedDecoder(limits) if facts.chunked else LengthDecoder(length or 0)
        if facts.expect_continue and rest:
            # The client did not wait: its body is already arriving. RFC 9110
            # §10.1.1 lets the server omit the 100 then.
            facts = self.facts = facts._replace(expect_continue=False)
        if self._streams(event.target):
            # The app asked for this path's bodies as they arrive
            # (--stream-body-path): 100 Continue goes out when it first reads
            # (RFC 9110 §10.1.1). The price: a client that stalls holds this
            # worker up to --body-timeout per read (docs/security.md).
            return self._stream_rest(rest)
        # Everything else is received parked, so no upload holds a worker:
        # the app runs once the whole body is here, in memory up to
        # --body-buffer-size and spooled to a temporary file past it.
        if facts.expect_continue:
            # The head passed the limits (--limit-request-body was checked
            # against Content-Length above): ask for the body now.
            self.facts = facts._replace(expect_continue=False)
            if not self._send_continue_parked():
                return self.state
        self.state = State.BODY
        self.deadline = now + self.settings.body_timeout
        return self.advance_body(rest)

    def _streams(self, target: bytes) -> bool:
        """True if the app asked for this request's body as it arrives."""
        prefixes = self.settings.stream_body_paths
        return bool(prefixes) and target.startswith(prefixes)

    def _send_continue_parked(self) -> bool:
        """Send 100 Continue without blocking; False (and closed) if the socket will not take it.

        Nothing else is in the send buffer now (every earlier response was
        written in full), so 25 bytes fit unless the client is gone.
        """
        try:
            sent = self.sock.send(CONTINUE)
        except OSError:
            sent = 0
        if sent != len(CONTINUE):
            log.debug("closing %s: could not send 100 Continue", self.peer)
            self.close()
            return False
        return True

    def _stream_rest(self, rest: bytes) -> State:
        """A body to stream: whatever already arrived is decoded now, the rest on demand."""
        self.body_chunks = []
        if rest:
            try:
                self.body_chunks = self.decoder.decode(rest)
            except HTTPError as exc:
                self.refuse(exc.status, exc.detail)
                return self.state
            self.body_size = sum(len(c) for c in self.body_chunks)
        self.state = State.READY
        return self.state

    def _proxy_header(self) -> bool:
        """Take the PROXY protocol header off `buf`; False while it is incomplete."""
        try:
            parsed = parse_proxy_header(self.buf)
        except ProxyProtocolError as exc:
            log.debug("closing %s: %s", self.peer, exc)
            self.close()
            return False
        if parsed is None:
            return False
        consumed, address = parsed
        del self.buf[:consumed]
        self.proxy_pending = False
        if address is not None:
            self.peer = address
            self.peer_label = _peer_label(address)
            forwarded = self.settings.forwarded
            self.forward_trusted = forwarded is not None and forwarded.trusts(address)
        return True

    def advance_body(self, data: bytes) -> State:
        """Decode body bytes into memory (then the spool file) until the body ends."""
        try:
            pieces = self.decoder.decode(data)
            for piece in pieces:
                self._keep(piece)
        except HTTPError as exc:
            self.refuse(exc.status, exc.detail)
            return self.state
        if self.decoder.done:
            if self.spool is not None:
                self.spool.seek(0)
            self.state = State.READY
        return self.state

    def _keep(self, piece: bytes) -> None:
        """Hold one decoded body piece: in memory up to --body-buffer-size, then on disk."""
        self.body_size += len(piece)
        spool = self.spool
        if spool is None:
            if self.body_size <= self.settings.body_buffer_size:
                self.body_chunks.append(piece)
                return
            spool = self.spool = _open_spool()
            for chunk in self.body_chunks:
                _spool_write(spool, chunk)
            self.body_chunks = []
        _spool_write(spool, piece)

    def expire(self, now: float) -> None:
        """Called by the worker's sweep: close a connection past its deadline.

        An idle keep-alive connection is first read once: a request that has
        arrived since the last wake-up is served (the state becomes HEAD or
        READY), not destroyed; otherwise it ends with a FIN (`close_idle`).
        """
        if self.state is State.HEAD and self.buf:
            self.refuse(408, "timed out reading the request head")
        elif self.state is State.BODY:
            self.refuse(408, "timed out reading the request body")
        elif self.state is State.IDLE:
            if self.on_readable(now) is State.IDLE:
                self.close_idle(now)
        else:
            self.close()

    def close_idle(self, now: float, linger: float = IDLE_LINGER_SECONDS) -> None:
        """End a connection with a FIN, then read and discard its input for `linger`.

        close() with unread bytes in the receive buffer sends an RST, which
        destroys the request in them and anything of ours the client has not
        read yet (RFC 9112 §9.6). After shutdown(SHUT_WR) the client sees a
        clean end of stream; what it sent across our FIN is absorbed here
        (CLOSING) until it closes too or `linger` runs out.
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.state = State.CLOSING
        self.buf = bytearray()
        self.deadline = now + linger

    # -- answering without the app ---------------------------------------
    def refuse(self, status: int, detail: str, body: bytes | None = None,
               raw: bytes | bytearray | None = None) -> None:
        """Answer a request the server rejects, then close without losing the answer.

        `raw` is the head as received when it was refused before it was parsed
        (else `buf`): the access log shows its request line if it has one.
        """
        self._drop_spool()
        if body is None:
            body = error_body(status)
        sent = len(body)
        try:
            self.sock.send(error_response(status, detail, body))
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            sent = 0
            self.close()
        report = self.settings.on_refused
        if report is not None:
            request = self.request
            if request is not None:
                line: RequestLine | None = (request.method, request.target,
                                            b"HTTP/" + request.http_version)
            else:
                line = request_line_of(self.buf if raw is None else raw,
                                       self.settings.limits)
            report(Refusal(status, detail, self.peer, line, sent))
        else:
            log.debug("refused %s from %s: %s", status, self.peer, detail)
        if self.state is State.CLOSED:
            return
        # Closing with unread bytes would send RST and could destroy the answer
        # before the client reads it: read and discard for a moment first.
        self.state = State.CLOSING
        self.buf = bytearray()
        self.deadline = time.monotonic() + LINGER_SECONDS

    def answer_timeout(self) -> None:
        """The worker is being ended by --timeout while the app runs (from a signal handler).

        If no byte of the response went out, the client gets a 500 instead of
        an empty reply that clients and proxies report as a protocol error; a
        response already begun can only be cut off. Either way the write side
        is shut so the client sees the end at once. One non-blocking send: the
        process is about to exit and must not wait for a client.
        """
        writer = self.writer
        try:
            if writer is not None and not writer.headers_sent:
                writer.headers_sent = True
                self.sock.send(error_response(500, "worker timeout"))
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self._drop_spool()
            if self.hold_fd:
                return
            try:
                self.sock.close()
            except OSError:
                pass

    def release(self) -> None:
        """The loop takes a connection back from a pool thread: closes what it closed."""
        self.hold_fd = False
        if self.state is State.CLOSED:
            try:
                self.sock.close()
            except OSError:
                pass

    def _drop_spool(self) -> None:
        """Close (and so delete) the spooled body of the request just done or abandoned."""
        if self.spool is not None:
            spool, self.spool = self.spool, None
            try:
                spool.close()
            except OSError:
                pass

    # -- running the app ---------------------------------------------------
    def run(self, app: Callable[..., Any], access_log: AccessLog, hooks: RequestHooks) -> None:
        """Run the app on the complete request and write the response.

        Afterwards the connection is IDLE (keep-alive), READY (a pipelined
        request is already buffered), or closed.
        """
        request = self.request
        assert request is not None
        started = time.monotonic()
        now_wall = time.time() if access_log.enabled else 0.0
        body = self._make_body()
        environ = build_environ(
            self.base,
            request.method,
            request.target,
            request.http_version,
            request.headers,
            self.peer,
            body,
        )
        if self.forward_trusted:
            assert self.settings.forwarded is not None
            try:
                apply_forwarded(environ, self.settings.forwarded)
            except HTTPError as exc:
                self.refuse(exc.status, exc.detail)
                self.request = None
                return
        hooks.started(request, environ, self.peer_label, started)
        writer = ResponseWriter(
            self, environ["REQUEST_METHOD"] == "HEAD", request.http_version, body
        )
        start_response = StartResponse(writer.write_legacy)
        writer.start = start_response
        self.writer = writer
        result: Iterable[bytes] | None = None
        try:
            try:
                result = app(environ, start_response)
                if result is None:
                    raise ResponseError(
                        f"the app {self.settings.app_name} returned None instead of an "
                        "iterable of bytes (a missing `return`?)")
                writer.send_iterable(result)
            finally:
                if result is not None and hasattr(result, "close"):
                    try:
                        result.close()
                    except Exception:
                        log.exception("Error closing the response iterable of %s %s",
                                      environ["REQUEST_METHOD"], environ["RAW_URI"])
        except (ClientGone, WriteTimeout) as exc:
            log.log(
                30 if isinstance(exc, WriteTimeout) else 10,  # WARNING / DEBUG
                "%s %s: client %s: %s", environ["REQUEST_METHOD"], environ["RAW_URI"],
                self.peer, exc,
            )
            writer.broken = True
        except BodyError as exc:
            writer.fail(exc.status, f"request body: {exc.detail}", log_traceback=False)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # SystemExit and KeyboardInterrupt from the app are the app's failure,
            # not a request to stop the worker: a `sys.exit()` in a view must not
            # take the worker (or, read as a boot failure, the server) down.
            # gunicorn answers 500 too. forkserve's own stop signals never raise
            # them here: the worker records SIGINT/SIGQUIT/SIGTERM in its signal
            # queue and acts on them once this request is done.
            writer.fail(500, f"Error handling request {environ['REQUEST_METHOD']} "
                        f"{environ['RAW_URI']}", exc=exc)
        finished = time.monotonic()
        hooks.finished(environ, writer, finished)
        if access_log.enabled:
            access_log.write(environ, writer.status_line(), writer.sent_headers, writer.sent,
                             now_wall, now_wall + (finished - started))
        self._finish_cycle(body, writer, finished)

    def _make_body(self) -> Body:
        if self.decoder.done:
            if self.spool is not None:
                return Body(file=self.spool)
            return Body(self.body_chunks)
        facts = self.facts
        assert facts is not None
        continue_cb = self._send_continue if facts.expect_continue else None
        return Body(self.body_chunks, self._pull_body, continue_cb)

    def _send_continue(self) -> None:
        self.send_all(CONTINUE)

    def _pull_body(self) -> bytes:
        """Next decoded body piece for `wsgi.input`, read under the body deadline."""
        decoder = self.decoder
        while not decoder.done:
            # --body-timeout limits inactivity, read by read.
            data = self.recv_within(time.monotonic() + self.settings.body_timeout)
            if not data:
                self.peer_closed = True
                raise BodyError(400, "client closed during the request body")
            try:
                pieces = decoder.decode(data)
            except HTTPError as exc:
                raise BodyError(exc.status, exc.detail) from None
            if pieces:
                return b"".join(pieces) if len(pieces) > 1 else pieces[0]
        return b""

    def recv_within(self, deadline: float) -> bytes:
        """Blocking read with a deadline, on the non-blocking socket."""
        while True:
            events = select.POLLIN
            try:
                return self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                events = _tls_wants(exc) if self.tls else 0
                if not events:
                    raise ClientGone(str(exc)) from None
            if not _wait(self.fd, events, deadline):
                raise BodyError(408, "timed out reading the request body")

    def send_all(self, data: bytes | memoryview) -> None:
        """Write everything, or raise WriteTimeout if the client stops reading."""
        view = memoryview(data)
        deadline = 0.0
        while view:
            events = select.POLLOUT
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                events = _tls_wants(exc) if self.tls else 0
                if not events:
                    raise ClientGone(str(exc)) from None
                sent = 0
            if sent:
                view = view[sent:]
                deadline = 0.0  # progress: the write timeout counts from the last byte out
                continue
            if not deadline:
                deadline = time.monotonic() + self.settings.write_timeout
            if not _wait(self.fd, events, deadline):
                raise WriteTimeout("client did not read the response in time")

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """Send `count` bytes of a file with os.sendfile; returns bytes sent (plain TCP only)."""
        if self.fd < 0:
            return self._copy_file(fd, offset, count)
        total = 0
        deadline = 0.0
        while total < count:
            try:
                sent = os.sendfile(self.fd, fd, offset + total, count - total)
            except (BlockingIOError, InterruptedError):
                sent = -1
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    raise ClientGone(str(exc)) from None
                raise
            if sent == 0:
                break  # the file is shorter than announced
            if sent > 0:
                total += sent
                deadline = 0.0
                continue
            if not deadline:
                deadline = time.monotonic() + self.settings.write_timeout
            if not _wait(self.fd, select.POLLOUT, deadline):
                raise WriteTimeout("client did not read the response in time")
        return total

    def _copy_file(self, fd: int, offset: int, count: int) -> int:
        """`sendfile` for a socket with no descriptor (in memory): read and send."""
        total = 0
        while total < count:
            data = os.pread(fd, min(RECV_SIZE, count - total), offset + total)
            if not data:
                break  # the file is shorter than announced
            self.send_all(data)
            total += len(data)
        return total

    def _finish_cycle(self, body: Body, writer: ResponseWriter, now: float) -> None:
        self.writer = None
        self.requests += 1
        self.request = None
        self.facts = None
        self.body_chunks = []
        self._drop_spool()
        keep = (self.keep_alive and not writer.close and not writer.broken
                and not self.draining and not self.peer_closed)
        if keep and not self.decoder.done:
            try:
                keep = body.drain(MAX_DRAIN) and self.decoder.done
            except (BodyError, ClientGone):
                keep = False
        decoder, self.decoder = self.decoder, _NO_BODY
        if not keep:
            if self.keep_alive and not writer.broken and not self.peer_closed:
                # The client meant to keep the connection (a draining worker, or
                # the app said close): it may have sent its next request
                # already. A FIN, not a reset that could destroy this response.
                self.close_idle(now)
            else:
                self.close()
            return
        # Bytes after this request (a pipelined next request) stay with the
        # body decoder: take them back for the next head.
        rest = decoder.rest
        self.buf = bytearray(rest)
        self.scan = 0
        self.line_judged = False
        self.last_active = now
        if rest:
            self.state = State.HEAD
            self.deadline = now + self.settings.header_timeout
            self.advance_head(now)
        else:
            self.state = State.IDLE
            self.deadline = now + self.settings.keepalive


class BodyError(Exception):
    """The request body broke the protocol or its deadline while the app read it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RequestHooks:
    """Called around each request; the worker subclasses this (heartbeat, hooks)."""

    def started(self, request: RequestHead, environ: dict[str, Any], peer: bytes,
                now: float) -> None:
        """Before the app: `peer` is `HOST:PORT` (`unix`), `now` is time.monotonic()."""

    def finished(self, environ: dict[str, Any], writer: ResponseWriter, now: float) -> None:
        """After the response (or the failure) was written; `now` is time.monotonic()."""


def _peer_label(peer: tuple[str, int] | None) -> bytes:
    return f"{peer[0]}:{peer[1]}".encode() if peer else b"unix"


def _tls_wants(exc: OSError) -> int:
    """POLLIN / POLLOUT if `exc` is TLS asking to retry once readable / writable, else 0."""
    import ssl  # already loaded: only TLS sockets get here

    if isinstance(exc, ssl.SSLWantReadError):
        return select.POLLIN
    if isinstance(exc, ssl.SSLWantWriteError):
        return select.POLLOUT
    return 0


def _open_spool() -> IO[bytes]:
    """An anonymous temporary file for a body past --body-buffer-size (gone once closed)."""
    try:
        return tempfile.TemporaryFile(prefix="forkserve-body-")
    except OSError as exc:
        log.error("cannot spool a request body to a temporary file: %s", exc)
        raise HTTPError(503, f"cannot spool the request body: {exc}") from None


def _spool_write(spool: IO[bytes], data: bytes) -> None:
    try:
        spool.write(data)
    except OSError as exc:  # a full disk: the request fails, the worker does not
        log.error("cannot spool a request body to a temporary file: %s", exc)
        raise HTTPError(503, f"cannot spool the request body: {exc}") from None


def _wait(fd: int, events: int, deadline: float) -> bool:
    """Wait for `events` on `fd` until `deadline`; False on timeout."""
    poller = select.poll()
    poller.register(fd, events | select.POLLERR | select.POLLHUP)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if poller.poll(remaining * 1000):
            return True


def settings_from(cfg: Config) -> Settings:
    """A worker's connection settings, built once after fork from its config.

    The parser is picked here, once per worker: ConfigError if `--http
    httptools` and httptools went missing since the master checked.
    """
    tls = None
    if cfg.certfile:
        tls = make_context(cfg.certfile, cfg.keyfile, cfg.ca_certs, cfg.cert_reqs, cfg.ciphers)
    return Settings(
        Limits(
            cfg.limit_request_line,
            cfg.limit_request_fields,
            cfg.limit_request_field_size,
            cfg.limit_request_head,
            cfg.limit_request_body,
        ),
        keepalive=cfg.keepalive,
        header_timeout=cfg.header_timeout,
        body_timeout=cfg.body_timeout,
        write_timeout=cfg.write_timeout,
        body_buffer_size=cfg.body_buffer_size,
        forwarded=AllowList(cfg.forwarded_allow_ips),
        proxy_protocol=AllowList(cfg.proxy_allow_ips) if cfg.proxy_protocol else None,
        tls=tls,
        parse_head=head_parser(cfg.http),
        app_name=cfg.app or "APP",
        stream_body_paths=tuple(p.encode("latin-1") for p in cfg.stream_body_paths),
    )

"""The parser seam: a checked request head in, method, target, version and fields out.

Pure: no sockets. `http.check_head` has already refused everything an origin
server must refuse and decided the body framing and keep-alive, so a parser
here only splits a valid head into its parts. h11 is the reference parser;
httptools (llhttp, the `fast` extra) offers the same function, about twenty
times faster per head (DESIGN.md §2). `--http` chooses between them.

Where the two would answer differently, `check_head` refuses the head before
either sees it, so the stricter answer wins under both; the differential tests
(tests/conformance/test_parsers.py) hold them to the same heads, statuses and
environs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import h11

from forkserve.config import HTTP_PARSERS
from forkserve.errors import ConfigError, HTTPError


class RequestHead(NamedTuple):
    """One parsed request head, as both the environ and the hooks see it."""

    method: bytes
    target: bytes
    http_version: bytes  # b"1.1", b"1.0"
    headers: list[tuple[bytes, bytes]]  # (name as sent, value without OWS) in arrival order


HeadParser = Callable[[bytes], RequestHead]
"""Turns a complete head (ending in CRLF CRLF) into a RequestHead; raises HTTPError."""

# --http values (uvicorn's spelling). AUTO takes httptools when it imports.
AUTO, H11, HTTPTOOLS = HTTP_PARSERS
FAST_EXTRA = "pip install 'forkserve[fast]'"


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


class _Fields:
    """httptools' callbacks object: collects what one head holds.

    The head is fed whole, so llhttp reports the target and each field in one
    call each (it splits a span only at the end of a feed). One per worker,
    reset before each head: the worker parses one head at a time.
    """

    __slots__ = ("target", "headers", "complete")

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the OWS before a value but keeps the OWS after it;
        # RFC 9112 §5 excludes both from the field value, as h11 does.
        if value and value[-1] in b" \t":
            value = value.rstrip(b" \t")
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            # h11 lowercases this one value (the pre-check has checked it is
            # `chunked` in some case); the app sees the same under both.
            value = value.lower()
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def httptools_parser() -> HeadParser:
    """The httptools adapter; imports httptools (ImportError when it is not installed).

    A new llhttp parser per head (0.4 µs of the 2-3 µs a head takes,
    measured): reusing one is safe only after a complete keep-alive message
    (after `Connection: close`, an upgrade or an error llhttp refuses more
    input, and a head that announces a body leaves it waiting for the body).
    The callbacks object is kept and reset, which is always safe and saved
    0.19 µs a head (5%, interleaved `timeit`).
    """
    import httptools

    new_parser = httptools.HttpRequestParser
    parser_error = httptools.HttpParserError
    upgrade = httptools.HttpParserUpgrade
    fields = _Fields()
    versions = {"1.1": b"1.1", "1.0": b"1.0"}  # the pre-check lets no other through

    def parse_httptools(head: bytes) -> RequestHead:
        # Reset inline: a method call would cost a tenth of what reuse saves.
        fields.target = b""
        fields.complete = False
        headers: list[tuple[bytes, bytes]] = []
        fields.headers = headers
        parser = new_parser(fields)
        try:
            parser.feed_data(head)
        except upgrade:
            pass  # Upgrade / Connection: upgrade: the head is whole; the app decides
        except parser_error as exc:
            raise HTTPError(400, f"httptools: {exc}") from None
        if not fields.complete:
            raise HTTPError(400, "httptools: incomplete request head")
        version = parser.get_http_version()
        return RequestHead(parser.get_method(), fields.target,
                           versions.get(version) or version.encode("ascii"), headers)

    return parse_httptools


def resolve(setting: str) -> str:
    """The parser `--http` picks here: h11 or httptools; ConfigError naming the extra.

    Runs in the master before the first fork (a missing extra is one line and
    exit 2) and again in each worker after fork, which then builds the parser.
    """
    if setting == H11:
        return H11
    try:
        import httptools  # noqa: F401  (the master's import is shared by its workers)
    except ImportError:
        if setting == HTTPTOOLS:
            raise ConfigError(f"--http httptools: httptools is not installed ({FAST_EXTRA})"
                              ) from None
        return H11
    return HTTPTOOLS


def head_parser(setting: str) -> HeadParser:
    """The parse function for `--http` (worker, after fork: picked once per worker)."""
    if resolve(setting) == HTTPTOOLS:
        return httptools_parser()
    return parse_h11


def describe(setting: str) -> str:
    """`h11 0.16.0` / `httptools 0.9.0`: which parser serves, for the start-up log."""
    name = resolve(setting)
    if name == HTTPTOOLS:
        import httptools

        return f"httptools {httptools.__version__}"
    return f"h11 {h11.__version__}"  # type: ignore[attr-defined]

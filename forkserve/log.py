"""Error and access logging, in gunicorn's formats.

The error log is a stdlib `logging` logger named "forkserve" with gunicorn's
line shape (`[time] [pid] [LEVEL] message`). The access log is written by
`AccessLog`, which formats gunicorn's atoms from one request's facts.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

log = logging.getLogger("forkserve")


def _open_stream(path: str, default: IO[str]) -> IO[str]:
    if path == "-":
        return default
    return open(path, "a", encoding="utf-8", buffering=1)


def setup_error_log(path: str, level: str) -> None:
    """Point the "forkserve" logger at `path` ('-' = stderr). Called again on USR1."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        if getattr(handler, "stream", None) not in (sys.stderr, sys.stdout):
            handler.close()
    handler = logging.StreamHandler(_open_stream(path, sys.stderr))
    handler.setFormatter(logging.Formatter(ERROR_FORMAT, DATE_FORMAT))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False


class AccessLog:
    """Writes one line per request in gunicorn's access log format."""

    def __init__(self, path: str | None, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.stream: IO[str] | None = None
        self.reopen()

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    def reopen(self) -> None:
        old = self.stream
        self.stream = _open_stream(self.path, sys.stdout) if self.path else None
        if old is not None and old not in (sys.stdout, sys.stderr):
            old.close()

    def write(
        self,
        environ: Mapping[str, Any],
        status: str,
        response_headers: list[tuple[str, str]],
        sent: int,
        started: float,
        finished: float,
    ) -> None:
        if self.stream is None:
            return
        atoms = AtomDict(environ, status, response_headers, sent, started, finished)
        try:
            line = self.fmt % atoms
        except (KeyError, ValueError, TypeError) as exc:
            line = f"bad --access-logformat: {exc}"
        self.stream.write(line + "\n")


def _clf_time(when: float) -> str:
    return time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(when))


class AtomDict(dict[str, str]):
    """gunicorn's access log atoms, computed on first use.

    h remote address, l '-', u user (from basic auth), t time, r request line,
    m method, U path, q query, H protocol, s status, b / B bytes sent ('-' / 0),
    f referer, a user agent, T / M / D / L request time in s / ms / us / s.frac,
    p pid, {name}i request header, {name}o response header, {name}e environ.
    """

    def __init__(
        self,
        environ: Mapping[str, Any],
        status: str,
        response_headers: list[tuple[str, str]],
        sent: int,
        started: float,
        finished: float,
    ) -> None:
        super().__init__()
        self.environ = environ
        self.status = status
        self.response_headers = response_headers
        self.sent = sent
        self.started = started
        self.finished = finished

    def __missing__(self, key: str) -> str:
        value = self._compute(key)
        self[key] = value
        return value

    def _compute(self, key: str) -> str:
        env = self.environ
        elapsed = self.finished - self.started
        if key.startswith("{") and len(key) > 3 and key[-2] == "}":
            name, kind = key[1:-2], key[-1]
            if kind == "i":
                return str(env.get("HTTP_" + name.upper().replace("-", "_"), "-"))
            if kind == "o":
                for hname, hvalue in self.response_headers:
                    if hname.lower() == name.lower():
                        return hvalue
                return "-"
            if kind == "e":
                return str(env.get(name, "-"))
        simple: dict[str, Callable[[], str]] = {
            "h": lambda: str(env.get("REMOTE_ADDR") or "-"),
            "l": lambda: "-",
            "u": lambda: _basic_auth_user(env) or "-",
            "t": lambda: _clf_time(time.time() - elapsed),
            "r": lambda: (
                f"{env['REQUEST_METHOD']} {env.get('RAW_URI', '-')} "
                f"{env.get('SERVER_PROTOCOL', '-')}"
                if "REQUEST_METHOD" in env else "-"  # refused before a request line was read
            ),
            "m": lambda: str(env.get("REQUEST_METHOD", "-")),
            "U": lambda: str(env.get("PATH_INFO", "-")),
            "q": lambda: str(env.get("QUERY_STRING", "")),
            "H": lambda: str(env.get("SERVER_PROTOCOL", "-")),
            "s": lambda: self.status.split(" ", 1)[0],
            "b": lambda: str(self.sent) if self.sent else "-",
            "B": lambda: str(self.sent),
            "f": lambda: str(env.get("HTTP_REFERER", "-")),
            "a": lambda: str(env.get("HTTP_USER_AGENT", "-")),
            "T": lambda: str(int(elapsed)),
            "M": lambda: str(int(elapsed * 1000)),
            "D": lambda: str(int(elapsed * 1_000_000)),
            "L": lambda: f"{elapsed:.6f}",
            "p": lambda: f"<{os.getpid()}>",
        }
        fn = simple.get(key)
        return fn() if fn else "-"


def _basic_auth_user(environ: Mapping[str, Any]) -> str | None:
    import base64
    import binascii

    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    scheme, _, param = auth.partition(" ")
    if scheme.lower() != "basic" or not param:
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return None
    return decoded.split(":", 1)[0]


class ErrorStream:
    """`wsgi.errors`: a text stream whose lines go to the error log."""

    def __init__(self) -> None:
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            log.error("%s", line)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            log.error("%s", self._pending)
            self._pending = ""


class RefusalLog:
    """Requests refused before the app: an access-log line each, the reason in the error log.

    Runs in a worker. Security teams grep for these (a smuggling attempt, a
    scanner, TLS sent to the plain port), so the reason goes out at info, but
    at most PER_SECOND lines a second: a flood of bad requests must not become
    a flood of log lines. What is held back is counted and reported with the
    next line that goes out; every refusal still gets its access-log line
    (at the cost of one line per request, like any request).
    """

    PER_SECOND = 10

    def __init__(self, access_log: AccessLog, clock: Callable[[], float] = time.monotonic) -> None:
        self.access_log = access_log
        self.clock = clock
        self.window = 0.0
        self.logged = 0
        self.held_back = 0

    def record(self, status: int, reason: str, detail: str, peer: tuple[str, int] | None,
               request_line: tuple[bytes, bytes, bytes] | None, sent: int) -> None:
        """One refused request; `request_line` is visible ASCII only (http.request_line_of)."""
        line = " ".join(p.decode("ascii") for p in request_line) if request_line else "-"
        if self.access_log.enabled:
            environ: dict[str, Any] = {"REMOTE_ADDR": peer[0] if peer else ""}
            if request_line is not None:
                method, target, version = (p.decode("ascii") for p in request_line)
                path, _, query = target.partition("?")
                environ.update(REQUEST_METHOD=method, RAW_URI=target, PATH_INFO=path,
                               QUERY_STRING=query, SERVER_PROTOCOL=version)
            now = time.time()
            self.access_log.write(environ, f"{status} {reason}", [], sent, now, now)
        now = self.clock()
        if now - self.window >= 1.0:
            self.window, self.logged = now, 0
        if self.logged >= self.PER_SECOND:
            self.held_back += 1
            log.debug("refused %d from %s: %s (%s)", status, _peer(peer), detail, line)
            return
        self.logged += 1
        more = ""
        if self.held_back:
            more = f" ({self.held_back} more refusals not logged at info since the last)"
            self.held_back = 0
        log.info("refused %d from %s: %s (%s)%s", status, _peer(peer), detail, line, more)


def _peer(peer: tuple[str, int] | None) -> str:
    return f"{peer[0]}:{peer[1]}" if peer else "unix socket"

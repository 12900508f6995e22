"""Error and access logging, in gunicorn's formats.

The error log is a stdlib `logging` logger named "forkserve" with gunicorn's
line shape (`[time] [pid] [LEVEL] message`). The access log is written by
`AccessLog`, which formats gunicorn's atoms from one request's facts.

With --log-format json every line of both is one JSON object instead
(`JsonFormatter`, `access_record`): a log shipper parses it without a regex,
and a header value full of quotes, backslashes or latin-1 bytes stays one
valid string holding the same text.
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


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, pid, message (and exception, stack)."""

    def __init__(self) -> None:
        super().__init__()
        import json  # only with --log-format json (start-up cost, tests/unit/test_imports.py)

        self.dumps = json.dumps

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        stack = getattr(record, "stack", None)  # a worker's thread dump (worker.py)
        if stack:
            out["stack"] = stack
        return self.dumps(out)


def iso_time(when: float) -> str:
    """RFC 3339 local time with milliseconds and the UTC offset."""
    import datetime  # only with --log-format json

    stamp = datetime.datetime.fromtimestamp(when).astimezone()
    return stamp.isoformat(timespec="milliseconds")


def setup_error_log(path: str, level: str, fmt: str = "text") -> None:
    """Point the "forkserve" logger at `path` ('-' = stderr). Called again on USR1.

    `fmt` is --log-format: "text" (gunicorn's lines) or "json".
    """
    for handler in list(log.handlers):
        log.removeHandler(handler)
        if getattr(handler, "stream", None) not in (sys.stderr, sys.stdout):
            handler.close()
    handler = logging.StreamHandler(_open_stream(path, sys.stderr))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(ERROR_FORMAT, DATE_FORMAT))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False


class AccessLog:
    """Writes one line per request in gunicorn's access log format, or as JSON."""

    def __init__(self, path: str | None, fmt: str, json_lines: bool = False,
                 request_id_key: str | None = None) -> None:
        self.path = path
        self.fmt = fmt
        self.request_id_key = request_id_key  # environ key of the request id; None = off
        self.dumps: Callable[[Any], str] | None = None
        if json_lines:
            import json  # only with --log-format json

            self.dumps = json.dumps
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
        if self.dumps is not None:
            record = access_record(environ, status, sent, started, finished,
                                   self.request_id_key)
            self.stream.write(self.dumps(record) + "\n")
            return
        atoms = AtomDict(environ, status, response_headers, sent, started, finished)
        try:
            line = self.fmt % atoms
        except (KeyError, ValueError, TypeError) as exc:
            line = f"bad --access-logformat: {exc}"
        self.stream.write(line + "\n")


def access_record(environ: Mapping[str, Any], status: str, sent: int, started: float,
                  finished: float, request_id_key: str | None) -> dict[str, Any]:
    """One access log record for --log-format json (header values as received, latin-1)."""
    code = status.split(" ", 1)[0]
    raw_uri = str(environ.get("RAW_URI", ""))
    return {
        "time": iso_time(started),
        "pid": os.getpid(),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "method": environ.get("REQUEST_METHOD"),
        "path": raw_uri.split("?", 1)[0] or environ.get("PATH_INFO"),
        "query": environ.get("QUERY_STRING", ""),
        "protocol": environ.get("SERVER_PROTOCOL"),
        "status": int(code) if code.isdigit() else None,
        "bytes": sent,
        "duration_ms": round((finished - started) * 1000, 3),
        "user_agent": environ.get("HTTP_USER_AGENT"),
        "referer": environ.get("HTTP_REFERER"),
        "request_id": environ.get(request_id_key) if request_id_key else None,
    }


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
                f"{env.get('REQUEST_METHOD', '-')} {env.get('RAW_URI', '-')} "
                f"{env.get('SERVER_PROTOCOL', '-')}"
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

"""Error and access logging, in gunicorn's formats.

The error log is a stdlib `logging` logger named "forkserve" with gunicorn's
line shape (`[time] [pid] [LEVEL] message`). The access log is written by
`AccessLog`, which formats gunicorn's atoms from one request's facts.

With --log-format json every line of both is one JSON object instead
(`JsonFormatter`, `access_record`): a log shipper parses it without a regex,
and a header value full of quotes, backslashes or latin-1 bytes stays one
valid string holding the same text. Both formats go through the same
`LineSink`, so a failed write loses the line, never the request.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from forkserve.errors import ConfigError

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

log = logging.getLogger("forkserve")


# A failing log (a full disk, a reader that went away) is reported at most
# this often, with the number of lines lost since the last report: one line
# per request would be a second flood on a disk that is already full.
REPORT_INTERVAL = 10.0


class LineSink:
    """A log destination written with one write(2) per line.

    No Python buffer sits in between: a failed write loses that line and
    nothing else (a buffered file would keep the bytes, fail again at every
    later flush, and raise at exit), and each line reaches the file whole even
    when several workers append to it (O_APPEND).
    """

    def __init__(self, fd: int, name: str, owned: bool) -> None:
        self.fd = fd
        self.name = name
        self.owned = owned

    @classmethod
    def open(cls, path: str, default_fd: int) -> LineSink:
        """`path` opened for appending ('-' = `default_fd`); raises OSError."""
        if path == "-":
            return cls(default_fd, "stdout" if default_fd == 1 else "stderr", owned=False)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return cls(os.open(path, flags, 0o666), path, owned=True)

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.owned:
            self.owned = False
            try:
                os.close(self.fd)
            except OSError:
                pass


class LossCounter:
    """Counts lines a log could not write and reports them, at most once per interval.

    Runs wherever the log is written (master or worker). The first loss is
    reported at once; later ones are counted and reported with their count
    when the next report is due, or when writing works again.
    """

    def __init__(self, what: str, report: Callable[[str], None],
                 interval: float = REPORT_INTERVAL) -> None:
        self.what = what
        self.report = report
        self.interval = interval
        self.lost = 0
        self.next_report = 0.0

    def failed(self, exc: BaseException | None, now: float) -> None:
        self.lost += 1
        if now >= self.next_report:
            reason = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
            self._send(f"{self.what}: write failed ({reason}); {self.lost} line(s) lost "
                       f"(reported at most every {self.interval:g}s)", now)

    def succeeded(self, now: float) -> None:
        if self.lost and now >= self.next_report:
            self._send(f"{self.what}: writing again; {self.lost} more line(s) were lost", now)

    def _send(self, message: str, now: float) -> None:
        self.lost = 0
        self.next_report = now + self.interval
        try:
            self.report(message)
        except Exception:
            pass  # the report has nowhere to go either: the count was still reset


def _to_stderr(message: str) -> None:
    line = f"[{time.strftime(DATE_FORMAT)}] [{os.getpid()}] [ERROR] {message}\n"
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass


class _ErrorLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The error log's handler: a failed write is counted and reported on stderr."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__(sink)
        self.losses = LossCounter(f"error log {sink.name}", _to_stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        if self.losses.lost:
            self.losses.succeeded(time.monotonic())

    def handleError(self, record: logging.LogRecord) -> None:
        # logging's default prints a traceback to stderr for every failed record.
        self.losses.failed(sys.exc_info()[1], time.monotonic())


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
        stack = getattr(record, "stack", None)  # a timed-out worker's stacks (worker.py)
        if stack:
            out["stack"] = stack
        return self.dumps(out)


def iso_time(when: float) -> str:
    """RFC 3339 local time with milliseconds and the UTC offset."""
    import datetime  # only with --log-format json

    stamp = datetime.datetime.fromtimestamp(when).astimezone()
    return stamp.isoformat(timespec="milliseconds")


def setup_error_log(path: str, level: str, fmt: str = "text") -> None:
    """Point the "forkserve" logger at `path` ('-' = stderr). Called again on USR1 and HUP.

    `fmt` is --log-format: "text" (gunicorn's lines) or "json".
    At start a path that cannot be opened is a ConfigError. On a reopen
    (logrotate's USR1) it is not an outage: the old destination stays, and
    the failure is reported once on it.
    """
    try:
        sink = LineSink.open(path, 2)
    except OSError as exc:
        if log.handlers:
            log.error("Cannot reopen the error log %s (%s); still writing to the old one",
                      path, exc.strerror)
            log.setLevel(level.upper())
            for handler in log.handlers:
                handler.setFormatter(_error_formatter(fmt))
            return
        raise ConfigError(f"--error-logfile: cannot open {path}: {exc.strerror}") from None
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
        old = getattr(handler, "stream", None)
        if isinstance(old, LineSink):
            old.close()
    handler = _ErrorLogHandler(sink)
    handler.setFormatter(_error_formatter(fmt))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False


def _error_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter(ERROR_FORMAT, DATE_FORMAT)


def check_log_path(path: str | None, flag: str) -> None:
    """Master, at start: the directory of a log file must exist (a typo exits 2 at once).

    Only the directory is checked: the file itself is created by the process
    that writes it (workers run as --user), not by a root master.
    """
    if not path or path == "-":
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"{flag}: the directory of {path} does not exist")


class AccessLog:
    """One line per request, gunicorn's access log format or JSON (worker, post-fork)."""

    def __init__(self, path: str | None, fmt: str, json_lines: bool = False,
                 request_id_key: str | None = None) -> None:
        self.path = path
        self.fmt = fmt
        self.request_id_key = request_id_key  # environ key of the request id; None = off
        self.dumps: Callable[[Any], str] | None = None
        if json_lines:
            import json  # only with --log-format json

            self.dumps = json.dumps
        self.sink: LineSink | None = None
        # Read twice per request, so a plain attribute rather than a property;
        # reopen() keeps it equal to `self.sink is not None`.
        self.enabled = False
        self.losses = LossCounter(f"access log {path}", log.error)
        self.reopen()

    def reopen(self) -> None:
        """Open the log (at boot and on USR1); never raises.

        When the path cannot be opened (its directory removed by a logrotate
        mistake) the old file stays in use, or, at boot, stderr: lines go
        somewhere a supervisor keeps, and the server keeps serving.
        """
        if not self.path:
            return
        old = self.sink
        try:
            self.sink = LineSink.open(self.path, 1)
        except OSError as exc:
            if old is None:
                self.sink = LineSink(2, "stderr", owned=False)
            log.error("Cannot open the access log %s (%s); writing it to %s", self.path,
                      exc.strerror, "the old file" if old is not None else "stderr")
            return
        finally:
            self.enabled = self.sink is not None
        if old is not None:
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
        if self.sink is None:
            return
        if self.dumps is not None:
            line = self.dumps(access_record(environ, status, sent, started, finished,
                                            self.request_id_key))
        else:
            atoms = AtomDict(environ, status, response_headers, sent, started, finished)
            try:
                line = self.fmt % atoms
            except (KeyError, ValueError, TypeError) as exc:
                line = f"bad --access-logformat: {exc}"
        try:
            self.sink.write(line + "\n")
        except (OSError, ValueError) as exc:  # ENOSPC, EPIPE, EIO: lose the line, not the worker
            self.losses.failed(exc, time.monotonic())
        else:
            if self.losses.lost:
                self.losses.succeeded(time.monotonic())


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

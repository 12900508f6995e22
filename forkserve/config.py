"""Every setting, declared once.

Each field of `Config` is one setting: its type (the annotation), default,
command-line flags, environment variable, help text and docs section all live
in the field's declaration. The click command (`cli.py`) and the settings docs
are generated from these declarations, so a setting cannot drift between them.

Pure: imports no sockets, no os.fork, no signal. `load()` takes its sources as
arguments (it reads no globals), and returns the settings and where each value
came from.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from forkserve.errors import ConfigError

Parser = Callable[[str], Any]

ENV_PREFIX = "FORKSERVE_"


@dataclass(frozen=True)
class Meta:
    """How one setting is spelled outside Python."""

    flags: tuple[str, ...]
    help: str
    section: str
    parse: Parser
    metavar: str = ""
    multiple: bool = False  # repeatable flag; a list setting
    switch: bool = False  # boolean flag that takes no value
    show: Callable[[Any], str] | None = None  # how --print-config and the docs spell a value


def setting(
    default: Any,
    *flags: str,
    help: str,
    section: str,
    parse: Parser,
    metavar: str = "",
    multiple: bool = False,
    switch: bool = False,
    show: Callable[[Any], str] | None = None,
) -> Any:
    meta = Meta(flags, help, section, parse, metavar, multiple, switch, show)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"forkserve": meta})
    return field(default=default, metadata={"forkserve": meta})


# -- value parsers: str -> value, raising ValueError with what was expected --


def parse_int(minimum: int = 0) -> Parser:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def parse_workers(text: str) -> int:
    """A positive integer, or `auto`: one per CPU this process may run on."""
    if text.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    value: int = parse_int(1)(text)
    return value


def parse_float(minimum: float = 0.0) -> Parser:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if value != value or value < minimum:  # NaN fails too
            raise ValueError(f"expected a number >= {minimum:g}, got {text!r}")
        return value

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_str(text: str) -> str:
    return text


def parse_optional_str(text: str) -> str | None:
    return text or None


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_allow_entry(text: str) -> str:
    """Validate one allow-list entry: an IP address, a CIDR network, or `*`."""
    entry = text.strip()
    if entry == "*":
        return entry
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"expected an IP address, a CIDR network or '*', got {text!r}") from None
    return entry


# ssl.CERT_NONE / CERT_OPTIONAL / CERT_REQUIRED (fixed by OpenSSL's verify modes).
# Spelled as numbers so that reading the settings does not load ssl: importing
# it costs every server ~20 ms of start-up and libssl's pages, and most never
# serve TLS. `tls.make_context` imports it when a certificate is configured.
CERT_REQS = {"none": 0, "optional": 1, "required": 2}


def parse_cert_reqs(text: str) -> int:
    """gunicorn's numbers (0, 1, 2) or the names none / optional / required."""
    value = text.strip().lower()
    if value in CERT_REQS:
        return int(CERT_REQS[value])
    if value in ("0", "1", "2"):
        return int(value)
    raise ValueError(f"expected none, optional, required (or 0, 1, 2), got {text!r}")


def parse_allow_ips(text: str) -> list[str]:
    """Comma-separated IP addresses, CIDR networks or '*' (checked now, used by proxy.py)."""
    return [parse_allow_entry(part) for part in parse_list(text)]


def parse_bind(text: str) -> str:
    """Validate a bind address; the socket layer turns it into an address."""
    value = text.strip()
    if value.startswith("unix:"):
        if len(value) == 5:
            raise ValueError("expected unix:PATH, got an empty path")
        return value
    if value.startswith("fd://"):
        parse_int(0)(value[5:])
        return value
    if value.isdigit():
        # A bare port: a host named "8000" is never what was meant.
        raise ValueError(f"expected HOST:PORT, got a port alone; did you mean "
                         f"0.0.0.0:{value} (every interface) or 127.0.0.1:{value} (this "
                         f"machine only)?")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\](?::(\d+))?|([^:\[\]]*)(?::(\d+))?", value)
    if not m:
        raise ValueError(f"expected HOST:PORT, [IPv6]:PORT or unix:PATH, got {text!r}")
    port = m.group(2) or m.group(4)
    if port is not None and not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return value


def parse_log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return value


def parse_root_path(text: str) -> str:
    value = text.strip().rstrip("/")
    if value and not value.startswith("/"):
        raise ValueError(f"expected a path starting with '/', got {text!r}")
    return value


def parse_umask(text: str) -> int:
    """An octal file mode mask, spelled as the shell's `umask` does: 022, 0o022 or 0."""
    value = text.strip().lower()
    digits = value[2:] if value.startswith("0o") else value
    if not re.fullmatch(r"[0-7]{1,4}", digits):
        raise ValueError(f"expected an octal mask such as 022 or 0o077, got {text!r}")
    return int(digits, 8)


def parse_file_mode(text: str) -> int:
    """Permission bits in octal, as chmod spells them: 666, 0o660, 600."""
    value = text.strip().lower()
    digits = value[2:] if value.startswith("0o") else value
    if not re.fullmatch(r"[0-7]{1,4}", digits) or int(digits, 8) > 0o777:
        raise ValueError(f"expected octal permission bits such as 666 or 0o660, got {text!r}")
    return int(digits, 8)


def show_umask(value: Any) -> str:
    return "" if value is None else f"0o{value:03o}"


def parse_url_path(text: str) -> str | None:
    value = text.strip()
    if not value:
        return None
    if not value.startswith("/") or "?" in value or "#" in value or " " in value:
        raise ValueError(f"expected a URL path such as /healthz, got {text!r}")
    return value


def parse_path_prefix(text: str) -> str:
    value = parse_url_path(text)
    if value is None:
        raise ValueError("expected a URL path prefix such as /upload/, got nothing")
    return value


def parse_user(text: str) -> str | None:
    """A user name or uid that exists here (checked now, so the error names its source)."""
    value = text.strip()
    if not value:
        return None
    try:
        pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except (KeyError, OverflowError):
        raise ValueError(f"expected an existing user name or uid, got {text!r}") from None
    return value


def parse_group(text: str) -> str | None:
    value = text.strip()
    if not value:
        return None
    try:
        grp.getgrgid(int(value)) if value.isdigit() else grp.getgrnam(value)
    except (KeyError, OverflowError):
        raise ValueError(f"expected an existing group name or gid, got {text!r}") from None
    return value


# --http: auto (httptools when it imports, else h11), h11, httptools (forkserve.parser).
HTTP_PARSERS = ("auto", "h11", "httptools")


def parse_http(text: str) -> str:
    value = text.strip().lower()
    if value not in HTTP_PARSERS:
        raise ValueError(f"expected one of {', '.join(HTTP_PARSERS)}, got {text!r}")
    return value


WORKER_CLASSES = ("sync", "gthread")
# -k gthread with --threads left at 1: threads per worker. Four covers an app
# that waits on a database or an upstream for most of each request without
# making a CPU-bound one contend much for the GIL (docs/workers.md, sizing).
GTHREAD_DEFAULT_THREADS = 4


def parse_worker_class(text: str) -> str:
    value = text.strip()
    if value.lower() not in WORKER_CLASSES:
        raise ValueError(f"forkserve has sync and gthread workers, not {text!r}; "
                         "see docs/workers.md for choosing between them")
    return value.lower()


def threads_per_worker(worker_class: str, threads: int) -> int:
    """How many requests one worker runs at once: --threads, or the gthread default."""
    if worker_class == "gthread" and threads == 1:
        return GTHREAD_DEFAULT_THREADS
    return threads


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")


def parse_log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {text!r}")
    return value


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token


def parse_header_name(text: str) -> str:
    value = text.strip()
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"expected a header name such as X-Request-ID, got {text!r}")
    return value


def parse_metrics_bind(text: str) -> str | None:
    """HOST:PORT or unix:PATH (no fd://: the master binds it itself); '' = off."""
    if not text.strip():
        return None
    if text.strip().startswith("fd://"):
        raise ValueError(f"expected HOST:PORT or unix:PATH, got {text!r}")
    return parse_bind(text)


def parse_statsd_host(text: str) -> str | None:
    """HOST:PORT of a statsd daemon; '' = off."""
    value = text.strip()
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return value

GUNICORN_ACCESS_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


@dataclass(frozen=True)
class Config:
    """The effective settings of one server. Built by `load()`; never mutated."""

    app: str = setting(
        "",
        help="The WSGI application: MODULE:ATTRIBUTE or MODULE:FACTORY() (called with no "
        "arguments).",
        section="Application",
        parse=parse_str,
        metavar="APP",
    )
    chdir: str | None = setting(
        None,
        "--chdir",
        help="Change to this directory before loading the app (it is then on sys.path).",
        section="Application",
        parse=parse_optional_str,
        metavar="DIR",
    )
    pythonpath: list[str] = setting(
        [],
        "--pythonpath",
        help="Comma-separated directories to put in front of sys.path.",
        section="Application",
        parse=parse_list,
        metavar="DIRS",
    )
    root_path: str = setting(
        "",
        "--root-path",
        help="The URL prefix the app is mounted at: becomes SCRIPT_NAME and is stripped from "
        "PATH_INFO. Defaults to the SCRIPT_NAME environment variable.",
        section="Application",
        parse=parse_root_path,
        metavar="PATH",
    )
    bind: list[str] = setting(
        ["127.0.0.1:8000"],
        "-b",
        "--bind",
        help="Address to listen on: HOST:PORT, [IPv6]:PORT or unix:PATH. Repeat for several. "
        "Default 127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set and no bind is given "
        "elsewhere.",
        section="Sockets",
        parse=parse_bind,
        metavar="ADDRESS",
        multiple=True,
    )
    backlog: int = setting(
        2048,
        "--backlog",
        help="The listen queue length of each socket.",
        section="Sockets",
        parse=parse_int(1),
        metavar="INT",
    )
    workers: int = setting(
        1,
        "-w",
        "--workers",
        help="Number of worker processes, or 'auto' for one per usable CPU. Default "
        "$WEB_CONCURRENCY (when no workers value is given elsewhere), else 1.",
        section="Workers",
        parse=parse_workers,
        metavar="INT",
    )
    worker_class: str = setting(
        "sync",
        "-k",
        "--worker-class",
        help="sync or gthread. gthread runs requests on a pool of --threads threads per "
        "worker (4 when --threads is left at 1); --threads above 1 makes any worker "
        "threaded. Other classes (gevent, eventlet, uvicorn's) are refused: see "
        "docs/workers.md.",
        section="Workers",
        parse=parse_worker_class,
        metavar="CLASS",
    )
    threads: int = setting(
        1,
        "--threads",
        help="Requests each worker runs in the app at once, on a pool of this many threads, "
        "while its loop keeps accepting and reading. For apps that wait on databases and "
        "upstreams. 1 is the plain sync worker.",
        section="Workers",
        parse=parse_int(1),
        metavar="INT",
    )
    worker_connections: int = setting(
        1000,
        "--worker-connections",
        help="Most client connections one worker holds open (idle keep-alive and partly "
        "received requests). Past it the oldest idle connection is closed.",
        section="Workers",
        parse=parse_int(1),
        metavar="INT",
    )
    timeout: float = setting(
        30.0,
        "-t",
        "--timeout",
        help="A request running in the app for longer than this many seconds (a worker "
        "silent that long) gets the worker's thread stacks logged and the worker replaced. "
        "An idle worker silent for 3s, or one stopped by SIGSTOP, is killed and replaced "
        "sooner: its idle keep-alive connections are passed to the other workers (a "
        "request waiting on one is answered there). 0 turns both checks off.",
        section="Workers",
        parse=parse_float(0),
        metavar="SECONDS",
    )
    graceful_timeout: float = setting(
        30.0,
        "--graceful-timeout",
        help="On a graceful stop, how long in-flight requests may run before the worker is "
        "killed.",
        section="Workers",
        parse=parse_float(0),
        metavar="SECONDS",
    )
    keepalive: float = setting(
        5.0,
        "--keep-alive",
        help="Seconds an idle keep-alive connection stays open. 0 turns keep-alive off. Idle "
        "connections are parked, not holding a worker, so this can be longer than "
        "gunicorn's 2s; set it above your load balancer's idle timeout.",
        section="HTTP",
        parse=parse_float(0),
        metavar="SECONDS",
    )
    header_timeout: float = setting(
        10.0,
        "--header-timeout",
        help="Seconds a client has to send a complete request head once it started (slowloris "
        "guard).",
        section="HTTP",
        parse=parse_float(0.001),
        metavar="SECONDS",
    )
    body_timeout: float = setting(
        60.0,
        "--body-timeout",
        help="Seconds a request body may go without a byte arriving before the request is "
        "refused with 408 (an inactivity limit, reset by every read).",
        section="HTTP",
        parse=parse_float(0.001),
        metavar="SECONDS",
    )
    write_timeout: float = setting(
        30.0,
        "--write-timeout",
        help="Seconds a client may go without reading any of the response before it is cut off.",
        section="HTTP",
        parse=parse_float(0.001),
        metavar="SECONDS",
    )
    body_buffer_size: int = setting(
        1048576,
        "--body-buffer-size",
        help="Request bodies are received in full, with the connection parked, before the app "
        "runs, so a slow upload never holds a worker: up to this many bytes in memory, the rest "
        "spooled to a temporary file (in $TMPDIR), up to --limit-request-body.",
        section="HTTP",
        parse=parse_int(0),
        metavar="BYTES",
    )
    http: str = setting(
        "auto",
        "--http",
        help="The request head parser: h11 (pure Python, the reference), httptools (llhttp "
        "in C, about 20 times faster per head; pip install 'forkserve[fast]') or auto "
        "(httptools when installed, else h11). Both see only heads the server's own checks "
        "accepted, and give the app the same environ.",
        section="HTTP",
        parse=parse_http,
        metavar="PARSER",
    )
    stream_body_paths: list[str] = setting(
        [],
        "--stream-body-path",
        help="A path prefix (e.g. /upload/) whose request bodies go to the app as they arrive "
        "instead of being received first, for apps that process an upload while it streams. "
        "The price: a client that stalls such an upload holds a worker for up to --body-timeout "
        "per read. Repeatable.",
        section="HTTP",
        parse=parse_path_prefix,
        metavar="PREFIX",
        multiple=True,
    )
    limit_request_line: int = setting(
        4094,
        "--limit-request-line",
        help="Longest request line in bytes (method, target and version); longer gets 414.",
        section="HTTP",
        parse=parse_int(16),
        metavar="BYTES",
    )
    limit_request_fields: int = setting(
        100,
        "--limit-request-fields",
        help="Most header fields in a request; more gets 431.",
        section="HTTP",
        parse=parse_int(1),
        metavar="INT",
    )
    limit_request_field_size: int = setting(
        8190,
        "--limit-request-field-size",
        help="Longest header field line in bytes; longer gets 431.",
        section="HTTP",
        parse=parse_int(16),
        metavar="BYTES",
    )
    limit_request_head: int = setting(
        65536,
        "--limit-request-head",
        help="Largest request head in bytes (request line and all header fields); larger gets "
        "431. Also bounds a chunked body's trailer section.",
        section="HTTP",
        parse=parse_int(64),
        metavar="BYTES",
    )
    limit_request_body: int = setting(
        0,
        "--limit-request-body",
        help="Largest request body in bytes; larger gets 413, checked against Content-Length "
        "before the app runs and while a chunked body arrives. 0 means no limit.",
        section="HTTP",
        parse=parse_int(0),
        metavar="BYTES",
    )
    forwarded_allow_ips: list[str] = setting(
        ["127.0.0.1", "::1"],
        "--forwarded-allow-ips",
        help="Comma-separated addresses or CIDR networks of proxies whose X-Forwarded-For, "
        "X-Forwarded-Proto, X-Forwarded-Ssl and Forwarded headers set wsgi.url_scheme and "
        "REMOTE_ADDR; '*' trusts every peer (only when nothing else can reach forkserve). "
        "Also read from FORWARDED_ALLOW_IPS.",
        section="Proxies",
        parse=parse_allow_ips,
        metavar="ADDRESSES",
    )
    proxy_protocol: bool = setting(
        False,
        "--proxy-protocol/--no-proxy-protocol",
        help="Expect a PROXY protocol header (v1 or v2) at the start of every connection from "
        "--proxy-allow-ips, and take REMOTE_ADDR/REMOTE_PORT from it. A malformed header "
        "closes the connection.",
        section="Proxies",
        parse=parse_bool,
        switch=True,
    )
    proxy_allow_ips: list[str] = setting(
        ["127.0.0.1", "::1"],
        "--proxy-allow-ips",
        help="Comma-separated addresses or CIDR networks allowed to send a PROXY protocol "
        "header; '*' allows every peer.",
        section="Proxies",
        parse=parse_allow_ips,
        metavar="ADDRESSES",
    )
    certfile: str | None = setting(
        None,
        "--certfile",
        help="Serve HTTPS with this PEM certificate (chain); needs --keyfile unless the key is "
        "in the same file.",
        section="TLS",
        parse=parse_optional_str,
        metavar="FILE",
    )
    keyfile: str | None = setting(
        None,
        "--keyfile",
        help="The PEM private key for --certfile.",
        section="TLS",
        parse=parse_optional_str,
        metavar="FILE",
    )
    ca_certs: str | None = setting(
        None,
        "--ca-certs",
        help="PEM file of CA certificates used to verify client certificates.",
        section="TLS",
        parse=parse_optional_str,
        metavar="FILE",
    )
    cert_reqs: int = setting(
        0,
        "--cert-reqs",
        help="Whether clients must present a certificate: none (0), optional (1) or required "
        "(2), verified against --ca-certs.",
        section="TLS",
        parse=parse_cert_reqs,
        metavar="MODE",
    )
    ciphers: str | None = setting(
        None,
        "--ciphers",
        help="OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults). Default: "
        "Python's ssl defaults.",
        section="TLS",
        parse=parse_optional_str,
        metavar="CIPHERS",
    )
    access_logfile: str | None = setting(
        None,
        "--access-logfile",
        help="Where to write the access log; '-' is stdout. Off by default. A line that "
        "cannot be written (full disk, closed pipe) is lost, counted, and reported in the "
        "error log at most every 10 s; the request is unaffected.",
        section="Logging",
        parse=parse_optional_str,
        metavar="FILE",
    )
    access_logformat: str = setting(
        GUNICORN_ACCESS_FORMAT,
        "--access-logformat",
        help="The access log line, with gunicorn's atoms: h l u t r m U q H s b B f a T M D L p, "
        "{header}i / {header}o (request / response header) and {KEY}e (a WSGI environ "
        "key), each as %(atom)s.",
        section="Logging",
        parse=parse_str,
        metavar="FORMAT",
    )
    error_logfile: str = setting(
        "-",
        "--error-logfile",
        "--log-file",
        help="Where to write the error log; '-' is stderr. Lines that cannot be written are "
        "counted and reported on stderr at most every 10 s.",
        section="Logging",
        parse=parse_str,
        metavar="FILE",
    )
    log_level: str = setting(
        "info",
        "--log-level",
        help="Error log level: debug, info, warning, error or critical.",
        section="Logging",
        parse=parse_log_level,
        metavar="LEVEL",
    )
    log_format: str = setting(
        "text",
        "--log-format",
        help="How the error log and the access log are written: 'text' (gunicorn's lines) or "
        "'json' (one JSON object per line; a worker's stack dump is one object).",
        section="Logging",
        parse=parse_log_format,
        metavar="FORMAT",
    )
    request_id: bool = setting(
        True,
        "--request-id/--no-request-id",
        help="Give every request an id: keep the client's --request-id-header when it is at "
        "most 128 characters of A-Z a-z 0-9 . _ : -, else make one (32 hex digits, uuid4). "
        "The id is in the environ, the response header and the access log.",
        section="Logging",
        parse=parse_bool,
        switch=True,
    )
    request_id_header: str = setting(
        "X-Request-ID",
        "--request-id-header",
        help="The header that carries the request id, in the request and the response.",
        section="Logging",
        parse=parse_header_name,
        metavar="NAME",
    )
    metrics_bind: str | None = setting(
        None,
        "--metrics-bind",
        help="Serve Prometheus metrics at GET /metrics on this address (HOST:PORT or "
        "unix:PATH), from the master, summed over the workers. Needs prometheus_client "
        "(pip install 'forkserve[metrics]'). Off by default.",
        section="Metrics",
        parse=parse_metrics_bind,
        metavar="ADDRESS",
    )
    statsd_host: str | None = setting(
        None,
        "--statsd-host",
        help="Send gunicorn's statsd metrics over UDP to HOST:PORT. Off by default.",
        section="Metrics",
        parse=parse_statsd_host,
        metavar="HOST:PORT",
    )
    statsd_prefix: str = setting(
        "",
        "--statsd-prefix",
        help="Prefix of every statsd metric name (a '.' is added after it).",
        section="Metrics",
        parse=parse_str,
        metavar="PREFIX",
    )
    reuse_port: bool = setting(
        False,
        "--reuse-port/--no-reuse-port",
        help="Set SO_REUSEPORT on TCP listeners, so several forkserve instances can bind the "
        "same address and the kernel spreads connections between them.",
        section="Sockets",
        parse=parse_bool,
        switch=True,
    )
    unix_socket_mode: int = setting(
        0o666,
        "--unix-socket-mode",
        help="Permission bits of the socket file of a unix:PATH bind (octal), less those an "
        "explicit --umask removes; the umask forkserve merely inherits (often 022) does not "
        "apply. The default 666 lets every local user connect, as gunicorn's default does: "
        "no more open than 127.0.0.1, and what nginx's unprivileged workers need. To "
        "restrict it, use 660 with --group (the socket belongs to --user and --group), or "
        "put the socket in a directory only the proxy can enter.",
        section="Sockets",
        parse=parse_file_mode,
        metavar="MODE",
        show=show_umask,
    )
    umask: int | None = setting(
        None,
        "--umask",
        help="The file mode mask (octal, e.g. 007) set in the master before forking: it "
        "decides the mode of files the app creates, and removes bits from "
        "--unix-socket-mode. Default: inherited (and not applied to unix: sockets).",
        section="Process",
        parse=parse_umask,
        metavar="MASK",
        show=show_umask,
    )
    user: str | None = setting(
        None,
        "-u",
        "--user",
        help="Switch to this user (name or uid) after binding the sockets and before starting "
        "workers, so a root-started server can listen on port 80 and serve unprivileged.",
        section="Process",
        parse=parse_user,
        metavar="USER",
    )
    group: str | None = setting(
        None,
        "-g",
        "--group",
        help="Switch to this group (name or gid) after binding; default: the --user's primary "
        "group.",
        section="Process",
        parse=parse_group,
        metavar="GROUP",
    )
    daemon: bool = setting(
        False,
        "-D",
        "--daemon/--no-daemon",
        help="Detach from the terminal and run in the background. Do not use it under "
        "systemd, supervisord, Docker or Kubernetes: they expect the server in the foreground "
        "and lose track of a process that forks away.",
        section="Process",
        parse=parse_bool,
        switch=True,
    )
    health_path: str | None = setting(
        None,
        "--health-path",
        help="A URL path (e.g. /healthz) the worker answers itself, never passing it to the "
        "app: 200 while it serves, 503 once it drains for a stop or reload. Off by default.",
        section="Deployment",
        parse=parse_url_path,
        metavar="PATH",
    )
    proc_name: str | None = setting(
        None,
        "-n",
        "--name",
        help="The name in process titles (default: the APP).",
        section="Process",
        parse=parse_optional_str,
        metavar="NAME",
    )
    pidfile: str | None = setting(
        None,
        "-p",
        "--pid",
        help="Write the master's pid to this file (atomically) and remove it on exit. On USR2 "
        "the old master renames it to FILE.oldbin.",
        section="Process",
        parse=parse_optional_str,
        metavar="FILE",
    )
    hooks: str | None = setting(
        None,
        "--hooks",
        help="A Python module (import path) whose functions are server hooks, with gunicorn's "
        "names: on_starting, when_ready, pre_fork, post_fork, post_worker_init, worker_int, "
        "worker_abort, pre_exec, pre_request, post_request, child_exit, worker_exit, "
        "nworkers_changed, on_reload, on_exit. See docs/hooks.md.",
        section="Process",
        parse=parse_optional_str,
        metavar="MODULE",
    )
    boot_timeout: float = setting(
        120.0,
        "--boot-timeout",
        help="A worker that has not loaded the app and started serving within this many "
        "seconds is killed (its stacks logged first) and counted as a failed boot. Separate "
        "from --timeout: a slow import is not a hung request. 0 turns the check off.",
        section="Workers",
        parse=parse_float(0),
        metavar="SECONDS",
    )
    max_requests: int = setting(
        0,
        "--max-requests",
        help="Replace a worker after it has served this many requests (0 = never). At the "
        "limit it takes no new request, answers what has arrived and exits; the master "
        "starts its replacement at once.",
        section="Workers",
        parse=parse_int(0),
        metavar="INT",
    )
    max_requests_jitter: int = setting(
        0,
        "--max-requests-jitter",
        help="Add a random 0..N to each worker's --max-requests, so workers are not all "
        "replaced at once.",
        section="Workers",
        parse=parse_int(0),
        metavar="INT",
    )
    max_worker_memory: int = setting(
        0,
        "--max-worker-memory",
        help="Replace a worker whose resident memory (RSS) exceeds this many MiB, checked "
        "after every request (0 = off).",
        section="Workers",
        parse=parse_int(0),
        metavar="MIB",
    )
    max_worker_lifetime: float = setting(
        0.0,
        "--max-worker-lifetime",
        help="Replace a worker after it has run for this many seconds (0 = off).",
        section="Workers",
        parse=parse_float(0),
        metavar="SECONDS",
    )
    max_worker_lifetime_jitter: float = setting(
        0.0,
        "--max-worker-lifetime-jitter",
        help="Add a random 0..N seconds to each worker's --max-worker-lifetime.",
        section="Workers",
        parse=parse_float(0),
        metavar="SECONDS",
    )
    gc_freeze: bool = setting(
        True,
        "--gc-freeze/--no-gc-freeze",
        help="Move every object that exists when a worker starts serving (the server's, the "
        "app's, what it imported) out of the garbage collector's reach (gc.freeze). Full "
        "collections then take about a millisecond instead of tens (each one stalls every "
        "request of that worker), and pages inherited from the master stay shared. Objects "
        "frozen then and later left in a reference cycle are never freed: turn it off if "
        "an app's boot-time objects are meant to be collected.",
        section="Workers",
        parse=parse_bool,
        switch=True,
    )
    preload_app: bool = setting(
        False,
        "--preload/--no-preload",
        help="Load the app in the master before forking the workers (shares memory copy-on-"
        "write; HUP then does not reload the app's code). Does not mix with --reload.",
        section="Application",
        parse=parse_bool,
        switch=True,
    )
    reload: bool = setting(
        False,
        "--reload/--no-reload",
        help="Development: start a new generation of workers when a Python file under the "
        "current directory (or a --reload-extra-file) changes. A file that fails to load "
        "keeps the old workers serving.",
        section="Application",
        parse=parse_bool,
        switch=True,
    )
    reload_extra_files: list[str] = setting(
        [],
        "--reload-extra-file",
        help="A file or glob pattern (e.g. 'templates/**/*.html') that also triggers a "
        "--reload. Repeatable.",
        section="Application",
        parse=parse_str,
        metavar="GLOB",
        multiple=True,
    )

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


SETTINGS: dict[str, tuple[dataclasses.Field[Any], Meta]] = {
    f.name: (f, f.metadata["forkserve"]) for f in dataclasses.fields(Config)
}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def default_of(name: str) -> Any:
    f, _ = SETTINGS[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def suggest(name: str, choices: list[str]) -> str:
    import difflib  # only on the way to an error: not worth its import at every start

    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def flag_of(name: str) -> str:
    """The long flag of a setting, as people type it (`--workers`, `--reuse-port`)."""
    _, meta = SETTINGS[name]
    return next((f.split("/")[0] for f in meta.flags if f.startswith("--")), name.upper())


def _text(raw: Any) -> str:
    # TOML booleans read back as Python's True/False; show them as they were written.
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, dict):
        raise ValueError("expected a value, got a table")
    return str(raw)


def _parse(name: str, raw: Any, source: str) -> Any:
    """Turn a raw value from `source` into the setting's value, or fail naming both."""
    _, meta = SETTINGS[name]
    try:
        if meta.multiple:
            items = raw if isinstance(raw, list | tuple) else parse_list(_text(raw))
            return [meta.parse(_text(item)) for item in items]
        if isinstance(raw, bool) and meta.parse is parse_bool:
            return raw
        if isinstance(raw, list):
            return meta.parse(",".join(_text(r) for r in raw))
        return meta.parse(_text(raw))
    except ValueError as exc:
        raise ConfigError(f"{name} ({source}): {exc}") from None


# -- the config file layer ---------------------------------------------------

CONFIG_FILE = "forkserve.toml"
PYPROJECT = "pyproject.toml"
PYPROJECT_TABLE = ("tool", "forkserve")


@dataclass(frozen=True)
class ConfigFile:
    """Where the file layer comes from: a path, and the table inside it (pyproject)."""

    path: str
    table: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.path} [{'.'.join(self.table)}]" if self.table else self.path


def find_config_file(explicit: str | None, cwd: str) -> ConfigFile | None:
    """`--config FILE`, else ./forkserve.toml, else ./pyproject.toml if it has [tool.forkserve]."""
    if explicit:
        return ConfigFile(explicit)
    if os.path.isfile(os.path.join(cwd, CONFIG_FILE)):
        return ConfigFile(CONFIG_FILE)
    pyproject = os.path.join(cwd, PYPROJECT)
    if os.path.isfile(pyproject):
        data = _read_toml(pyproject, PYPROJECT, only_if=might_have_tool_forkserve)
        if isinstance(data.get("tool"), dict) and "forkserve" in data["tool"]:
            return ConfigFile(PYPROJECT, PYPROJECT_TABLE)
    return None


# Where a TOML file can start a `tool.forkserve` table: a `[tool.forkserve...]`
# header (`[[...]]` too), a `[tool]` table (whose keys may include forkserve),
# or a top-level `tool` key (dotted or inline). A pyproject.toml with none of
# these (most: they have only [tool.pytest], [tool.ruff], ...) is not parsed at
# all, which saves tomllib's import and parse (~8 ms) at every start.
_TOOL_FORKSERVE = re.compile(
    rb"""^[ \t]*(?:\[?\[[ \t]*(["']?)tool\1[ \t]*(?:\.[ \t]*(["']?)forkserve\2[ \t]*[.\]]|\])"""
    rb"""|(["']?)tool\3[ \t]*[.=])""",
    re.M,
)


def might_have_tool_forkserve(text: bytes) -> bool:
    """False only if the TOML `text` certainly has no `tool.forkserve` table."""
    return b"forkserve" in text and _TOOL_FORKSERVE.search(text) is not None


def _read_toml(
    path: str, shown: str, only_if: Callable[[bytes], bool] | None = None
) -> dict[str, Any]:
    """The file's TOML; {} without parsing when `only_if(raw bytes)` says it is not needed."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {shown}: {exc.strerror}") from None
    if only_if is not None and not only_if(text):
        return {}
    import tomllib  # only when there is a file to parse

    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {shown} is not UTF-8: {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {shown} is not valid TOML: {exc}") from None


_TABLE_RE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY_RE = re.compile(r"""^\s*(["']?)([A-Za-z0-9_-]+)\1\s*=""")


def _key_lines(text: str, table: tuple[str, ...]) -> dict[str, int]:
    """Line number of each key of `table`, so errors can say file:line.

    tomllib keeps no positions; a line scan is enough for the flat tables a
    config file has (a key inside an inline table or array is not a setting).
    """
    want = ".".join(table)
    current = ""
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        header = _TABLE_RE.match(line)
        if header:
            current = ".".join(p.strip().strip("\"'") for p in header.group(1).split("."))
            continue
        key = _KEY_RE.match(line)
        if key and current == want:
            lines.setdefault(key.group(2), number)
    return lines


def file_layer(where: ConfigFile, cwd: str) -> dict[str, tuple[Any, str]]:
    """Raw settings from the config file: name -> (TOML value, "path:line")."""
    full = os.path.join(cwd, where.path)
    data: Any = _read_toml(full, where.path)
    for part in where.table:
        data = data.get(part, {}) if isinstance(data, dict) else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where.label}: expected a table of settings")
    with open(full, "rb") as f:
        lines = _key_lines(f.read().decode("utf-8"), where.table)
    raw: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        source = f"{where.path}:{lines[key]}" if key in lines else where.label
        name = key.replace("-", "_")
        if name not in SETTINGS:
            raise ConfigError(
                f"unknown setting {key!r} in {source}{suggest(name, list(SETTINGS))}"
            )
        raw[name] = (value, source)
    return raw


# -- the environment layer ---------------------------------------------------

ENV_CMD_ARGS = ENV_PREFIX + "CMD_ARGS"
# FORKSERVE_ variables that are not settings: extra arguments, and the listening
# fds and the old master's pid a USR2 re-exec hands to the new master
# (sockets.REEXEC_FDS_ENV, arbiter.OLD_MASTER_ENV).
ENV_NOT_SETTINGS = (ENV_CMD_ARGS, ENV_PREFIX + "FDS", ENV_PREFIX + "OLD_MASTER")
# Conventions of containers and PaaS (Heroku, Cloud Run, ...). Each is only a
# default, as in gunicorn: a value from the config file, a FORKSERVE_ variable
# or the command line wins. (A platform's PORT silently replacing the file's
# `bind = ["127.0.0.1:8001"]` with 0.0.0.0 would open every interface.)
ENV_CONVENTIONS = {
    "PORT": "bind",
    "WEB_CONCURRENCY": "workers",
    "SCRIPT_NAME": "root_path",
    "FORWARDED_ALLOW_IPS": "forwarded_allow_ips",
}


def convention_layer(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Raw defaults from the container conventions (PORT, WEB_CONCURRENCY, ...)."""
    raw: dict[str, tuple[Any, str]] = {}
    for var, name in ENV_CONVENTIONS.items():
        if env.get(var) and name in SETTINGS:
            value: Any = env[var]
            if var == "PORT":
                value = [f"0.0.0.0:{env[var]}"]
            raw[name] = (value, f"env {var}")
    return raw


def env_layer(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Raw settings from the environment's FORKSERVE_<SETTING> variables.

    FORKSERVE_CMD_ARGS is parsed by the command line (`cli.py`), not here;
    the container conventions are `convention_layer`.
    """
    raw: dict[str, tuple[Any, str]] = {}
    known = {env_name(n): n for n in SETTINGS}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_NOT_SETTINGS:
            continue
        known_name = known.get(key)
        if known_name is None:
            raise ConfigError(
                f"unknown environment variable {key}{suggest(key, [*known, ENV_CMD_ARGS])}"
            )
        raw[known_name] = (value, f"env {key}")
    return raw


def load(
    cli: Mapping[str, Any],
    env: Mapping[str, str],
    file: Mapping[str, tuple[Any, str]] | None = None,
    env_args: Mapping[str, Any] | None = None,
) -> tuple[Config, dict[str, str]]:
    """Layer defaults < container conventions < config file < environment < command line.

    `file` is `file_layer()`'s result; `env_args` the settings given in
    FORKSERVE_CMD_ARGS (they rank above the other environment variables);
    `cli` maps setting names to raw values given on the command line (absent =
    not given). Returns the settings and, for each, where its value came from.
    """
    layers: list[tuple[str, Any, str]] = []
    conventions = convention_layer(env)
    for name, (value, source) in conventions.items():
        layers.append((name, value, source))
    for name, (value, source) in (file or {}).items():
        layers.append((name, value, source))
    for name, (value, source) in env_layer(env).items():
        layers.append((name, value, source))
    for name, value in (env_args or {}).items():
        layers.append((name, value, f"env {ENV_CMD_ARGS} {flag_of(name)}"))
    for name, value in cli.items():
        if name not in SETTINGS:
            raise ConfigError(f"unknown setting {name!r}{suggest(name, list(SETTINGS))}")
        layers.append((name, value, f"command line {flag_of(name)}"))
    values: dict[str, Any] = {}
    origin: dict[str, str] = {name: "default" for name in SETTINGS}
    for name, value, source in layers:
        values[name] = _parse(name, value, source)
        origin[name] = source
    for name, (_value, source) in conventions.items():
        if origin[name] != source:  # --print-config says the convention lost
            origin[name] += f" (over {source}, a default only)"
    return Config(**values), origin


def show_value(name: str, value: Any) -> str:
    """A setting's value as TOML, so `--print-config` output can seed a forkserve.toml."""
    import json  # --print-config only

    _, meta = SETTINGS[name]
    if meta.show is not None and value is not None:
        return json.dumps(meta.show(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def render(cfg: Config, origin: Mapping[str, str]) -> str:
    """The effective settings and where each came from, as a commented TOML file."""
    rows = []
    for name in SETTINGS:
        value = getattr(cfg, name)
        text = f"# {name} is not set" if value is None else f"{name} = {show_value(name, value)}"
        rows.append((text, origin[name]))
    width = min(60, max(len(text) for text, _ in rows))
    return "\n".join(f"{text:<{width}}  # {source}" for text, source in rows) + "\n"

"""`forkserve --from-gunicorn`: turn a gunicorn config file into a forkserve.toml.

Runs in the `forkserve` command's own process, before any server starts; it
binds nothing and forks nothing. A gunicorn config file is Python, so
`read_gunicorn_file` executes it, as gunicorn does, and keeps the names
gunicorn knows. Everything after that is pure: `convert` maps each setting to
forkserve's (validated by `config.load`, so the output loads) or to a TOML
comment that says why there is none, and lists the server hooks to move into
a `--hooks` module.

`GUNICORN_SETTINGS` covers every setting of gunicorn 27 (the migration table
in docs/guide/07-migrating.md is rendered from it by `render_table`).
"""

from __future__ import annotations

import enum
import os
import sys
import traceback
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from typing import Any

from forkserve.config import load, show_value
from forkserve.errors import ConfigError

DEFAULT_FILE = "gunicorn.conf.py"  # what gunicorn reads when no --config is given


class Kind(enum.Enum):
    """What a gunicorn setting becomes in forkserve."""

    SETTING = "setting"  # a forkserve setting takes its value
    HOOK = "hook"  # a server hook: the function moves into a --hooks module
    COMMAND = "command"  # a command-line option of forkserve, not a setting
    PLANNED = "planned"  # not in forkserve yet; work in progress adds it
    NONE = "none"  # no equivalent, for the reason given


class Unconvertible(ValueError):
    """This value has no forkserve spelling; the message says why (it becomes a comment)."""


def _same(value: Any) -> Any:
    return value


def _as_list(value: Any) -> list[str]:
    """gunicorn takes a list or one comma-separated string for these."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(item) for item in value]


def _one_or_list(value: Any) -> list[str]:
    """bind: one address or a list of them (a comma in a string is not a separator)."""
    return [value] if isinstance(value, str) else [str(item) for item in value]


def _limit(value: Any) -> Any:
    # gunicorn reads 0 as "no limit"; forkserve always keeps one.
    if value in (0, "0"):
        raise Unconvertible(
            "0 means no limit in gunicorn; forkserve always limits the request head, so "
            "its default applies"
        )
    return value


def _umask(value: Any) -> str:
    number = int(value, 0) if isinstance(value, str) else int(value)
    return f"0o{number:03o}"  # forkserve reads a string as octal, as the shell's umask


def _proxy_protocol(value: Any) -> bool:
    # gunicorn 27: off/false/0, or v1/v2/auto/true (one of them); forkserve accepts both versions.
    return str(value).strip().lower() not in ("off", "false", "0", "none", "")


def _lower(value: Any) -> str:
    return str(value).lower()


def _worker_class(value: Any) -> Any:
    # gunicorn takes a short name or a class path (gunicorn.workers.gthread.ThreadWorker).
    name = str(value).rsplit(".", 1)[-1].lower()
    if name in ("sync", "syncworker"):
        return "sync"
    if name in ("gthread", "threadworker"):
        return "gthread"
    raise Unconvertible("forkserve has sync and gthread workers; an async worker class has "
                        "no equivalent (docs/workers.md, and the guide's chapter on WSGI or "
                        "ASGI)")


@dataclass(frozen=True)
class Equivalent:
    """One gunicorn setting and what forkserve has for it."""

    kind: Kind
    forkserve: str = ""  # the forkserve setting or option, when there is one
    why: str = ""  # for NONE and PLANNED: why; for SETTING: a note on a difference
    convert: Callable[[Any], Any] = field(default=_same)


def _s(name: str, why: str = "", convert: Callable[[Any], Any] = _same) -> Equivalent:
    return Equivalent(Kind.SETTING, name, why, convert)


def _none(why: str) -> Equivalent:
    return Equivalent(Kind.NONE, why=why)


_HOOK = Equivalent(Kind.HOOK, "hooks", "a function of the same name in the --hooks module")
_HTTP2 = _none("forkserve speaks HTTP/1.1; terminate HTTP/2 in the proxy in front")
_STRICT = _none("forkserve's parsing is strict and not configurable (docs/security.md)")
_ASGI = _none("forkserve serves WSGI only (see the guide's chapter on WSGI or ASGI)")
_DIRTY = _none("forkserve has no separate pool of workers for long tasks; run them in a "
               "task queue")
_CONTROL = _none("control forkserve with signals (docs/signals.md)")
_SYSLOG = _none("no syslog output: forkserve logs to a file or stderr, which systemd's "
                "journal or the container runtime collects")

# Every setting of gunicorn 27, in the order of gunicorn's own settings page.
GUNICORN_SETTINGS: dict[str, Equivalent] = {
    "config": Equivalent(Kind.COMMAND, "--config", "a TOML file, not Python"),
    "wsgi_app": _s("app"),
    "bind": _s("bind", convert=_one_or_list),
    "backlog": _s("backlog"),
    "workers": _s("workers", "as computed by the file on this machine; forkserve also "
                  "takes 'auto', one per usable CPU"),
    "worker_class": _s("worker_class", "sync or gthread; forkserve has no async worker "
                       "classes", convert=_worker_class),
    "threads": _s("threads", "the app runs on the threads; reading requests and idle "
                  "connections stay in the worker's loop (docs/workers.md)"),
    "worker_connections": _s("worker_connections", "in forkserve: the connections one "
                             "worker keeps open, idle ones parked"),
    "max_requests": _s("max_requests"),
    "max_requests_jitter": _s("max_requests_jitter"),
    "timeout": _s("timeout"),
    "graceful_timeout": _s("graceful_timeout"),
    "keepalive": _s("keepalive", "gunicorn's sync worker closes every connection; forkserve "
                    "keeps an idle one open this long, parked"),
    "limit_request_line": _s("limit_request_line", convert=_limit),
    "limit_request_fields": _s("limit_request_fields"),
    "limit_request_field_size": _s("limit_request_field_size", convert=_limit),
    "reload": _s("reload"),
    "reload_engine": _none("forkserve picks how to watch files itself"),
    "reload_extra_files": _s("reload_extra_files", convert=_as_list),
    "spew": _none("no line tracing; use a debugger or sys.settrace in the app"),
    "check_config": Equivalent(Kind.COMMAND, "--check-config"),
    "print_config": Equivalent(Kind.COMMAND, "--print-config"),
    "preload_app": _s("preload_app"),
    "sendfile": _none("forkserve always sends wsgi.file_wrapper files with sendfile on "
                      "plain TCP"),
    "reuse_port": _s("reuse_port"),
    "chdir": _s("chdir"),
    "daemon": _s("daemon"),
    "raw_env": _none("forkserve does not set environment variables: set them where it "
                     "starts (systemd Environment=, docker -e, the shell)"),
    "pidfile": _s("pidfile"),
    "worker_tmp_dir": _none("heartbeats are in shared memory, not temporary files"),
    "user": _s("user", convert=str),
    "group": _s("group", convert=str),
    "umask": _s("umask", convert=_umask),
    "initgroups": _none("forkserve always sets the --user's supplementary groups"),
    "tmp_upload_dir": _none("forkserve writes no temporary files for request bodies"),
    "secure_scheme_headers": _none("fixed: X-Forwarded-Proto, X-Forwarded-Ssl and Forwarded, "
                                   "trusted from forwarded_allow_ips"),
    "forwarded_allow_ips": _s("forwarded_allow_ips", convert=_as_list),
    "accesslog": _s("access_logfile"),
    "disable_redirect_access_to_syslog": _SYSLOG,
    "access_log_format": _s("access_logformat", "gunicorn's atoms; forkserve adds %(p)s"),
    "errorlog": _s("error_logfile"),
    "loglevel": _s("log_level", convert=_lower),
    "capture_output": _none("forkserve does not redirect the app's stdout and stderr"),
    "logger_class": _none("forkserve's log format is fixed; configure Python logging in the "
                          "app for the app's own records"),
    "logconfig": _none("forkserve's log format is fixed; configure Python logging in the app"),
    "logconfig_dict": _none("forkserve's log format is fixed; configure Python logging in "
                            "the app"),
    "logconfig_json": _none("forkserve's log format is fixed; configure Python logging in "
                            "the app"),
    "syslog_addr": _SYSLOG,
    "syslog": _SYSLOG,
    "syslog_prefix": _SYSLOG,
    "syslog_facility": _SYSLOG,
    "enable_stdio_inheritance": _none("forkserve leaves standard input and output as they are"),
    "statsd_host": _s("statsd_host"),
    "dogstatsd_tags": _none("forkserve sends plain statsd, without DogStatsD tags"),
    "statsd_prefix": _s("statsd_prefix"),
    "enable_backlog_metric": _none("the listen queue is a Prometheus metric "
                                   "(metrics_bind: forkserve_listen_queue), not a statsd one"),
    "proc_name": _s("proc_name"),
    "default_proc_name": _none("internal to gunicorn; forkserve names processes after "
                               "proc_name or the APP"),
    "pythonpath": _s("pythonpath", convert=_as_list),
    "paste": _none("no PasteDeploy: name the app (MODULE:ATTRIBUTE or a factory) instead"),
    "on_starting": _HOOK,
    "on_reload": _HOOK,
    "when_ready": _HOOK,
    "pre_fork": _HOOK,
    "post_fork": _HOOK,
    "post_worker_init": _HOOK,
    "worker_int": _HOOK,
    "worker_abort": _HOOK,
    "pre_exec": _HOOK,
    "pre_request": _HOOK,
    "post_request": _HOOK,
    "child_exit": _HOOK,
    "worker_exit": _HOOK,
    "nworkers_changed": _HOOK,
    "on_exit": _HOOK,
    "ssl_context": _none("no hook for the TLS context: use certfile, keyfile, ca_certs, "
                         "cert_reqs and ciphers"),
    "proxy_protocol": _s("proxy_protocol", "forkserve accepts v1 and v2",
                         convert=_proxy_protocol),
    "proxy_allow_ips": _s("proxy_allow_ips", convert=_as_list),
    "protocol": _none("forkserve speaks HTTP only (no uwsgi protocol)"),
    "uwsgi_allow_ips": _none("forkserve speaks HTTP only (no uwsgi protocol)"),
    "keyfile": _s("keyfile"),
    "certfile": _s("certfile"),
    "ssl_version": _none("Python's ssl defaults decide the TLS versions"),
    "cert_reqs": _s("cert_reqs", convert=int),
    "ca_certs": _s("ca_certs"),
    "suppress_ragged_eofs": _none("not configurable"),
    "do_handshake_on_connect": _none("not configurable"),
    "ciphers": _s("ciphers"),
    "http_protocols": _HTTP2,
    "http2_cleartext": _HTTP2,
    "http2_max_concurrent_streams": _HTTP2,
    "http2_initial_window_size": _HTTP2,
    "http2_max_frame_size": _HTTP2,
    "http2_max_header_list_size": _HTTP2,
    "raw_paste_global_conf": _none("no PasteDeploy"),
    "permit_obsolete_folding": _STRICT,
    "strip_header_spaces": _STRICT,
    "permit_unconventional_http_method": _STRICT,
    "permit_unconventional_http_version": _STRICT,
    "casefold_http_method": _STRICT,
    "forwarder_headers": _none("forkserve passes no SCRIPT_NAME or PATH_INFO from headers; "
                               "use root_path"),
    "header_map": _none("fixed: header names with '_' are dropped (gunicorn's 'drop')"),
    "asgi_loop": _ASGI,
    "asgi_lifespan": _ASGI,
    "asgi_disconnect_grace_period": _ASGI,
    "websocket_max_message_size": _ASGI,
    "http_parser": _none("forkserve picks its parser with --http (auto, h11 or httptools; "
                         "httptools with the fast extra), behind its own strict pre-check"),
    "root_path": _s("root_path"),
    "dirty_apps": _DIRTY,
    "dirty_workers": _DIRTY,
    "dirty_timeout": _DIRTY,
    "dirty_threads": _DIRTY,
    "dirty_graceful_timeout": _DIRTY,
    "on_dirty_starting": _DIRTY,
    "dirty_post_fork": _DIRTY,
    "dirty_worker_init": _DIRTY,
    "dirty_worker_exit": _DIRTY,
    "control_socket": _CONTROL,
    "control_socket_mode": _CONTROL,
    "control_socket_disable": _CONTROL,
}

HOOK_NAMES = tuple(name for name, eq in GUNICORN_SETTINGS.items() if eq.kind is Kind.HOOK)


@dataclass(frozen=True)
class GunicornFile:
    """What a gunicorn config file set, after it ran."""

    path: str
    settings: dict[str, Any]  # gunicorn setting name -> value (hooks excluded)
    hooks: dict[str, int]  # server hook name -> line where its function starts


def read_gunicorn_file(path: str) -> GunicornFile:
    """Execute a gunicorn config file as gunicorn does and keep the names gunicorn reads.

    Runs the file's code in this process (it is Python: imports, computations
    and all). What it prints goes to stderr, so stdout stays the TOML. Any
    error in the file is a ConfigError with one line naming the file and line.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"no gunicorn config file at {path}")
    try:
        with open(path, "rb") as f:
            source = f.read()
        code = compile(source, path, "exec")
        # `__config__` is the module name gunicorn gives the file.
        namespace: dict[str, Any] = {"__name__": "__config__", "__file__": path}
        with redirect_stdout(sys.stderr):
            exec(code, namespace)
    except SyntaxError as exc:
        raise ConfigError(f"cannot read {path}: line {exc.lineno}: SyntaxError: {exc.msg}"
                          ) from None
    except (Exception, SystemExit) as exc:
        line = _line_in(exc, path)
        where = f" line {line}:" if line else ""
        raise ConfigError(f"cannot read {path}:{where} {type(exc).__name__}: {exc}") from None
    settings: dict[str, Any] = {}
    hooks: dict[str, int] = {}
    for name, value in namespace.items():
        if name not in GUNICORN_SETTINGS:
            continue  # gunicorn ignores names it does not know, and so do we
        if GUNICORN_SETTINGS[name].kind is Kind.HOOK and callable(value):
            code_of = getattr(value, "__code__", None)
            hooks[name] = code_of.co_firstlineno if code_of is not None else 0
        else:
            settings[name] = value
    return GunicornFile(path, settings, hooks)


def _line_in(exc: BaseException, path: str) -> int | None:
    """The last line of `path` in the exception's traceback (the file's own line)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == path:
            line = frame.lineno
    return line


def _comment(text: str) -> str:
    return "# " + text


def _explained(head: str, why: str) -> list[str]:
    """`# head` and the reason below it, wrapped to fit a terminal."""
    return [_comment(head), *(_comment("  " + line) for line in _wrap(why))]


def convert(found: GunicornFile) -> str:
    """The forkserve.toml for what a gunicorn config file set. Pure."""
    mapped: dict[str, tuple[Any, str]] = {}  # forkserve name -> (raw value, note)
    comments: list[str] = []
    for name, value in found.settings.items():
        eq = GUNICORN_SETTINGS[name]
        head = f"{name} = {_py(value)}"
        if eq.kind is Kind.SETTING and value is None:
            comments += _explained(head, "not set; forkserve's default applies")
            continue
        try:
            raw = eq.convert(value)
        except Unconvertible as why:
            comments += _explained(head, str(why))
            continue
        except (TypeError, ValueError) as exc:
            comments += _explained(head, f"not converted: {exc}")
            continue
        if eq.kind is Kind.SETTING:
            try:
                load({}, {}, file={eq.forkserve: (raw, found.path)})
            except ConfigError as exc:
                comments += _explained(head, f"not converted: {exc}")
                continue
            mapped[eq.forkserve] = (raw, eq.why)
        elif eq.kind is Kind.COMMAND:
            comments += _explained(head, f"use forkserve's {eq.forkserve} option on the "
                                   "command line")
        else:
            comments += _explained(head, eq.why)
        if name == "raw_env" and eq.kind is Kind.NONE:
            comments += [_comment(f"    {item}") for item in _one_or_list(value)]

    lines = [
        _comment(f"forkserve.toml converted from {found.path} by `forkserve --from-gunicorn`."),
        _comment(f"{found.path} is Python: it was executed to read it, so computed values"),
        _comment("are what it computed on this machine."),
        "",
    ]
    if mapped:
        cfg, _ = load({}, {}, file={n: (raw, found.path) for n, (raw, _n) in mapped.items()})
        for fs_name, (_raw, note) in mapped.items():
            if note:
                lines += [_comment(line) for line in _wrap(note + ":")]
            lines.append(f"{fs_name} = {show_value(fs_name, getattr(cfg, fs_name))}")
    if comments:
        if mapped:
            lines.append("")
        lines.append(_comment("Not converted, and why:"))
        lines += comments
    if found.hooks:
        lines += ["", *_hook_advice(found)]
    if not (mapped or comments or found.hooks):
        lines.append(_comment(f"{found.path} sets no gunicorn setting: forkserve's defaults "
                              "apply."))
    return "\n".join(lines).rstrip("\n") + "\n"


def _wrap(text: str) -> list[str]:
    import textwrap  # --from-gunicorn only

    return textwrap.wrap(text, 76)


def _py(value: Any) -> str:
    """A value as the gunicorn file would spell it, on one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _hook_advice(found: GunicornFile) -> list[str]:
    listed = ", ".join(f"{name} (line {line})" for name, line in found.hooks.items())
    return [
        _comment(f"Server hooks defined in {found.path}: {listed}."),
        _comment("forkserve calls hooks with gunicorn's names and arguments from a Python"),
        _comment("module named by `hooks`: move these functions (and what they import) into"),
        _comment("a module on the app's path, e.g. serving_hooks.py, then set"),
        _comment('  hooks = "serving_hooks"'),
        _comment("or pass --hooks serving_hooks. docs/hooks.md lists the differences."),
    ]


def from_gunicorn(path: str) -> str:
    """`forkserve --from-gunicorn [FILE]`: read the file, return the TOML to print."""
    return convert(read_gunicorn_file(path))


def render_table() -> str:
    """The migration guide's table: every gunicorn setting and what forkserve has."""
    rows = ["| gunicorn | forkserve | notes |", "|---|---|---|"]
    for name, eq in GUNICORN_SETTINGS.items():
        if eq.kind is Kind.SETTING:
            target = f"`{eq.forkserve}`"
        elif eq.kind is Kind.COMMAND:
            target = f"`{eq.forkserve}` option"
        elif eq.kind is Kind.HOOK:
            target = "`hooks` module"
        elif eq.kind is Kind.PLANNED:
            target = "not yet"
        else:
            target = "none"
        rows.append(f"| `{name}` | {target} | {eq.why} |")
    return "\n".join(rows) + "\n"

"""The `forkserve` command, generated from the settings declarations in config.py.

Every option is a plain string to click; `config.load` parses and validates
it, so a bad value is reported the same way whether it came from a flag, the
environment or the config file: one line naming the setting, the source and
what was expected.

Besides the settings, four options act on the configuration itself:
`--config/-c FILE`, `--print-config`, `--check-config` and
`--from-gunicorn [FILE]` (in gunicorn_conf.py).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from typing import Any

import click

from forkserve import __version__
from forkserve.config import (
    ENV_CMD_ARGS,
    SETTINGS,
    Config,
    file_layer,
    find_config_file,
    load,
    render,
)
from forkserve.errors import ConfigError, ForkserveError

# What gunicorn reads without --config: gunicorn_conf.DEFAULT_FILE, spelled
# here too so that every start does not import gunicorn_conf (a test checks).
DEFAULT_GUNICORN_FILE = "gunicorn.conf.py"

# Options about the configuration, not settings of the server.
META_OPTIONS = ("config", "print_config", "check_config", "from_gunicorn")


def _options() -> list[click.Parameter]:
    params: list[click.Parameter] = [click.Argument(["app"], required=False, metavar="APP")]
    for name, (_field, meta) in SETTINGS.items():
        if not meta.flags:
            continue
        if meta.switch:
            params.append(click.Option([*meta.flags, name], is_flag=True, default=None,
                                       help=meta.help))
        else:
            params.append(
                click.Option([*meta.flags, name], multiple=meta.multiple, default=None,
                             metavar=meta.metavar or None, help=meta.help)
            )
    params += [
        click.Option(["-c", "--config", "config"], metavar="FILE", default=None,
                     help="Read settings from this TOML file. Default: ./forkserve.toml, else "
                     "the [tool.forkserve] table of ./pyproject.toml."),
        click.Option(["--print-config", "print_config"], is_flag=True, default=None,
                     help="Print the effective settings and where each came from, then exit."),
        click.Option(["--check-config", "check_config"], is_flag=True, default=None,
                     help="Load the settings and the app, report the first error or OK, and "
                     "exit without serving."),
        click.Option(["--from-gunicorn", "from_gunicorn"], metavar="[FILE]", is_flag=False,
                     flag_value=DEFAULT_GUNICORN_FILE, default=None,
                     help="Execute a gunicorn config file (Python; default ./gunicorn.conf.py), "
                     "print the equivalent forkserve.toml on stdout, and exit."),
    ]
    return params


def _given(values: Mapping[str, Any]) -> dict[str, Any]:
    """Only what was on the command line: click passes None / () for the rest."""
    return {k: v for k, v in values.items() if v is not None and v != ()}


def parse_cmd_args(text: str) -> dict[str, Any]:
    """FORKSERVE_CMD_ARGS (like GUNICORN_CMD_ARGS): flags and values, as on the command line."""
    try:
        args = shlex.split(text)
        ctx = cli.make_context("forkserve", args, resilient_parsing=False)
    except ValueError as exc:
        raise ConfigError(f"env {ENV_CMD_ARGS}: {exc}") from None
    except click.UsageError as exc:
        raise ConfigError(f"env {ENV_CMD_ARGS}: {exc.format_message()}") from None
    return _given(ctx.params)


def resolve(given: Mapping[str, Any], env: Mapping[str, str], cwd: str
            ) -> tuple[Config, dict[str, str], str]:
    """All layers for this invocation: settings, provenance, and the config file used."""
    env_args = parse_cmd_args(env[ENV_CMD_ARGS]) if env.get(ENV_CMD_ARGS) else {}
    meta = {k: env_args.pop(k) for k in META_OPTIONS if k in env_args}
    meta.update({k: given[k] for k in META_OPTIONS if k in given})
    settings = {k: v for k, v in given.items() if k not in META_OPTIONS}
    where = find_config_file(meta.get("config"), cwd)
    file = file_layer(where, cwd) if where else None
    cfg, origin = load(settings, env, file, env_args)
    return cfg, origin, where.label if where else ""


def check(cfg: Config) -> None:
    """What --check-config proves: the settings are whole and the app imports."""
    from forkserve.loader import check_spec, load_app, prepare_path
    from forkserve.parser import resolve as resolve_parser
    from forkserve.process import resolve_identity

    resolve_identity(cfg.user, cfg.group)
    resolve_parser(cfg.http)
    if cfg.metrics_bind:
        from forkserve.metrics import require_prometheus_client

        require_prometheus_client()
    prepare_path(cfg.chdir, cfg.pythonpath)
    check_spec(cfg.app)
    load_app(cfg.app)


def _run(cfg: Config, given: Mapping[str, Any], launch_dir: str) -> int:
    # Imported here so `--help`, `--version` and `--print-config` stay fast.
    from forkserve.arbiter import OLD_MASTER_ENV, Arbiter
    from forkserve.loader import check_spec, prepare_path
    from forkserve.log import check_log_path, log, setup_error_log
    from forkserve.notify import Notifier
    from forkserve.parser import resolve as resolve_parser
    from forkserve.process import daemonize, drop_privileges, resolve_identity
    from forkserve.sockets import (
        adopt_fds,
        bind_all,
        chown_unix_sockets,
        inherited_fds,
        systemd_listeners,
    )

    setup_error_log(cfg.error_logfile, cfg.log_level, cfg.log_format)
    identity = resolve_identity(cfg.user, cfg.group)  # fail before binding anything
    resolve_parser(cfg.http)  # --http httptools without the extra: one line, exit 2
    if cfg.certfile:
        from forkserve.tls import make_context

        # Load the certificate now: a bad path or key is one line and exit 2,
        # not workers failing after fork. Each worker loads its own copy after
        # fork (so HUP picks up renewed certificates), as the --user it runs as.
        make_context(cfg.certfile, cfg.keyfile, cfg.ca_certs, cfg.cert_reqs, cfg.ciphers)
    if cfg.umask is not None:
        os.umask(cfg.umask)  # for the files the app creates; sockets: unix_mode below
    prepare_path(cfg.chdir, cfg.pythonpath)
    check_spec(cfg.app)  # a typo in APP: one line now, before binding or forking
    # After --chdir: workers open a relative access log path from there.
    check_log_path(cfg.access_logfile, "--access-logfile")
    # Where the sockets come from, first match wins: the old master of a USR2
    # upgrade, systemd socket activation, or our own --bind.
    fds = inherited_fds(os.environ)
    listeners = adopt_fds(fds) if fds else systemd_listeners(os.environ, os.getpid())
    if listeners and not fds:
        log.info("Using %d socket(s) passed by systemd; --bind is ignored", len(listeners))
    if not listeners:
        # An explicit --umask still narrows the socket's mode (so a --umask 077
        # set to keep the socket private keeps doing so); an inherited one does not.
        unix_mode = cfg.unix_socket_mode & ~(cfg.umask or 0)
        listeners = bind_all(cfg.bind, cfg.backlog, cfg.reuse_port, unix_mode)
    for listener in listeners:
        listener.tls = bool(cfg.certfile)  # every listener speaks TLS when it is on
    metrics, statsd = _observability(cfg, upgrading=bool(os.environ.get(OLD_MASTER_ENV)))
    if identity is not None:
        chown_unix_sockets(listeners, identity.uid, identity.gid)
        drop_privileges(identity)
    if cfg.daemon and not fds:  # a USR2 re-exec stays the old master's child: already detached
        daemonize()

    def reload_config() -> Config:
        """HUP: the same command line over the sources (file, environment) as they are now."""
        return resolve(given, os.environ, launch_dir)[0]

    notifier = Notifier.from_env(os.environ)
    return Arbiter(cfg, listeners, reload_config=reload_config, notifier=notifier,
                   metrics=metrics, statsd=statsd).run()


def _observability(cfg: Config, upgrading: bool) -> tuple[Any, Any]:
    """The metrics endpoint and the statsd socket: set up before privileges are dropped.

    Imported only when configured: prometheus_client is an optional extra.
    `upgrading`: this is a new master started by USR2, whose old master may
    still hold a unix: metrics path; serving matters more than metrics then.
    """
    from forkserve.errors import BindError
    from forkserve.log import log

    metrics = statsd = None
    if cfg.metrics_bind:
        from forkserve.metrics import MetricsServer

        try:
            metrics = MetricsServer.bind(cfg.metrics_bind)
        except BindError as exc:
            if not upgrading:
                raise
            log.warning("No metrics endpoint until the next restart: %s", exc)
    if cfg.statsd_host:
        from forkserve.statsd import Statsd

        statsd = Statsd(cfg.statsd_host, cfg.statsd_prefix)
    return metrics, statsd


def fail(message: str, status: int) -> None:
    click.echo(f"forkserve: error: {message}", err=True)
    sys.exit(status)


def command(**values: Any) -> None:
    given = _given(values)
    launch_dir = os.getcwd()  # --chdir moves us; the config file is found from here
    try:
        if given.get("from_gunicorn"):  # before resolve(): forkserve's own config may not exist
            from forkserve.gunicorn_conf import from_gunicorn

            click.echo(from_gunicorn(given["from_gunicorn"]), nl=False)
            sys.exit(0)
        cfg, origin, file_label = resolve(given, os.environ, launch_dir)
        if given.get("print_config"):
            click.echo(f"# forkserve {__version__}: effective settings "
                       f"(config file: {file_label or 'none'})")
            click.echo(render(cfg, origin), nl=False)
            sys.exit(0)
        if not cfg.app:
            raise click.UsageError("missing APP (MODULE:ATTRIBUTE, e.g. myapp:app)")
        if given.get("check_config"):
            check(cfg)
            click.echo(f"forkserve: configuration OK; app {cfg.app!r} loaded")
            sys.exit(0)
        status = _run(cfg, given, launch_dir)
    except ForkserveError as exc:
        fail(str(exc), exc.exit_status)
        return
    sys.exit(status)


EXAMPLES = """\
\b
Examples:
  forkserve myapp:app                       127.0.0.1:8000, one worker
  forkserve myproject.wsgi -w 4 -b 0.0.0.0:8000 --access-logfile -
                                            MODULE alone means MODULE:application
  forkserve 'myapp:create_app()' -b unix:/run/myapp/web.sock
                                            a factory; a socket for nginx
  forkserve myapp:app --certfile cert.pem --keyfile key.pem -b 0.0.0.0:8443
  forkserve myapp:app --reload              development: new workers on code changes
  forkserve --print-config myapp:app        every setting and where it came from
  forkserve --check-config myapp:app        load settings and app, serve nothing

Every option is described in docs/settings.md, under the same headings.
"""


class GroupedCommand(click.Command):
    """`--help` with the options under the headings of docs/settings.md, in its order.

    Both come from the `section` of each setting's declaration; options that are
    not settings (--config, --version, ...) come last.
    """

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        section_of = {name: meta.section for name, (_field, meta) in SETTINGS.items()}
        groups: dict[str, list[tuple[str, str]]] = {
            section: [] for section in dict.fromkeys(section_of.values())}
        other: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            section = section_of.get(param.name or "")
            (groups[section] if section else other).append(record)
        for section, rows in [*groups.items(), ("Configuration and help", other)]:
            if rows:
                with formatter.section(section):
                    formatter.write_dl(rows)


cli = GroupedCommand(
    "forkserve",
    callback=command,
    params=[
        *_options(),
        click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                     callback=lambda ctx, _p, v: _print_version(ctx, v),
                     help="Show the version and exit."),
    ],
    help="Serve the WSGI application APP (MODULE:ATTRIBUTE or MODULE:FACTORY(); MODULE "
    "alone means MODULE:application) with a pool of prefork sync workers. Settings come "
    "from, lowest to highest: defaults, PORT / WEB_CONCURRENCY / FORWARDED_ALLOW_IPS / "
    "SCRIPT_NAME, the config file, FORKSERVE_* environment variables, the command line.",
    epilog=EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _print_version(ctx: click.Context, value: bool) -> None:
    if value:
        click.echo(f"forkserve {__version__}")
        ctx.exit()


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="forkserve")

"""The `forkserve` command, generated from the settings declarations in config.py.

Every option is a plain string to click; `config.load` parses and validates
it, so a bad value is reported the same way whether it came from a flag or
the environment: one line naming the setting, the source and what was
expected.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from forkserve import __version__
from forkserve.config import SETTINGS, Config, load
from forkserve.errors import ForkserveError


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
    return params


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """Only what was on the command line: click passes None / () for the rest."""
    return {k: v for k, v in values.items() if v is not None and v != ()}


def _run(cfg: Config, given: dict[str, Any]) -> int:
    # Imported here so `--help` and `--version` stay fast.
    from forkserve.arbiter import Arbiter
    from forkserve.loader import prepare_path
    from forkserve.log import setup_error_log
    from forkserve.sockets import adopt_fds, bind_all, inherited_fds

    setup_error_log(cfg.error_logfile, cfg.log_level)
    prepare_path(cfg.chdir, cfg.pythonpath)
    fds = inherited_fds(os.environ)  # a USR2 re-exec hands its sockets over
    listeners = adopt_fds(fds) if fds else bind_all(cfg.bind, cfg.backlog)

    def reload_config() -> Config:
        """HUP: the same command line over the sources as they are now."""
        return load(given, os.environ)[0]

    return Arbiter(cfg, listeners, reload_config=reload_config).run()


def fail(message: str, status: int) -> None:
    click.echo(f"forkserve: error: {message}", err=True)
    sys.exit(status)


def command(**values: Any) -> None:
    given = _given(values)
    if "app" not in given:
        raise click.UsageError("missing APP (MODULE:ATTRIBUTE, e.g. myapp:app)")
    try:
        cfg, _origin = load(given, os.environ)
        status = _run(cfg, given)
    except ForkserveError as exc:
        fail(str(exc), exc.exit_status)
        return
    sys.exit(status)


cli = click.Command(
    "forkserve",
    callback=command,
    params=[
        *_options(),
        click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                     callback=lambda ctx, _p, v: _print_version(ctx, v),
                     help="Show the version and exit."),
    ],
    help="Serve the WSGI application APP (MODULE:ATTRIBUTE or MODULE:FACTORY()) with a "
    "pool of prefork sync workers.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _print_version(ctx: click.Context, value: bool) -> None:
    if value:
        click.echo(f"forkserve {__version__}")
        ctx.exit()


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="forkserve")

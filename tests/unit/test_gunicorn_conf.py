"""`--from-gunicorn`'s conversion: a gunicorn config file in, forkserve.toml out."""

from __future__ import annotations

import multiprocessing
import tomllib
from pathlib import Path

import pytest

from forkserve import cli
from forkserve.config import file_layer, find_config_file, load
from forkserve.errors import ConfigError
from forkserve.gunicorn_conf import (
    DEFAULT_FILE,
    GUNICORN_SETTINGS,
    Kind,
    convert,
    read_gunicorn_file,
)

# What a production gunicorn.conf.py looks like: computed workers, gthread,
# statsd, hooks, values gunicorn spells differently from forkserve.
REALISTIC = '''\
import multiprocessing
import os

bind = ["0.0.0.0:8000", "unix:/tmp/forkserve-test-app.sock"]
workers = multiprocessing.cpu_count() * 2 + 1
worker_class = "gthread"
threads = 4
timeout = 60
graceful_timeout = 20
keepalive = 10
max_requests = 1000
max_requests_jitter = 50
limit_request_line = 0
limit_request_fields = 50
forwarded_allow_ips = "10.0.0.0/8,127.0.0.1"
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(D)s'
loglevel = "WARNING"
preload_app = True
raw_env = ["DJANGO_SETTINGS_MODULE=mysite.settings"]
umask = 0o027
statsd_host = "localhost:8125"
statsd_prefix = "myapp"
helper = os.path.join("a", "b")  # not a gunicorn setting: gunicorn ignores it
print("the config file ran")


def post_fork(server, worker):
    server.log.info("forked %s", worker.pid)


def when_ready(server):
    pass
'''


def write(tmp_path: Path, text: str, name: str = "gunicorn.conf.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def loaded(tmp_path: Path, toml_text: str) -> dict[str, object]:
    """The settings forkserve reads from the converted file, as its config loader sees them."""
    (tmp_path / "forkserve.toml").write_text(toml_text)
    where = find_config_file(None, str(tmp_path))
    assert where is not None
    cfg, origin = load({}, {}, file_layer(where, str(tmp_path)))
    return {name: getattr(cfg, name) for name, src in origin.items() if src != "default"}


def test_realistic_config_maps_every_setting_with_an_equivalent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    found = read_gunicorn_file(write(tmp_path, REALISTIC))
    assert "the config file ran" in capsys.readouterr().err  # it was executed; stdout untouched
    text = convert(found)
    tomllib.loads(text)
    assert loaded(tmp_path, text) == {
        "bind": ["0.0.0.0:8000", "unix:/tmp/forkserve-test-app.sock"],
        "workers": multiprocessing.cpu_count() * 2 + 1,  # the computed value, not the formula
        "worker_class": "gthread",
        "threads": 4,
        "timeout": 60.0,
        "graceful_timeout": 20.0,
        "keepalive": 10.0,
        "max_requests": 1000,
        "max_requests_jitter": 50,
        "limit_request_fields": 50,
        "forwarded_allow_ips": ["10.0.0.0/8", "127.0.0.1"],
        "access_logfile": "-",
        "error_logfile": "-",
        "access_logformat": '%(h)s "%(r)s" %(s)s %(D)s',
        "log_level": "warning",
        "preload_app": True,
        "umask": 0o027,
        "statsd_host": "localhost:8125",  # forkserve sends gunicorn's statsd names
        "statsd_prefix": "myapp",
    }


def test_realistic_config_comments_what_has_no_equivalent(tmp_path: Path) -> None:
    text = convert(read_gunicorn_file(write(tmp_path, REALISTIC)))
    comments = [line for line in text.splitlines() if line.startswith("#")]
    said = "\n".join(comments)
    assert "worker_class" not in said and "# threads" not in said  # both are converted
    assert "statsd" not in said  # both statsd settings are converted
    assert "# limit_request_line = 0\n#   0 means no limit in gunicorn" in said
    assert "#     DJANGO_SETTINGS_MODULE=mysite.settings" in said  # raw_env, to set elsewhere
    assert "helper" not in text


@pytest.mark.parametrize("value, expected", [
    ("sync", "sync"),
    ("gthread", "gthread"),
    ("gunicorn.workers.gthread.ThreadWorker", "gthread"),
    ("gunicorn.workers.sync.SyncWorker", "sync"),
])
def test_worker_classes_forkserve_has_are_converted(tmp_path: Path, value: str,
                                                    expected: str) -> None:
    text = convert(read_gunicorn_file(write(tmp_path, f"worker_class = {value!r}\n")))
    assert loaded(tmp_path, text) == {"worker_class": expected}


@pytest.mark.parametrize("value", ["gevent", "eventlet", "uvicorn.workers.UvicornWorker"])
def test_async_worker_classes_become_a_comment_naming_the_two_forkserve_has(
    tmp_path: Path, value: str
) -> None:
    text = convert(read_gunicorn_file(write(tmp_path, f"worker_class = {value!r}\n")))
    assert loaded(tmp_path, text) == {}
    assert f"# worker_class = {value!r}\n#   forkserve has sync and gthread workers" in text


def test_statsd_settings_without_an_equivalent_say_why(tmp_path: Path) -> None:
    text = convert(read_gunicorn_file(write(
        tmp_path, 'statsd_host = "unix:/run/statsd.sock"\ndogstatsd_tags = "env:prod"\n'
                  "enable_backlog_metric = True\n")))
    assert loaded(tmp_path, text) == {}
    assert "# statsd_host = 'unix:/run/statsd.sock'\n#   not converted:" in text  # UDP only
    assert "# dogstatsd_tags = 'env:prod'\n#   forkserve sends plain statsd" in text
    assert "# enable_backlog_metric = True\n#   the listen queue is a Prometheus metric" in text


def test_hooks_are_listed_with_their_lines_and_where_to_move_them(tmp_path: Path) -> None:
    found = read_gunicorn_file(write(tmp_path, REALISTIC))
    assert found.hooks == {"post_fork": 29, "when_ready": 33}
    assert "post_fork" not in found.settings
    text = convert(found)
    assert "post_fork (line 29), when_ready (line 33)" in text
    assert '#   hooks = "serving_hooks"' in text


def test_empty_config_gives_a_file_of_defaults(tmp_path: Path) -> None:
    text = convert(read_gunicorn_file(write(tmp_path, "")))
    assert loaded(tmp_path, text) == {}
    assert "sets no gunicorn setting" in text


@pytest.mark.parametrize(
    "source, line, error",
    [
        ("workers = 2\nworkers = workers // 0\n", 2, "ZeroDivisionError: integer division"),
        ("import no_such_module_here\n", 1, "ModuleNotFoundError"),
        ("bind = ['127.0.0.1:8000'\n", 1, "SyntaxError"),
        ("raise SystemExit(3)\n", 1, "SystemExit: 3"),
    ],
)
def test_broken_config_is_one_line_naming_file_and_line(
    tmp_path: Path, source: str, line: int, error: str
) -> None:
    path = write(tmp_path, source)
    with pytest.raises(ConfigError) as caught:
        read_gunicorn_file(path)
    message = str(caught.value)
    assert message.startswith(f"cannot read {path}: line {line}: {error}")
    assert "\n" not in message
    assert caught.value.exit_status == 2


def test_values_forkserve_would_refuse_become_comments(tmp_path: Path) -> None:
    text = convert(read_gunicorn_file(write(tmp_path, "workers = 0\nloglevel = 'loud'\n")))
    assert loaded(tmp_path, text) == {}
    assert "# workers = 0\n#   not converted: workers" in text
    assert "# loglevel = 'loud'\n#   not converted: log_level" in text


def test_every_gunicorn_setting_is_accounted_for() -> None:
    """The table knows gunicorn's settings (checked against gunicorn when it is installed)."""
    for name, eq in GUNICORN_SETTINGS.items():
        if eq.kind is Kind.SETTING:
            assert eq.forkserve in load({}, {})[1], name
        elif eq.kind in (Kind.NONE, Kind.PLANNED):
            assert eq.why, name
    gunicorn_config = pytest.importorskip("gunicorn.config")
    known = {s.name for s in gunicorn_config.KNOWN_SETTINGS}
    assert known <= set(GUNICORN_SETTINGS), sorted(known - set(GUNICORN_SETTINGS))


def test_default_file_is_gunicorns() -> None:
    assert DEFAULT_FILE == cli.DEFAULT_GUNICORN_FILE == "gunicorn.conf.py"


def test_tls_identity_paths_and_proxies_are_mapped(tmp_path: Path) -> None:
    import os
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name  # user and group must exist to be loaded
    source = f'''\
bind = "127.0.0.1:8443"
certfile = "/etc/ssl/site.pem"
keyfile = "/etc/ssl/site.key"
ca_certs = "/etc/ssl/clients.pem"
cert_reqs = 2
ciphers = "ECDHE+AESGCM"
user = {user!r}
group = {os.getgid()}
umask = 0
pythonpath = "/srv/app,/srv/lib"
chdir = "/srv/app"
proxy_protocol = "v2"
proxy_allow_ips = "10.0.0.1"
reload_extra_files = ["templates/a.html"]
wsgi_app = "mysite.wsgi:application"
proc_name = "mysite"
pidfile = "/run/mysite.pid"
daemon = False
reuse_port = True
backlog = 512
limit_request_field_size = 4096
'''
    text = convert(read_gunicorn_file(write(tmp_path, source)))
    assert loaded(tmp_path, text) == {
        "bind": ["127.0.0.1:8443"],
        "certfile": "/etc/ssl/site.pem",
        "keyfile": "/etc/ssl/site.key",
        "ca_certs": "/etc/ssl/clients.pem",
        "cert_reqs": 2,
        "ciphers": "ECDHE+AESGCM",
        "user": user,
        "group": str(os.getgid()),
        "umask": 0,
        "pythonpath": ["/srv/app", "/srv/lib"],
        "chdir": "/srv/app",
        "proxy_protocol": True,
        "proxy_allow_ips": ["10.0.0.1"],
        "reload_extra_files": ["templates/a.html"],
        "app": "mysite.wsgi:application",
        "proc_name": "mysite",
        "pidfile": "/run/mysite.pid",
        "daemon": False,
        "reuse_port": True,
        "backlog": 512,
        "limit_request_field_size": 4096,
    }

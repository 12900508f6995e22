"""Start-up cost: what the master loads before it can fork its first worker.

Every module imported before the fork is paid by every start (and its pages by
the master). These are the heavy ones that only some configurations need;
each is imported where that configuration is handled.
"""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest

from forkserve.config import CERT_REQS

# module -> what needs it
LAZY = {
    "ssl": "--certfile (forkserve.tls.make_context)",
    "tomllib": "a config file (forkserve.config._read_toml)",
    "ctypes": "--reload (forkserve.reloader), rescuing a frozen worker (forkserve.rescue)",
    "difflib": "a misspelt setting (forkserve.config.suggest)",
    "json": "--print-config (forkserve.config.show_value), --log-format json (forkserve.log)",
    "prometheus_client": "--metrics-bind, PROMETHEUS_MULTIPROC_DIR (forkserve.metrics)",
    "email": "nothing: the Date header is formatted by hand",
}


def test_serving_path_does_not_import_heavy_optional_modules() -> None:
    code = (
        "import sys\n"
        "import forkserve.cli, forkserve.arbiter, forkserve.worker\n"
        "from forkserve.config import Config\n"
        "from forkserve.connection import settings_from\n"
        "settings_from(Config(app='x:y'))\n"
        f"print(' '.join(m for m in {sorted(LAZY)!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = done.stdout.split()
    assert loaded == [], {m: LAZY[m] for m in loaded}


def test_cert_reqs_numbers_are_ssl_verify_modes() -> None:
    assert CERT_REQS == {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                         "required": ssl.CERT_REQUIRED}


def _loads_httptools(http: str) -> bool:
    code = (
        "import sys\n"
        "import forkserve.cli, forkserve.arbiter, forkserve.worker\n"
        "from forkserve.config import Config\n"
        "from forkserve.connection import settings_from\n"
        f"settings_from(Config(app='x:y', http={http!r}))\n"
        "print('httptools' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip() == "True"


def test_httptools_is_imported_only_when_it_serves() -> None:
    pytest.importorskip("httptools")
    assert not _loads_httptools("h11")
    assert _loads_httptools("httptools")
    assert _loads_httptools("auto")

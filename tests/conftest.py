"""Shared test configuration: the repo root on sys.path so `tests.support` imports.

`http_parser` runs a module's server under each request parser (--http h11
and --http httptools): the request-path tests take it, lifecycle tests do not.
TEST_FORKSERVE_HTTP=h11 (or httptools) runs every other server of the suite
under that parser too (`tests.support.Server`).
`worker_threads` runs a module's servers with sync workers, then with
--threads 4: the hardening and lifecycle tests take it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
APPS = ROOT / "tests" / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))

HTTPTOOLS_MISSING = importlib.util.find_spec("httptools") is None
HTTP_PARSERS = [
    "h11",
    pytest.param("httptools", marks=pytest.mark.skipif(
        HTTPTOOLS_MISSING, reason="httptools is not installed (pip install 'forkserve[fast]')")),
]


@pytest.fixture(scope="module", params=HTTP_PARSERS)
def http_parser(request: pytest.FixtureRequest) -> str:
    """`h11`, then `httptools`: the --http of the module's server."""
    param: str = request.param
    return param


@pytest.fixture(scope="module", params=[1, 4], ids=["sync", "threads4"])
def worker_threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """Sync workers, then --threads 4, for every server a module starts.

    A module opts in with `pytest.mark.usefixtures("worker_threads")`; a
    module-scoped server fixture there takes `worker_threads` too, so it is
    started once per variant instead of shared between them. Servers whose
    test chose its own worker (--threads, -k) keep that choice.
    """
    from tests import support

    support.worker_threads = request.param
    try:
        yield request.param
    finally:
        support.worker_threads = 1

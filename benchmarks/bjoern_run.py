"""bjoern with N worker processes: the C ceiling of the benchmark suite.

    python -m benchmarks.bjoern_run MODULE:APP --port PORT [--workers N]

bjoern (libev and a C HTTP parser, one process, one request at a time) has no
process manager: this binds once with `bjoern.listen`, forks N children that
each run `bjoern.run()` on the shared socket, and kills them on SIGTERM.
Built only where libev's headers are installed (Debian: libev-dev).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import bjoern

from benchmarks.client import HOST
from benchmarks.h11_floor import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", help="MODULE:APP")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    app = load(args.app)
    bjoern.listen(app, HOST, args.port)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                bjoern.run()
            finally:
                os._exit(1)
        children.append(pid)

    def stop(signum: int, frame: Any) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while children:
        pid, _status = os.wait()
        if pid in children:  # a child died: no respawning here
            stop(signal.SIGTERM, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

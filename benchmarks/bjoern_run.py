"""bjoern with N worker processes: the C ceiling of the benchmark suite.

    python -m benchmarks.bjoern_run MODULE:APP --port PORT [--workers N]

bjoern (libev and a C HTTP parser, one process, one request at a time) has no
process manager: this binds once with `bjoern.listen`, forks N children that
each run `bjoern.run()` on the shared socket, and kills them on SIGTERM.
Built only where libev's headers are installed (Debian: libev-dev).
"""

from __future__ import annotations

import sys

import bjoern

from benchmarks.client import HOST
from benchmarks.h11_floor import floor_args, fork_and_wait, load


def main(argv: list[str] | None = None) -> int:
    args = floor_args(argv, __doc__)
    app = load(args.app)
    bjoern.listen(app, HOST, args.port)
    return fork_and_wait(args.workers, bjoern.run)

if __name__ == "__main__":
    sys.exit(main())

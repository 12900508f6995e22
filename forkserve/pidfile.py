"""The master's pidfile (`-p/--pid`): written atomically, removed on exit.

Runs in the master only. Atomic (write a temporary file beside it, then
rename) so a reader such as `kill -HUP $(cat forkserve.pid)` never sees a
half-written number.
"""

from __future__ import annotations

import os

from forkserve.errors import ConfigError


def read_pid(path: str) -> int:
    """The pid in `path`, or 0 when there is none (missing file, garbage)."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _is_forkserve(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"forkserve" in f.read()
    except OSError:
        return False


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def create(self, pid: int) -> None:
        """Write `pid`, refusing when the file names another running forkserve."""
        other = read_pid(self.path)
        if other and other != pid and _is_forkserve(other):
            raise ConfigError(f"--pid {self.path}: forkserve is already running as pid {other}")
        directory, name = os.path.split(self.path)
        tmp = os.path.join(directory, f".{name}.{pid}.tmp")
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(f"{pid}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ConfigError(f"--pid {self.path}: {exc.strerror}") from None

    def rename(self, path: str) -> None:
        """Move the file (USR2: FILE -> FILE.oldbin, and back if the new master dies)."""
        try:
            os.replace(self.path, path)
        except OSError:
            pass  # someone removed it: nothing to keep track of
        self.path = path

    def remove(self, pid: int) -> None:
        """Remove the file if it still names `pid` (not a newer master's file)."""
        if read_pid(self.path) == pid:
            try:
                os.unlink(self.path)
            except OSError:
                pass

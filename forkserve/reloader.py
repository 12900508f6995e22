"""`--reload`: notice that the app's source files changed (master side, development).

The master compares the size and mtime of every watched file with what it
saw last time. What is watched: every `*.py` under the app's directories (the
working directory after `--chdir`, and `--pythonpath`), skipping hidden
directories, `__pycache__`, `node_modules` and virtualenvs, plus the files
matching the `--reload-extra-file` globs.

When Linux inotify is available (through libc, no extra dependency), the
master sleeps on its fd and rescans only when something in a watched
directory changed; otherwise it rescans once a second (stat polling).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

POLL_INTERVAL = 1.0  # seconds between rescans without inotify
# With inotify, rescan this long after the first event: an editor's save is
# often several writes (truncate, write, rename), and one reload should follow.
SETTLE = 0.2
SKIP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages"})

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
              | IN_CREATE | IN_DELETE)

Snapshot = dict[str, tuple[int, int]]


class Inotify:
    """The few libc inotify calls we need; `Inotify.open()` is None where there is none."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self.libc = libc
        self.fd = fd
        self.watched: set[str] = set()

    @classmethod
    def open(cls) -> Inotify | None:
        name = ctypes.util.find_library("c")
        if not name:
            return None
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        return cls(libc, fd) if fd >= 0 else None

    def watch(self, directory: str) -> None:
        if directory in self.watched:
            return
        if self.libc.inotify_add_watch(self.fd, os.fsencode(directory), WATCH_MASK) >= 0:
            self.watched.add(directory)

    def drain(self) -> bool:
        """Read the pending events away; True if there were any."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return seen
            if not data:
                return seen
            seen = True

    def close(self) -> None:
        os.close(self.fd)


class Reloader:
    """Master side: which watched files changed since the last look."""

    def __init__(self, roots: list[str], extra_globs: list[str],
                 use_inotify: bool = True) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.extra_globs = extra_globs
        self.inotify = Inotify.open() if use_inotify else None
        self.snapshot = self.scan()
        self.next_poll = 0.0
        self.settle_until = 0.0  # inotify: an event was seen, rescan from then on

    def fileno(self) -> int | None:
        """The inotify fd to wait on, or None (then call `changed()` every POLL_INTERVAL)."""
        return self.inotify.fd if self.inotify is not None else None

    def scan(self) -> Snapshot:
        files: Snapshot = {}
        for root in self.roots:
            for directory, dirs, names in os.walk(root):
                dirs[:] = [d for d in dirs if not _skipped(directory, d)]
                if self.inotify is not None:
                    self.inotify.watch(directory)
                for name in names:
                    if name.endswith(".py"):
                        _stat_into(files, os.path.join(directory, name))
        for pattern in self.extra_globs:
            for path in glob.glob(pattern, recursive=True):
                _stat_into(files, os.path.abspath(path))
                if self.inotify is not None:
                    self.inotify.watch(os.path.dirname(os.path.abspath(path)))
        return files

    def changed(self, now: float) -> list[str]:
        """The watched files added, changed or removed since the last call."""
        if self.inotify is not None:
            if self.inotify.drain() and not self.settle_until:
                self.settle_until = now + SETTLE
            if not self.settle_until or now < self.settle_until:
                return []
            self.settle_until = 0.0
        elif now < self.next_poll:
            return []
        self.next_poll = now + POLL_INTERVAL
        new = self.scan()
        old, self.snapshot = self.snapshot, new
        return sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()


def _skipped(parent: str, name: str) -> bool:
    if name.startswith(".") or name in SKIP_DIRS:
        return True
    return os.path.exists(os.path.join(parent, name, "pyvenv.cfg"))  # a virtualenv


def _stat_into(files: Snapshot, path: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    files[path] = (st.st_mtime_ns, st.st_size)

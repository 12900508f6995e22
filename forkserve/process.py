"""Process setup in the master, before the first fork: privileges and daemonizing.

Runs in the master only, after the sockets are bound (so a root-started server
can listen on a port below 1024) and before any worker is forked (so no worker
ever runs the app as root).
"""

from __future__ import annotations

import grp
import math
import os
import pwd
import resource
from dataclasses import dataclass

from forkserve.errors import ConfigError


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    user: str  # for initgroups: supplementary groups come from the user's name


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """Look up --user/--group (names or numbers); None when neither is set."""
    if not user and not group:
        return None
    try:
        if user:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        else:
            pw = pwd.getpwuid(os.getuid())
    except (KeyError, OverflowError):
        raise ConfigError(f"user (--user): no such user {user!r}") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"group (--group): no such group {group!r}") from None
    return Identity(pw.pw_uid, gid, pw.pw_name)


def drop_privileges(who: Identity) -> None:
    """Become `who` for good: groups first, then gid, then uid (the reverse would fail)."""
    if (os.getuid(), os.getgid()) == (who.uid, who.gid):
        return
    try:
        if os.getuid() == 0:
            os.initgroups(who.user, who.gid)
        os.setgid(who.gid)
        os.setuid(who.uid)
    except PermissionError:
        raise ConfigError(
            f"cannot switch to uid {who.uid} gid {who.gid}: only root can (running as uid "
            f"{os.getuid()})"
        ) from None
    # Paths resolved later (log reopen, the app's own files) must not see root's HOME.
    os.environ["HOME"] = pwd.getpwuid(who.uid).pw_dir


def daemonize() -> None:
    """Detach: fork twice, start a new session, point stdio at /dev/null.

    For a plain shell only. Under systemd, supervisord, Docker or Kubernetes
    the supervisor must see the server in the foreground; a daemonized server
    looks to them like a process that exited at once.
    """
    if os.fork():
        os._exit(0)  # the parent returns to the shell at once
    os.setsid()
    if os.fork():
        os._exit(0)  # the session leader goes, so we can never regain a terminal
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        # The error log may have been opened on stderr; keep a file there.
        if not _is_regular_file(fd):
            os.dup2(null, fd)
    os.close(null)


def _is_regular_file(fd: int) -> bool:
    try:
        import stat

        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at worker start).

    Every parked connection is a descriptor; the common soft default of 1024
    would make --worker-connections=1000 plus the app's own files fail with
    EMFILE long before the kernel's real (hard) limit.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass  # not allowed here (e.g. hard is unlimited but capped by the kernel)


def memory_reason(mib: float, limit: int) -> str:
    """Why a worker over --max-worker-memory is recycled, for the log.

    The resident size is rounded up to 0.1 MiB: a worker 20 KiB over a
    100 MiB limit reads "uses 100.1 MiB", never "uses 100.0 MiB", which
    would look like the limit itself (seen in a test's log line).
    """
    return f"uses {math.ceil(mib * 10) / 10:.1f} MiB (--max-worker-memory {limit})"

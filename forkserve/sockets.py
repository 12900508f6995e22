"""Listening sockets: bind them once in the master, before any fork.

Workers inherit the bound sockets; they never bind anything themselves.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import stat
import struct
import sys
from collections.abc import Collection, MutableMapping
from dataclasses import dataclass

from forkserve.errors import BindError


@dataclass
class Listener:
    """One bound, listening socket and how to show it to people."""

    sock: socket.socket
    bind: str  # the --bind text it came from
    is_unix: bool
    tls: bool = False  # served with --certfile: shown as https://
    # Bound from an address by this master, or by the old master of a USR2
    # upgrade (OWNED_FD_MARK): no other program holds it, so a full stop may
    # close its door early (refuse_new_connections) when no other master
    # shares it. False for sockets passed in by systemd or a parent (fd://),
    # which may keep using them after we exit.
    owned: bool = False

    @property
    def url(self) -> str:
        if self.is_unix:
            return f"unix:{self.sock.getsockname()}"
        host, port = self.sock.getsockname()[:2]
        if self.sock.family == socket.AF_INET6:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def close(self, unlink: bool = True) -> None:
        path = self.sock.getsockname() if self.is_unix else None
        self.sock.close()
        if unlink and isinstance(path, str) and path:
            try:
                os.unlink(path)
            except OSError:
                pass

    def refuse_new_connections(self) -> str:
        """Master, full stop only: no new connection completes into the backlog from now on.

        What is already queued stays, for the workers' last accepts. Returns ""
        when done, else why not (the caller then stops as before).

        Without this, a connection the kernel completes after the workers'
        last accept waits in the backlog until the port closes and is then
        reset, after its client sent a request into it (issue 11). Refused
        at the door instead, the client sees "connection refused" before it
        sent anything, which is always safe to retry elsewhere.

        TCP: a socket filter that drops new handshakes (a SYN without ACK),
        so the client's SYN goes unanswered and is retransmitted; when the
        port has closed, the retransmission is refused. Every other segment
        passes: a handshake already under way completes into the backlog
        and is served (a drop-everything `ret #0` would drop its first data
        segment, and the client would be reset after sending its request;
        measured, docs/signals.md). Connections accepted afterwards inherit
        the filter from the listener, which only ever drops a SYN on them.
        `listen(0)` and `shutdown(SHUT_RD)` were measured too: the first
        still completes one connection whenever the queue is empty, the
        second resets everything queued.

        Unix: socket filters do not see connect(2) on a unix stream socket,
        but `shutdown(SHUT_RD)` makes the kernel refuse new connects at once
        while the queued ones can still be accepted.
        """
        try:
            if self.is_unix:
                self.sock.shutdown(socket.SHUT_RD)
            elif sys.platform.startswith("linux"):
                _attach_filter(self.sock, REFUSE_SYN_FILTER)
            else:
                return "needs Linux"
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""


# Classic BPF (Documentation/networking/filter.rst) for a TCP listener: the
# kernel runs it on every segment for the socket, with the TCP header at
# offset 0. Byte 13 holds the flags; keep SYN (0x02) and ACK (0x10).
_BPF_LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = packet[k]
_BPF_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K: A &= k
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K: A == k ? skip jt : skip jf
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: keep k bytes of the packet (0 = drop)
TCP_FLAGS_OFFSET = 13
TCP_SYN, TCP_ACK = 0x02, 0x10
REFUSE_SYN_FILTER = (
    (_BPF_LDB_ABS, 0, 0, TCP_FLAGS_OFFSET),
    (_BPF_AND_K, 0, 0, TCP_SYN | TCP_ACK),
    (_BPF_JEQ_K, 0, 1, TCP_SYN),  # a new handshake: fall through to drop
    (_BPF_RET_K, 0, 0, 0),
    (_BPF_RET_K, 0, 0, 0xFFFFFFFF),  # anything else: keep it whole
)
# <asm-generic/socket.h>, used by every architecture CPython is commonly
# built for; the socket module does not export it.
SO_ATTACH_FILTER = 26


def _attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    """setsockopt(SO_ATTACH_FILTER) with a struct sock_fprog pointing at `program`."""
    code = array.array("B", b"".join(struct.pack("HBBI", *insn) for insn in program))
    address, _length = code.buffer_info()  # the kernel copies the program during the call
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HP", len(program), address))


# sock_diag(7): ask the kernel for the TCP connections in a state, here the
# handshakes it has answered (SYN-ACK) but not finished (TCP_SYN_RECV), which
# is where a connection waits between its SYN and its client's ACK (or, under
# TCP_DEFER_ACCEPT, its client's first bytes).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
TCP_SYN_RECV = 3
INET_DIAG_SOCKID_SIZE = 48  # sport, dport, src[4], dst[4], interface, cookie[2]
DIAG_SPORT = struct.Struct("!H")  # at offset 4 of struct inet_diag_msg: network order


def handshakes_under_way(ports: Collection[int]) -> int:
    """TCP handshakes toward local `ports` that the kernel has not finished; -1 if unknown.

    Linux only (sock_diag over netlink; no privileges needed). One dump per
    address family; the kernel walks its whole connection table for it
    (2.5-5 ms with 8,400 TCP sockets in it, measured), so call it rarely:
    here, at a stop.
    """
    if not ports or not sys.platform.startswith("linux"):
        return -1
    count = 0
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            for family in (socket.AF_INET, socket.AF_INET6):
                request = (struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0,
                                       1 << TCP_SYN_RECV) + bytes(INET_DIAG_SOCKID_SIZE))
                nl.sendto(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(request),
                                            SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                                            family, 0) + request, (0, 0))
                count += _count_dump(nl, ports)
    except OSError:
        return -1
    return count


def _count_dump(nl: socket.socket, ports: Collection[int]) -> int:
    """Read one sock_diag dump to its end: the entries whose local port is in `ports`."""
    count = 0
    while True:
        data = nl.recv(1 << 16)
        offset = 0
        while offset + NLMSG_HEADER.size <= len(data):
            length, kind, _flags, _seq, _pid = NLMSG_HEADER.unpack_from(data, offset)
            if kind == NLMSG_DONE:
                return count
            if kind == NLMSG_ERROR or length < NLMSG_HEADER.size:
                raise OSError("sock_diag refused the request")
            (port,) = DIAG_SPORT.unpack_from(data, offset + NLMSG_HEADER.size + 4)
            count += port in ports
            offset += (length + 3) & ~3  # NLMSG_ALIGN
        if not data:
            raise OSError("sock_diag closed the dump")


def parse_address(bind: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """`HOST:PORT`, `[IPv6]:PORT`, `HOST` (port 8000) or `unix:PATH` -> family, address."""
    if bind.startswith("unix:"):
        return socket.AF_UNIX, bind[5:]
    if bind.startswith("["):
        host, _, rest = bind[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 8000
        return socket.AF_INET6, (host, port)
    host, sep, port_text = bind.rpartition(":")
    if not sep:
        host, port_text = bind, "8000"
    port = int(port_text)
    if not host:
        host = "0.0.0.0"
    if ":" in host:
        return socket.AF_INET6, (host, port)
    return socket.AF_INET, (host, port)


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse if something listens there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"cannot bind unix:{path}: a file that is not a socket is in the way")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise BindError(f"cannot bind unix:{path}: another server is listening there")


# Permission bits of a unix socket file when the caller does not say (the
# --unix-socket-mode default): connectable by every local user, as gunicorn's.
UNIX_SOCKET_MODE = 0o666


def bind_one(bind: str, backlog: int, reuse_port: bool = False,
             unix_mode: int = UNIX_SOCKET_MODE) -> Listener:
    if bind.startswith("fd://"):
        fd = int(bind[5:])
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise BindError(f"cannot use {bind}: {exc.strerror}") from None
        sock.listen(backlog)
        return Listener(sock, bind, sock.family == socket.AF_UNIX)
    family, address = parse_address(bind)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            assert isinstance(address, str)
            _remove_stale_unix_socket(address)
            _bind_unix(sock, address, unix_mode)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Wake a worker only once the request's first bytes are in: an idle
            # connect costs no worker wake-up (Linux; ignored elsewhere).
            if hasattr(socket, "TCP_DEFER_ACCEPT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
            sock.bind(address)
        sock.listen(backlog)
    except BindError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        raise BindError(f"cannot bind {bind}: {reason}") from None
    sock.set_inheritable(True)
    return Listener(sock, bind, family == socket.AF_UNIX, owned=True)


def _bind_unix(sock: socket.socket, path: str, mode: int) -> None:
    """Create the socket file with exactly `mode`: bind(2) applies the umask, so set
    one for the call (master, pre-fork: single-threaded) instead of a chmod after,
    which would leave the file connectable by anyone for a moment."""
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)


SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets start at fd 3


def systemd_listeners(env: MutableMapping[str, str], pid: int) -> list[Listener]:
    """Adopt the sockets systemd passed (socket activation), or [] when there are none.

    LISTEN_PID must name this process: the variables leak into children, and a
    child must not take its parent's sockets. Once adopted, the variables are
    removed from `env` (sd_listen_fds' unset_environment) so the app's own
    subprocesses do not try to adopt them too.
    """
    if env.get("LISTEN_PID") != str(pid) or not env.get("LISTEN_FDS"):
        return []
    try:
        count = int(env["LISTEN_FDS"])
    except ValueError:
        raise BindError(f"LISTEN_FDS is not a number: {env['LISTEN_FDS']!r}") from None
    names = env.get("LISTEN_FDNAMES", "").split(":")
    listeners = []
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise BindError(f"cannot use socket fd {fd} from systemd: {exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM:
            raise BindError(f"socket fd {fd} from systemd is not a stream socket "
                            "(ListenStream= in the .socket unit)")
        name = names[index] if index < len(names) and names[index] else ""
        if sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket,
                                                                        "TCP_DEFER_ACCEPT"):
            # As for our own binds: wake a worker only once the request's bytes are in.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        sock.set_inheritable(True)
        listeners.append(Listener(sock, f"fd://{fd}" + (f" ({name})" if name else ""),
                                  sock.family == socket.AF_UNIX))
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(var, None)
    return listeners


def chown_unix_sockets(listeners: list[Listener], uid: int, gid: int) -> None:
    """Give the unix socket files we created to the user the server runs as."""
    for listener in listeners:
        if listener.is_unix and listener.bind.startswith("unix:"):
            os.chown(listener.bind[5:], uid, gid)


def bind_all(binds: list[str], backlog: int, reuse_port: bool = False,
             unix_mode: int = UNIX_SOCKET_MODE) -> list[Listener]:
    """Bind every address or none: on a failure, close what was already bound."""
    listeners: list[Listener] = []
    try:
        for bind in binds:
            listeners.append(bind_one(bind, backlog, reuse_port, unix_mode))
    except BindError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


# A master re-executing itself on USR2 passes its listening sockets to the new
# master as open fds named here (gunicorn's GUNICORN_FD; nginx's NGINX).
REEXEC_FDS_ENV = "FORKSERVE_FDS"
# Before an fd in that list: the socket was bound by a forkserve master from an
# address (Listener.owned), so the new master may close its door on a full
# stop once the old master is gone. A sign because int() has always accepted
# one: an older forkserve reads the list unchanged (a USR2 downgrade), and a
# list from an older forkserve, without signs, is adopted as not ours (safe).
OWNED_FD_MARK = "+"


def reexec_fds(listeners: list[Listener]) -> str:
    """REEXEC_FDS_ENV's value for a new master: "+3,4" (3 ours, 4 passed in)."""
    return ",".join(f"{OWNED_FD_MARK if lst.owned else ''}{lst.sock.fileno()}"
                    for lst in listeners)


def inherited_fds(env: MutableMapping[str, str]) -> list[tuple[int, bool]]:
    """The listening fds a re-exec'ing master passed us, with whether they are ours.

    Taken out of `env`, so that neither the workers nor a later re-exec see
    stale numbers.
    """
    text = env.pop(REEXEC_FDS_ENV, "")
    try:
        return [(int(part), part.strip().startswith(OWNED_FD_MARK))
                for part in text.split(",") if part.strip()]
    except ValueError:
        raise BindError(f"{REEXEC_FDS_ENV}={text!r} is not a list of fds") from None


def adopt_fds(fds: list[tuple[int, bool]]) -> list[Listener]:
    """Listening sockets inherited as open fds: the same accept queues, nothing rebound.

    So no connection is refused while an old master hands over to a new one.
    """
    listeners = []
    for fd, owned in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise BindError(f"cannot use inherited fd {fd}: {exc.strerror}") from None
        sock.set_inheritable(True)
        is_unix = sock.family == socket.AF_UNIX
        listeners.append(Listener(sock, f"unix:{sock.getsockname()}" if is_unix else f"fd://{fd}",
                                  is_unix, owned=owned))
    return listeners

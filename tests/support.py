"""Run real forkserve processes from tests.

Every server is started in its own session (process group) on port 0, its
error log goes to a file (never a pipe that could fill up and block it), and
`stop()` / the context manager end it by pid, then kill the whole group, so no
test leaves a process behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
LISTEN_RE = re.compile(r"Listening at: (\S+)")
BOOT_DEADLINE = 20.0
# Not FORKSERVE_*: the servers inherit the environment, and forkserve refuses
# FORKSERVE_ variables that are not settings.
TEST_HTTP_ENV = "TEST_FORKSERVE_HTTP"
# Run servers with the threaded worker: `--threads N` unless the test gave its
# own worker choice. Set by the `worker_threads` fixture (tests/conftest.py),
# which runs a whole module once more this way; 1 = the sync worker (the default).
worker_threads = 1


def threaded() -> bool:
    """True while a module runs its --threads variant (the `worker_threads` fixture)."""
    return worker_threads > 1


class Server:
    """A forkserve process under a test's control."""

    def __init__(
        self,
        app: str,
        *args: str,
        bind: Sequence[str] | None = ("127.0.0.1:0",),
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        wait_workers: int | None = None,
        command: Sequence[str] | None = None,
        http: str | None = None,
        stdout: int | None = None,
    ) -> None:
        self.app = app
        self.args = list(args)
        # The request parser (--http): a parametrised fixture's (`http_parser`),
        # else TEST_FORKSERVE_HTTP to run every server under one parser, else
        # the server's own default (auto).
        http = http or os.environ.get(TEST_HTTP_ENV) or None
        if http:
            self.args += ["--http", http]
        if worker_threads > 1 and not {"--threads", "-k", "--worker-class"} & set(self.args):
            self.args += ["--threads", str(worker_threads)]
        self.bind = list(bind) if bind is not None else []
        self.cwd = str(cwd) if cwd is not None else str(TESTS / "apps")
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), str(TESTS / "apps"), self.env.get("PYTHONPATH", "")]
        )
        # A server that breaks PEP 3333 trips wsgiref's validator: make its warnings errors.
        self.env["PYTHONWARNINGS"] = "error::wsgiref.validate.WSGIWarning"
        self.env.pop("PORT", None)
        self.env.pop("WEB_CONCURRENCY", None)
        if env:
            self.env.update(env)
        self.wait_workers = wait_workers
        self.command = list(command) if command else [sys.executable, "-m", "forkserve"]
        # Where the server's stdout goes (an fd, e.g. a pipe's write end); stderr
        # always goes to the log file. Default: stdout goes to the log file too.
        self.stdout = stdout
        self._logfile = tempfile.NamedTemporaryFile(prefix="forkserve-test-", suffix=".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.urls: list[str] = []

    # -- lifecycle -------------------------------------------------------
    def start(self, expect_ready: bool = True) -> Server:
        argv = [*self.command, self.app, *self.args]
        for b in self.bind:
            argv += ["--bind", b]
        self.proc = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._logfile if self.stdout is None else self.stdout,
            stderr=subprocess.STDOUT if self.stdout is None else self._logfile,
            start_new_session=True,
        )
        if expect_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = BOOT_DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        want_workers = self.wait_workers
        while time.monotonic() < deadline:
            text = self.log
            self.urls = LISTEN_RE.findall(text)
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"forkserve exited with {self.proc.returncode}:\n{text}")
            if self.urls and (len(self.urls) >= max(1, len(self.bind))):
                if want_workers is None or text.count("Booted worker") >= want_workers:
                    return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"forkserve did not become ready in {timeout}s:\n{self.log}")

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` to the master and return its exit status; kill the group on overrun."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.wait_exit(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """Kill every process left in the server's group (no-op when none)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> Server:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self._logfile.close()

    # -- introspection ---------------------------------------------------
    @property
    def log(self) -> str:
        with open(self._logfile.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until `pattern` (a regex) occurs `count` times in the log."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log
            if len(rx.findall(text)) >= count:
                return text
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not seen {count}x in {timeout}s; log:\n{self.log}")

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def address(self) -> tuple[str, int]:
        m = re.match(r"https?://\[?([^\]]+?)\]?:(\d+)$", self.url)
        assert m, self.url
        return m.group(1), int(m.group(2))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """Pids of the master's live children (from /proc), oldest first."""
        kids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == self.pid and fields[0] != "Z":
                kids.append((int(fields[19]), int(entry.name)))
        return [pid for _, pid in sorted(kids)]


def fd_targets(pid: int) -> Iterator[str]:
    """What each of process `pid`'s descriptors points at (/proc/PID/fd): "socket:[N]",
    a path, ...; nothing once the process is gone, and a descriptor closed while
    being read is skipped."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in fds:
        try:
            yield os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue


@contextmanager
def serve(app: str, *args: str, **kwargs: object) -> Iterator[Server]:
    """Start forkserve on `app` and stop it when the block ends."""
    server = Server(app, *args, **kwargs)  # type: ignore[arg-type]
    with server:
        yield server


def raw_request(
    address: tuple[str, int], data: bytes, timeout: float = 5.0, read_until_close: bool = True
) -> bytes:
    """Send raw bytes, half-close, and return everything the server sends back."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        if read_until_close:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    """The status code of the first response in `response` (0 when there is none)."""
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(m.group(1)) if m else 0


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile

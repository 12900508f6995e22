"""Mixed traffic: fast keep-alive clients beside slow requests and connection-close clients.

    python -m benchmarks.mixed [--duration 8] [--repeat 2] [--workers 2] [--slow 1]
                               [--servers forkserve,gunicorn-sync,gunicorn-gthread]
                               [--tls] [--tree PATH]

Three classes of clients load one server at the same time (issue 11):

- `fast`: keep-alive connections looping on a hello-world URL, as a browser
  or an nginx upstream pool does;
- `slow`: a few connections each asking for a 1 s request in a loop (a
  report, an upstream call);
- `close`: connection-close clients, one new connection per request.

Each class's p50, p99 and worst latency and its request count are printed per
server, from interleaved runs (server after server, `--repeat` rounds). A
fast client parked behind a slow request shows up in `fast`'s p99; a server
that pins connections to busy workers shows it there first. The clients are
Python threads on blocking sockets: their own overhead is in every number,
alike for every server, so compare servers within one run, never runs on
different machines.

`--tls` serves HTTPS (a self-signed certificate made with the `openssl`
command) and the clients keep their TLS sessions; `--tree` runs forkserve
from another checkout (a before/after of a change: `git worktree add`).
"""

from __future__ import annotations

import argparse
import math
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/mixed.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import servers
from benchmarks.run import WORK_DIR

APP = "benchmarks.apps:mixed"
CLASSES = ("fast", "slow", "close")
DEFAULT_SERVERS = ("forkserve", "gunicorn-sync", "gunicorn-gthread")


@dataclass
class Mix:
    """How many clients of each class, and how slow the slow requests are."""

    fast: int = 10
    slow: int = 1
    close: int = 4
    slow_s: float = 1.0


@dataclass
class ClassResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the latencies, nearest rank; nan when empty."""
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        rank = max(1, min(len(data), math.ceil(q / 100 * len(data))))
        return data[rank - 1]


def _request(path: str, port: int, close: bool) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()


def _read_response(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """(head, bytes after the body) of one Content-Length response; raises on a close."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    return head, rest[length:]


def _client_loop(port: int, path: str, close: bool, until: float, out: ClassResult,
                 lock: threading.Lock, tls: ssl.SSLContext | None = None) -> None:
    """One client: requests on one connection (a new one after a close) until `until`."""
    request = _request(path, port, close)
    sock: socket.socket | None = None
    buf = b""
    while time.monotonic() < until:
        began = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                if tls is not None:
                    sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
                buf = b""
            sock.sendall(request)
            head, buf = _read_response(sock, buf)
        except OSError:
            with lock:
                out.errors += 1
            if sock is not None:
                sock.close()
            sock = None
            time.sleep(0.01)
            continue
        elapsed_ms = (time.perf_counter() - began) * 1000
        with lock:
            out.latencies_ms.append(elapsed_ms)
        if close or b"connection: close" in head.lower():
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def measure(port: int, mix: Mix, duration_s: float,
            tls: ssl.SSLContext | None = None) -> dict[str, ClassResult]:
    """Run every class of clients against the server on `port` for `duration_s`."""
    results = {name: ClassResult() for name in CLASSES}
    lock = threading.Lock()
    until = time.monotonic() + duration_s
    plan = ([("fast", "/", False)] * mix.fast + [("slow", f"/slow?{mix.slow_s:g}", False)]
            * mix.slow + [("close", "/", True)] * mix.close)
    threads = [threading.Thread(target=_client_loop,
                                args=(port, path, close, until, results[name], lock, tls),
                                daemon=True)
               for name, path, close in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + mix.slow_s + 30)
    return results


def format_table(rows: dict[str, dict[str, ClassResult]], mix: Mix) -> str:
    """One line per server: p50 / p99 / max in ms and the request count for each class.

    The max is where a client parked behind a slow request shows: a few
    one-second waits among thousands of fast requests stay below the p99.
    """
    header = "| server | " + " | ".join(
        f"{name} p50 / p99 / max ms (n)" for name in CLASSES) + " | errors |"
    lines = [
        f"{mix.fast} fast keep-alive clients, {mix.slow} clients looping on a "
        f"{mix.slow_s:g} s request, {mix.close} connection-close clients",
        "",
        header,
        "| --- | " + " | ".join("---:" for _ in CLASSES) + " | ---: |",
    ]
    for server, classes in rows.items():
        cells = [f"{classes[name].percentile(50):.1f} / {classes[name].percentile(99):.1f} / "
                 f"{classes[name].percentile(100):.0f} ({len(classes[name].latencies_ms)})"
                 for name in CLASSES]
        errors = sum(c.errors for c in classes.values())
        lines.append(f"| {server} | " + " | ".join(cells) + f" | {errors} |")
    return "\n".join(lines)


def tls_setup(folder: Path) -> tuple[list[str], ssl.SSLContext]:
    """A self-signed certificate: the server's arguments, and a client context trusting it."""
    cert, key = folder / "mixed-cert.pem", folder / "mixed-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(cafile=str(cert))
    return ["--certfile", str(cert), "--keyfile", str(key)], context


def merge(into: dict[str, ClassResult], more: dict[str, ClassResult]) -> None:
    for name, result in more.items():
        into[name].latencies_ms += result.latencies_ms
        into[name].errors += result.errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS))
    parser.add_argument("--slow", type=int, default=Mix.slow,
                        help="clients looping on the slow request (as many as workers: saturated)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS; clients keep sessions")
    parser.add_argument("--tree", type=Path, default=servers.REPO_ROOT,
                        help="the checkout to run the servers from (default: this one)")
    args = parser.parse_args(argv)
    mix = Mix(slow=args.slow)
    names = [n for n in args.servers.split(",") if n]
    specs = []
    for name in names:
        spec = servers.SERVERS[name]
        why = spec.missing()
        if why:
            print(f"{name}: skipped ({why})")
            continue
        specs.append(spec)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    tls: ssl.SSLContext | None = None
    if args.tls:
        extra, tls = tls_setup(WORK_DIR)
    rows: dict[str, dict[str, ClassResult]] = {
        spec.name: {name: ClassResult() for name in CLASSES} for spec in specs}
    for round_ in range(args.repeat):
        for spec in specs:
            running = servers.start(spec, APP, args.workers, WORK_DIR, tree=args.tree,
                                    extra_args=extra, tls=tls)
            try:
                merge(rows[spec.name], measure(running.port, mix, args.duration, tls))
            finally:
                servers.stop(running)
            fast = rows[spec.name]["fast"]
            print(f"round {round_ + 1}/{args.repeat} {spec.name}: fast p99 so far "
                  f"{fast.percentile(99):.1f} ms", flush=True)
    print(format_table(rows, mix))
    return 0


if __name__ == "__main__":
    sys.exit(main())

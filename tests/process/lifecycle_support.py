"""Helpers for the master-lifecycle process tests: a background load loop, log parsing."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests


@dataclass
class LoadLoop:
    """Client threads sending GET requests in a loop, each on a new connection.

    Counts successes and failures (any exception or non-200), and records the
    worker pids and app versions that answered.
    """

    url: str
    threads: int = 2
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(self.threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = requests.get(self.url, timeout=10, headers={"Connection": "close"})
                body = r.json() if r.status_code == 200 else None
            except Exception as exc:  # every failure counts, whatever its kind
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                if body is None:
                    self.failures.append(f"status {r.status_code}")
                else:
                    self.ok += 1
                    self.pids.append(body["pid"])
                    self.versions.add(str(body["version"]))

    def __enter__(self) -> LoadLoop:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def wait_for(self, requests_done: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.ok
        while self.ok - start < requests_done and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.ok - start >= requests_done, f"only {self.ok - start} requests in {timeout}s"


def wait_until(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def booted_pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"Booted worker with pid: (\d+)", log)]

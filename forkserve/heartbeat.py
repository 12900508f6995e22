"""Worker heartbeats in shared memory.

The master maps one anonymous shared region before forking; each worker owns
one slot and its serving loop writes into it: a timestamp on every loop turn,
and what request it is running. The master reads the slots to find a worker
stuck in the app (stale heartbeat) and to say what it was doing. No files, no
threads: a stuck app call simply stops the writes.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

# pid, heartbeat (monotonic), request start (monotonic, 0 = idle), requests served,
# then the request line and peer as text.
_HEAD = struct.Struct("=qddq")
_TEXT = 232
SLOT_SIZE = _HEAD.size + _TEXT  # 256 bytes
# Worker-side writes, from the heartbeat field on (offset 8). Compiled once:
# they run on every request. "s" pads the text with NULs (and cuts it to size).
_STARTED = struct.Struct(f"=ddq{_TEXT}s")  # beat, request start, requests, text
_FINISHED = struct.Struct("=ddq")  # beat, 0.0 (idle), requests
_BEAT = struct.Struct("=d")


@dataclass
class SlotView:
    pid: int
    heartbeat: float
    request_started: float
    requests: int
    request: str


class Heartbeats:
    """A fixed table of worker slots in memory shared across fork."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.mem = mmap.mmap(-1, slots * SLOT_SIZE)

    def claim(self, exclude: set[int]) -> int:
        """A free slot index (master side, before fork)."""
        for index in range(self.slots):
            if index not in exclude:
                return index
        raise RuntimeError("no free heartbeat slot")

    def reset(self, index: int, pid: int) -> None:
        """Master side, right after fork: a fresh slot that counts as just-beaten."""
        _HEAD.pack_into(self.mem, index * SLOT_SIZE, pid, time.monotonic(), 0.0, 0)
        self.mem[index * SLOT_SIZE + _HEAD.size : (index + 1) * SLOT_SIZE] = b"\0" * _TEXT

    def read(self, index: int) -> SlotView:
        offset = index * SLOT_SIZE
        pid, beat, started, requests = _HEAD.unpack_from(self.mem, offset)
        raw = bytes(self.mem[offset + _HEAD.size : offset + SLOT_SIZE])
        return SlotView(pid, beat, started, requests, raw.split(b"\0", 1)[0].decode("latin-1"))

    def writer(self, index: int) -> SlotWriter:
        return SlotWriter(self.mem, index)


class SlotWriter:
    """Worker side: the only writer of one slot."""

    __slots__ = ("mem", "offset", "requests")

    def __init__(self, mem: mmap.mmap, index: int) -> None:
        self.mem = mem
        self.offset = index * SLOT_SIZE
        self.requests = 0

    def booted(self, pid: int, now: float) -> None:
        """The app is loaded and the loop is about to serve: the master sees pid != 0."""
        struct.pack_into("=qd", self.mem, self.offset, pid, now)

    def beat(self, now: float) -> None:
        _BEAT.pack_into(self.mem, self.offset + 8, now)

    def request_started(self, now: float, text: bytes) -> None:
        _STARTED.pack_into(self.mem, self.offset + 8, now, now, self.requests, text[: _TEXT - 1])

    def request_finished(self, now: float) -> None:
        self.requests += 1
        _FINISHED.pack_into(self.mem, self.offset + 8, now, 0.0, self.requests)

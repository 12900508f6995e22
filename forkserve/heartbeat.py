"""Worker heartbeats in shared memory.

The master maps one anonymous shared region before forking; each worker owns
one slot and its serving loop writes into it: a timestamp on every loop turn,
and what request it is running. The master reads the slots to find a worker
stuck in the app (stale heartbeat) and to say what it was doing. No files, no
threads: a stuck app call simply stops the writes.

Beside the slots, a table of one int32 per slot says how many connections
each worker holds while it accepts (the value is that count plus one; 0 means
not accepting: booting, draining, gone). Workers read it to spread keep-alive
connections evenly (`Peers`): the kernel's wake-up order is not fair.

A third table, one byte per descriptor number per slot, says which of the
worker's connections the master may take out of it if the worker freezes
(`movable_table`, `read_movable`; forkserve.rescue on the master's side).
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass, field

# pid, heartbeat (monotonic), request start (monotonic, 0 = idle), requests served,
# then the request line and peer as text.
_HEAD = struct.Struct("=qddq")
_TEXT = 232
SLOT_SIZE = _HEAD.size + _TEXT  # 256 bytes: a sync worker's whole slot
# A threaded worker's per-thread records follow its slot head: start
# (monotonic, 0 = this thread is idle), then the request line and peer.
_RECORD_TEXT = 120
_RECORD = struct.Struct(f"=d{_RECORD_TEXT}s")  # 128 bytes
# Records per slot. The table is mapped once, before the first fork, and
# cannot grow under running workers; a HUP may raise --threads past what was
# mapped, and the threads beyond it are then not shown (the worker still times
# them out itself). Untouched pages of an anonymous map cost no memory.
MIN_RECORDS = 16
# Worker-side writes, from the heartbeat field on (offset 8). Compiled once:
# they run on every request. "s" pads the text with NULs (and cuts it to size).
_STARTED = struct.Struct(f"=ddq{_TEXT}s")  # beat, request start, requests, text
_FINISHED = struct.Struct("=ddq")  # beat, 0.0 (idle), requests
_BEAT = struct.Struct("=d")
_LOAD = struct.Struct("=i")
# A peer counts for balancing only while it shows it is serving: it beat this
# recently (an idle worker beats every 0.25 s), and it is not in the middle
# of a request that has taken this long (it accepts nothing until it returns).
PEER_STALE_S = 1.0
PEER_BUSY_S = 0.05
# Movable connections (issue 11: a stopped worker's waiting clients are
# rescued, not reset). The master cannot tell from outside which of a
# worker's sockets have had nothing read into user space; the worker says so
# here, one byte per descriptor number: NOT_MOVABLE, or the listener the
# connection came from and whether it is fresh (accepted, never read) or
# kept (between two requests, its buffer empty). Each record is one byte,
# written with one store by the thread that owns the connection, so a reader
# never sees half of one; what a freeze *between* a store and the step it
# guards could leave is covered by their order: a record is cleared before
# the connection is read, closed or handed off, and set only once it is
# parked clean (a worker frozen in between leaves it NOT_MOVABLE: skipped).
# The master also reads the table before it takes the copies and again after
# the worker is dead, and trusts only records that did not change
# (`unchanged`): a worker woken (SIGCONT) while the master worked is not
# trusted either. Descriptors at or past MOVABLE_FDS are never published:
# they are not rescued (a worker holding 16,000 connections).
MOVABLE_FDS = 16384  # bytes per slot; untouched pages of the map cost nothing
NOT_MOVABLE = 0
MAX_MOVABLE_LISTENER = 126  # so a record fits a byte (254 at most)


@dataclass
class SlotView:
    pid: int
    heartbeat: float
    request_started: float
    requests: int
    request: str
    # A threaded worker's requests in flight: (started, request line), oldest first.
    in_flight: list[tuple[float, str]] = field(default_factory=list)


class Heartbeats:
    """A fixed table of worker slots in memory shared across fork."""

    def __init__(self, slots: int, records: int = MIN_RECORDS) -> None:
        self.slots = slots
        self.records = records
        self.slot_size = SLOT_SIZE + records * _RECORD.size
        self.mem = mmap.mmap(-1, slots * self.slot_size)
        self.loads = mmap.mmap(-1, slots * _LOAD.size)  # zero-filled: nobody accepts
        self.movable = mmap.mmap(-1, slots * MOVABLE_FDS)  # zero-filled: nothing movable

    def claim(self, exclude: set[int]) -> int:
        """A free slot index (master side, before fork)."""
        for index in range(self.slots):
            if index not in exclude:
                return index
        raise RuntimeError("no free heartbeat slot")

    def reset(self, index: int, pid: int) -> None:
        """Master side, right after fork: a fresh slot that counts as just-beaten."""
        offset = index * self.slot_size
        _HEAD.pack_into(self.mem, offset, pid, time.monotonic(), 0.0, 0)
        self.mem[offset + _HEAD.size : offset + self.slot_size] = (
            b"\0" * (self.slot_size - _HEAD.size))
        self.clear_load(index)
        # The previous worker in this slot may have died with records set.
        self.movable[index * MOVABLE_FDS : (index + 1) * MOVABLE_FDS] = bytes(MOVABLE_FDS)

    def clear_load(self, index: int) -> None:
        """Master side, when a worker is reaped: it accepts nothing any more."""
        _LOAD.pack_into(self.loads, index * _LOAD.size, 0)

    def read(self, index: int) -> SlotView:
        offset = index * self.slot_size
        pid, beat, started, requests = _HEAD.unpack_from(self.mem, offset)
        raw = bytes(self.mem[offset + _HEAD.size : offset + SLOT_SIZE])
        in_flight = []
        for record in range(self.records):
            since, text = _RECORD.unpack_from(self.mem, offset + SLOT_SIZE + record * _RECORD.size)
            if since:
                in_flight.append((since, text.split(b"\0", 1)[0].decode("latin-1")))
        in_flight.sort()
        return SlotView(pid, beat, started, requests, raw.split(b"\0", 1)[0].decode("latin-1"),
                        in_flight)

    def read_movable(self, index: int) -> dict[int, int]:
        """Master side: descriptor -> record (movable_code), for slot `index`."""
        raw = self.movable[index * MOVABLE_FDS : (index + 1) * MOVABLE_FDS].rstrip(b"\0")
        return {fd: code for fd, code in enumerate(raw) if code != NOT_MOVABLE}

    def movable_table(self, index: int) -> memoryview:
        """Worker side: this slot's records, one byte per descriptor, to store into."""
        return memoryview(self.movable)[index * MOVABLE_FDS : (index + 1) * MOVABLE_FDS]

    def writer(self, index: int) -> SlotWriter:
        return SlotWriter(self.mem, index, self.slot_size, self.records)

    def peers(self, index: int) -> Peers:
        return Peers(self, index)


class SlotWriter:
    """Worker side: the only writer of one slot."""

    __slots__ = ("mem", "offset", "requests", "records")

    def __init__(self, mem: mmap.mmap, index: int, slot_size: int = SLOT_SIZE,
                 records: int = 0) -> None:
        self.mem = mem
        self.offset = index * slot_size
        self.requests = 0
        self.records = records

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

    # -- a threaded worker (forkserve.threads) --------------------------------
    # Each pool thread writes only its own record; the loop thread writes the
    # head (beat, saturation, count). No two threads write the same bytes.
    def thread_started(self, record: int, now: float, text: bytes) -> None:
        """Pool thread `record` runs a request from `now` (beyond the mapped records: not shown)."""
        if record < self.records:
            _RECORD.pack_into(self.mem, self.offset + SLOT_SIZE + record * _RECORD.size, now,
                              text[: _RECORD_TEXT - 1])

    def thread_finished(self, record: int) -> None:
        if record < self.records:
            _RECORD.pack_into(self.mem, self.offset + SLOT_SIZE + record * _RECORD.size, 0.0, b"")

    def saturated(self, since: float, now: float) -> None:
        """Loop thread: every pool thread busy since `since` (0.0 = one is free), and the count."""
        _FINISHED.pack_into(self.mem, self.offset + 8, now, since, self.requests)


class Peers:
    """Worker side: publish this worker's connection count, read the others'."""

    __slots__ = ("mem", "loads", "index", "offset", "table", "slot_size")

    def __init__(self, heartbeats: Heartbeats, index: int) -> None:
        self.mem = heartbeats.mem
        self.loads = heartbeats.loads
        self.index = index
        self.offset = index * _LOAD.size
        self.slot_size = heartbeats.slot_size
        self.table = struct.Struct(f"={heartbeats.slots}i")  # the whole table in one unpack

    def publish(self, connections: int) -> None:
        """This worker accepts and holds `connections` open connections."""
        _LOAD.pack_into(self.loads, self.offset, connections + 1)

    def withdraw(self) -> None:
        """This worker accepts no more connections (it drains or exits)."""
        _LOAD.pack_into(self.loads, self.offset, 0)

    def gone(self, index: int, pid: int) -> bool:
        """Has worker `pid` of slot `index` stopped serving (draining, exited, replaced)?"""
        if not 0 <= index < len(self.loads) // _LOAD.size:
            return True
        load: int = _LOAD.unpack_from(self.loads, index * _LOAD.size)[0]
        slot_pid: int = _HEAD.unpack_from(self.mem, index * self.slot_size)[0]
        return load == 0 or slot_pid != pid

    def fewest(self, now: float) -> int | None:
        """The fewest connections a serving peer holds; None when no peer serves."""
        loads: tuple[int, ...] = self.table.unpack_from(self.loads)
        # Least loaded first: the first one that is really serving is the answer.
        for value, index in sorted((v, i) for i, v in enumerate(loads) if v and i != self.index):
            _pid, beat, started, _requests = _HEAD.unpack_from(self.mem, index * self.slot_size)
            if now - beat < PEER_STALE_S and not (started and now - started > PEER_BUSY_S):
                return value - 1
        return None


def movable_code(listener: int, fresh: bool) -> int:
    """The record of a connection parked clean: from listener `listener`; fresh or kept.

    NOT_MOVABLE when the listener's index does not fit the byte.
    """
    if not 0 <= listener <= MAX_MOVABLE_LISTENER:
        return NOT_MOVABLE
    return 1 + 2 * listener + int(fresh)


def movable_listener(code: int) -> tuple[int, bool]:
    """(listener index, fresh) of a record movable_code made."""
    return (code - 1) // 2, bool((code - 1) & 1)


def unchanged(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    """The records the master may trust: movable when it took the copies and still the same
    once the worker is dead. A record that changed in between (the worker ran again and
    read, closed or re-parked the connection) is not trusted."""
    return {fd: code for fd, code in before.items() if after.get(fd) == code}

"""Request statistics in shared memory: workers count, the master sums.

The master maps one anonymous shared region before the first fork (only with
--metrics-bind); each worker owns one slot, at the same index as its
heartbeat slot, and counts into it with plain 64-bit stores: no system call,
no lock, one writer per slot. The master reads every live slot when it is
scraped, and when it reaps a worker it folds that worker's counts into its
own running totals and zeroes the slot, so no counter ever goes backwards
while workers come and go.

A separate region from heartbeat.py's: that table is the workers' liveness
and balancing protocol; this one is only read by people.
"""

from __future__ import annotations

import mmap
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

# Histogram bounds in seconds, 1 ms to 30 s; le="+Inf" is the last bucket.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# RFC 9110 §9 and RFC 5789 (PATCH); any other method is labelled "other", so a
# client cannot create label values (and Prometheus series) at will.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
OTHER = "other"
_METHOD_INDEX = {name: index for index, name in enumerate(METHODS)}
_OTHER_INDEX = len(METHODS)
APP_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # the app's prometheus_client files (metrics.py)
NO_RESPONSE = 0  # the code counted when the client left before any status was sent

# One slot is SLOT_WORDS signed 64-bit words (requests in progress are not
# counted here: the heartbeat slot already says whether a request runs):
RESERVED = 0
CONN_IDLE = 1  # connections parked between keep-alive requests (at the last tick)
CONN_READING = 2  # connections whose request is still arriving (at the last tick)
DURATION_NS = 3  # sum of request durations, nanoseconds
BUCKET0 = 4  # len(BUCKETS) + 1 bucket counts, not cumulative
REQUEST_PAIRS = BUCKET0 + len(BUCKETS) + 1  # (key, count) pairs, key 0 = free
REQUEST_PAIR_COUNT = 96
REJECTED_PAIRS = REQUEST_PAIRS + 2 * REQUEST_PAIR_COUNT  # (status, count) pairs
REJECTED_PAIR_COUNT = 24
SLOT_WORDS = REJECTED_PAIRS + 2 * REJECTED_PAIR_COUNT
WORD = 8
# The last request pair takes every (method, code) once the others are taken;
# it is labelled method="other", code="other" (an app would need 95 distinct
# method/status pairs in one worker's life to get there).
OVERFLOW_KEY = -1
SEEN_LIMIT = 256


def request_key(method: str, code: int) -> int:
    """One int for a (method, status) pair; never 0, the free marker."""
    return (_METHOD_INDEX.get(method, _OTHER_INDEX) + 1) * 1000 + code


def key_labels(key: int) -> tuple[str, str]:
    """(method, code) label values of a request key."""
    if key == OVERFLOW_KEY:
        return OTHER, OTHER
    index, code = divmod(key, 1000)
    method = METHODS[index - 1] if index - 1 < len(METHODS) else OTHER
    return method, str(code)


@dataclass
class Totals:
    """Counts summed over slots (and, in the master, over exited workers)."""

    requests: Counter[int] = field(default_factory=Counter)  # request key -> count
    rejected: Counter[int] = field(default_factory=Counter)  # status -> count
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    duration_ns: int = 0
    in_progress: int = 0
    idle: int = 0
    reading: int = 0

    def add(self, other: Totals) -> None:
        """Add `other`'s counters (not its gauges) to these."""
        self.requests.update(other.requests)
        self.rejected.update(other.rejected)
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.duration_ns += other.duration_ns

    def cumulative_buckets(self) -> list[int]:
        out, running = [], 0
        for count in self.buckets:
            running += count
            out.append(running)
        return out


class StatsTable:
    """The shared region: one slot per worker (master side, built before fork)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.mem = mmap.mmap(-1, slots * SLOT_WORDS * WORD)
        self.words = memoryview(self.mem).cast("q")

    def reset(self, index: int) -> None:
        """Master side, before a fork into this slot, and after folding it."""
        base = index * SLOT_WORDS
        self.words[base : base + SLOT_WORDS] = memoryview(bytes(SLOT_WORDS * WORD)).cast("q")

    def read(self, index: int, into: Totals) -> None:
        """Add slot `index` (counters and connection gauges) to `into`."""
        w = self.words[index * SLOT_WORDS : (index + 1) * SLOT_WORDS].tolist()
        into.idle += w[CONN_IDLE]
        into.reading += w[CONN_READING]
        into.duration_ns += w[DURATION_NS]
        for i in range(len(BUCKETS) + 1):
            into.buckets[i] += w[BUCKET0 + i]
        for i in range(REQUEST_PAIRS, REJECTED_PAIRS, 2):
            if w[i] == 0:
                break
            into.requests[w[i]] += w[i + 1]
        for i in range(REJECTED_PAIRS, SLOT_WORDS, 2):
            if w[i] == 0:
                break
            into.rejected[w[i]] += w[i + 1]

    def writer(self, index: int) -> StatsWriter:
        return StatsWriter(self.words, index)


class StatsWriter:
    """Worker side, after fork: the only writer of one slot.

    Plain indexed stores into the shared words: about 0.3 µs a request, no
    system call (measured in docs/benchmarks.md).
    """

    __slots__ = ("words", "base", "bucket0", "duration", "keys", "seen", "next_pair",
                 "rejected_keys", "next_rejected")

    def __init__(self, words: memoryview, index: int) -> None:
        self.words = words
        self.base = index * SLOT_WORDS
        self.bucket0 = self.base + BUCKET0
        self.duration = self.base + DURATION_NS
        self.keys: dict[int, int] = {}  # request key -> word index of its count
        # (method, status line) as the app gave them -> word index of its count:
        # one dict lookup a request instead of parsing the status each time.
        self.seen: dict[tuple[str, str], int] = {}
        self.next_pair = self.base + REQUEST_PAIRS
        self.rejected_keys: dict[int, int] = {}
        self.next_rejected = self.base + REJECTED_PAIRS

    def request_finished(self, method: str, status: str, seconds: float) -> None:
        """One answered request: `status` is the status line sent ("" if none was)."""
        words = self.words
        index = self.seen.get((method, status))
        if index is None:
            index = self._index_of(method, status)
        words[index] += 1
        words[self.bucket0 + bisect_left(BUCKETS, seconds)] += 1
        words[self.duration] += int(seconds * 1e9)

    def _index_of(self, method: str, status: str) -> int:
        code = int(status[:3]) if status[:3].isdigit() else NO_RESPONSE
        key = request_key(method, code)
        index = self.keys.get(key)
        if index is None:
            index = self._claim_request_pair(key)
        if len(self.seen) < SEEN_LIMIT:  # reason phrases are the app's: bound the cache
            self.seen[(method, status)] = index
        return index

    def _claim_request_pair(self, key: int) -> int:
        last = self.base + REQUEST_PAIRS + 2 * (REQUEST_PAIR_COUNT - 1)
        if self.next_pair >= last:
            self.words[last] = OVERFLOW_KEY
            index = self.keys[key] = last + 1
            return index
        self.words[self.next_pair] = key
        index = self.keys[key] = self.next_pair + 1
        self.next_pair += 2
        return index

    def rejected(self, status: int) -> None:
        """A request refused before the app ran (400, 408, 413, ...)."""
        index = self.rejected_keys.get(status)
        if index is None:
            if self.next_rejected >= self.base + SLOT_WORDS:
                return  # more distinct refusal codes than exist in practice
            self.words[self.next_rejected] = status
            index = self.rejected_keys[status] = self.next_rejected + 1
            self.next_rejected += 2
        self.words[index] += 1

    def connections(self, idle: int, reading: int) -> None:
        """How many connections wait between requests, and how many are arriving."""
        self.words[self.base + CONN_IDLE] = idle
        self.words[self.base + CONN_READING] = reading

"""The shared heartbeat table: slots the master reads, loads the workers balance on."""

from __future__ import annotations

import time

import pytest

from forkserve.heartbeat import PEER_BUSY_S, PEER_STALE_S, Heartbeats


@pytest.fixture
def table() -> Heartbeats:
    beats = Heartbeats(8)
    now = time.monotonic()
    for index in range(4):
        beats.reset(index, 0)
        beats.writer(index).booted(1000 + index, now)
    return beats


def test_a_new_table_has_nobody_accepting() -> None:
    beats = Heartbeats(4)
    assert beats.peers(0).fewest(time.monotonic()) is None


def test_fewest_is_the_least_loaded_other_worker(table: Heartbeats) -> None:
    now = time.monotonic()
    for index, count in enumerate([9, 4, 7, 2]):
        table.peers(index).publish(count)
    assert table.peers(0).fewest(now) == 2
    assert table.peers(3).fewest(now) == 4  # its own slot never counts


def test_zero_connections_is_a_load_not_an_absence(table: Heartbeats) -> None:
    table.peers(0).publish(5)
    table.peers(1).publish(0)
    assert table.peers(0).fewest(time.monotonic()) == 0


def test_a_withdrawn_or_reaped_worker_does_not_count(table: Heartbeats) -> None:
    now = time.monotonic()
    for index, count in enumerate([9, 1, 3, 6]):
        table.peers(index).publish(count)
    table.peers(1).withdraw()  # draining
    assert table.peers(0).fewest(now) == 3
    table.clear_load(2)  # reaped by the master
    assert table.peers(0).fewest(now) == 6
    table.reset(3, 0)  # its slot given to a booting worker
    assert table.peers(0).fewest(now) is None


def test_a_silent_worker_does_not_count(table: Heartbeats) -> None:
    now = time.monotonic()
    table.peers(0).publish(8)
    table.peers(1).publish(1)
    table.peers(2).publish(5)
    table.writer(1).beat(now - PEER_STALE_S - 0.1)  # gone quiet: hung or killed
    assert table.peers(0).fewest(now) == 5
    table.writer(1).beat(now)
    assert table.peers(0).fewest(now) == 1


def test_a_worker_long_in_one_request_does_not_count(table: Heartbeats) -> None:
    now = time.monotonic()
    table.peers(0).publish(8)
    table.peers(1).publish(1)
    table.peers(2).publish(5)
    table.writer(1).request_started(now - PEER_BUSY_S - 0.1, b"GET /slow from x")
    table.writer(1).beat(now)
    assert table.peers(0).fewest(now) == 5  # it accepts nothing until the app returns
    table.writer(1).request_started(now, b"GET /quick from x")
    assert table.peers(0).fewest(now) == 1  # a request just begun is ordinary
    table.writer(1).request_finished(now)
    assert table.peers(0).fewest(now) == 1


def test_loads_do_not_touch_the_slots_the_master_reads(table: Heartbeats) -> None:
    now = time.monotonic()
    writer = table.writer(2)
    writer.request_started(now, b"GET /x from 127.0.0.1:5" + b"y" * 400)
    table.peers(2).publish(123)
    view = table.read(2)
    assert view.pid == 1002
    assert view.request.startswith("GET /x from 127.0.0.1:5y")
    writer.request_finished(now)
    assert table.read(2).requests == 1
    assert table.peers(0).fewest(now) == 123


# -- a threaded worker's slot: one record per thread ---------------------------

def test_thread_records_show_every_request_in_flight_oldest_first(table: Heartbeats) -> None:
    from forkserve.arbiter import describe_activity

    writer = table.writer(2)
    writer.thread_started(3, 100.0, b"GET /late from 127.0.0.1:5")
    writer.thread_started(0, 90.0, b"POST /early from 127.0.0.1:6")
    view = table.read(2)
    assert view.in_flight == [(90.0, "POST /early from 127.0.0.1:6"),
                              (100.0, "GET /late from 127.0.0.1:5")]
    assert table.read(1).in_flight == []  # the neighbours' slots are untouched
    assert table.read(3).in_flight == []
    line = describe_activity(view, 120.0, 31.0)
    assert line == ("stuck serving POST /early from 127.0.0.1:6 for 30.0s; "
                    "GET /late from 127.0.0.1:5 for 20.0s (no heartbeat for 31.0s)")
    writer.thread_finished(0)
    assert [text for _, text in table.read(2).in_flight] == ["GET /late from 127.0.0.1:5"]
    table.reset(2, 0)
    assert table.read(2).in_flight == []


def test_threads_beyond_the_mapped_records_are_not_written() -> None:
    beats = Heartbeats(2, records=2)
    writer = beats.writer(0)
    for record in range(4):
        writer.thread_started(record, 1.0 + record, b"GET /%d" % record)
    assert [text for _, text in beats.read(0).in_flight] == ["GET /0", "GET /1"]
    assert beats.read(1).in_flight == []  # nothing spilled into the next slot


def test_a_saturated_threaded_worker_counts_as_busy(table: Heartbeats) -> None:
    now = time.monotonic()
    table.peers(0).publish(9)
    table.peers(1).publish(1)
    table.writer(1).saturated(now - PEER_BUSY_S - 0.01, now)  # every thread busy
    assert table.peers(0).fewest(now) is None
    table.writer(1).saturated(0.0, now)  # one is free again
    assert table.peers(0).fewest(now) == 1


def test_a_relaying_worker_is_gone_once_it_drains_exits_or_is_replaced(
        table: Heartbeats) -> None:
    # A worker serving connections relayed by another ends them when that
    # worker leaves (forkserve.relay): this is how it tells.
    table.reset(1, pid=4242)
    peers = table.peers(1)
    peers.publish(3)
    watcher = table.peers(0)
    assert not watcher.gone(1, 4242)
    peers.withdraw()  # draining
    assert watcher.gone(1, 4242)
    table.reset(1, pid=5151)  # reaped, and the slot given to a new worker
    table.peers(1).publish(0)
    assert watcher.gone(1, 4242) and not watcher.gone(1, 5151)
    assert watcher.gone(99, 4242)  # no such slot

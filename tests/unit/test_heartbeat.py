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

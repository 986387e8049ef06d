"""SingleFlight: one call per key at a time, its result or error shared, a bounded wait for followers."""

from __future__ import annotations

import threading

import pytest

from nbiafs.errors import RequestTimeoutError, ServerError
from nbiafs.fs.flight import SingleFlight
from tests.fs.helpers import Calls, in_threads, wait_for


def test_concurrent_calls_share_one_run() -> None:
    flights: SingleFlight[str, int] = SingleFlight("listing")
    calls: Calls[str] = Calls()
    release = threading.Event()

    def slow() -> int:
        calls.add("slow")
        release.wait(10)
        return 42

    def call() -> int:
        return flights.run("k", slow, timeout=10)

    leader = threading.Thread(target=call)
    leader.start()
    wait_for(lambda: calls["slow"] == 1)  # the leader is inside ``slow``: everyone else follows it
    threading.Timer(0.3, release.set).start()  # time for the followers to join
    results, errors = in_threads(*[call] * 4)
    leader.join(10)
    assert (results, errors, calls["slow"]) == ([42] * 4, [], 1)
    assert flights.run("k", lambda: 7, timeout=1) == 7  # done: the key is free again


def test_the_leaders_error_reaches_every_follower() -> None:
    flights: SingleFlight[str, int] = SingleFlight("listing")
    started, release = threading.Event(), threading.Event()

    def failing() -> int:
        started.set()
        release.wait(10)
        raise ServerError("HTTP 503", status=503)

    leader = threading.Thread(target=lambda: pytest.raises(ServerError, flights.run, "k", failing, 10))
    leader.start()
    assert started.wait(10)
    threading.Timer(0.3, release.set).start()  # time for the followers to join
    _, errors = in_threads(*[lambda: flights.run("k", failing, 10)] * 3)
    leader.join(10)
    assert len(errors) == 3 and all(isinstance(e, ServerError) for e in errors)


def test_a_follower_gives_up_after_its_timeout() -> None:
    flights: SingleFlight[str, int] = SingleFlight("download")
    started, release = threading.Event(), threading.Event()

    def stuck() -> int:
        started.set()
        release.wait(10)
        return 1

    leader = threading.Thread(target=flights.run, args=("k", stuck, 10))
    leader.start()
    try:
        assert started.wait(10)
        with pytest.raises(RequestTimeoutError, match="download"):
            flights.run("k", stuck, timeout=0.05)
    finally:
        release.set()
        leader.join(10)

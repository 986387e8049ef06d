"""The token's life by the wall clock (a suspended laptop), a floored lifetime, hostile token answers."""

from __future__ import annotations

import json
import time

import pytest
import requests

from nbiafs.api.auth import MIN_REFRESH_DELAY, TokenManager, parse_token_answer
from nbiafs.errors import BadResponseError
from nbiafs.server import ArchiveServer
from tests.helpers import MakeServer, settle


class Clock:
    """A wall clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def manager(srv: ArchiveServer, clock: Clock) -> TokenManager:
    return TokenManager(
        requests.Session(), f"{srv.url}/nbia-api/oauth/token", "nbia_guest", "", clock=clock, background=False
    )


def grants(srv: ArchiveServer) -> int:
    settle(srv)
    return sum(1 for r in srv.requests if r.endpoint == "oauth/token" and r.status == 200)


def test_a_token_dead_by_the_wall_clock_is_renewed_before_it_is_sent(make_server: MakeServer) -> None:
    srv = make_server(token_lifetime=3600)
    clock = Clock()
    tokens = manager(srv, clock)
    first = tokens.token()
    assert tokens.token() == first and grants(srv) == 1
    clock.now += 3 * 3600  # a suspend: monotonic clocks stood still, the token did not
    second = tokens.token()
    assert second != first and grants(srv) == 2
    tokens.close()


def test_an_absurd_lifetime_does_not_renew_on_every_request(make_server: MakeServer) -> None:
    srv = make_server(token_lifetime=0.01)
    clock = Clock()
    tokens = manager(srv, clock)
    tokens.token()
    for _ in range(50):
        tokens.token()
    assert grants(srv) == 1
    clock.now += MIN_REFRESH_DELAY + 0.01
    tokens.token()
    assert grants(srv) == 2
    tokens.close()


@pytest.mark.parametrize("bad", ["abc\r\nX-Injected: 1", "abc def", "tab\there", "\x00"])
def test_a_token_with_control_characters_is_refused(bad: str) -> None:
    body = json.dumps({"access_token": bad, "expires_in": 300}).encode()
    with pytest.raises(BadResponseError) as info:
        parse_token_answer(body, 0.0)
    assert bad not in str(info.value)

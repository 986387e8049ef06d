"""Token life cycle on the bundled server: background refresh, re-login, single-flight 401, logout, logs."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import requests

from nbiafs.api.client import NbiaClient
from nbiafs.api.credentials import Credentials
from nbiafs.errors import AccessDeniedError, AuthenticationError, NbiaError
from nbiafs.server import ArchiveServer
from tests.helpers import ALICE, ALICE_PASSWORD, MakeServer, api_client, settle


def v2_client(srv: ArchiveServer, creds: Credentials | None = None, **kw: Any) -> NbiaClient:
    return api_client(srv.url, "v2", creds, **kw)


def token_records(srv: ArchiveServer) -> list[tuple[int, str]]:
    settle(srv)
    return [(r.status, r.user) for r in srv.requests if r.endpoint == "oauth/token"]


def api_statuses(srv: ArchiveServer) -> list[int]:
    settle(srv)
    return [r.status for r in srv.requests if r.endpoint not in ("oauth/token", "logout")]


def hammer(client: NbiaClient, seconds: float, threads: int = 3) -> tuple[int, list[BaseException]]:
    """Call the API from ``threads`` threads for ``seconds``; returns (calls made, errors)."""
    errors: list[BaseException] = []
    calls = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < stop_at:
            try:
                assert client.collections()
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                calls[0] += 1
            time.sleep(0.02)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 30)
    assert not any(w.is_alive() for w in workers)
    return calls[0], errors


def test_short_tokens_are_refreshed_in_the_background(make_server: MakeServer) -> None:
    srv = make_server(token_lifetime=2, refresh_lifetime=60)
    with v2_client(srv) as client:
        calls, errors = hammer(client, 8.0)
    assert not errors and calls > 50
    grants = token_records(srv)
    assert all(status == 200 for status, _ in grants)
    assert 5 <= len(grants) <= 12  # one login, then a refresh every ~1.3 s
    assert 401 not in api_statuses(srv)  # refreshed before expiry, never after


def test_expired_refresh_token_leads_to_a_new_login(make_server: MakeServer) -> None:
    srv = make_server(token_lifetime=1.5, refresh_lifetime=0.5)
    with v2_client(srv, Credentials(ALICE, ALICE_PASSWORD)) as client:
        calls, errors = hammer(client, 3.0, threads=2)
    assert not errors and calls > 10
    grants = token_records(srv)
    refused = [i for i, (status, _) in enumerate(grants) if status != 200]
    assert refused, grants  # the refresh was refused ...
    assert any(
        status == 200 and user == ALICE for status, user in grants[refused[0] + 1 :]
    )  # ... then a login


def test_forced_401_is_answered_by_exactly_one_refresh(make_server: MakeServer) -> None:
    srv = make_server()
    threads = 10
    with v2_client(srv, max_connections=threads) as client:
        assert client.collections()
        srv.revoke_tokens()
        before = len(token_records(srv))
        barrier = threading.Barrier(threads)
        results: list[object] = []

        def call() -> None:
            barrier.wait(timeout=10)
            try:
                results.append(client.collections())
            except NbiaError as exc:
                results.append(exc)

        workers = [threading.Thread(target=call) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
        assert all(isinstance(r, list) and r for r in results) and len(results) == threads
        assert len(token_records(srv)) - before == 1
        assert api_statuses(srv).count(401) >= 2  # several threads really did hit the 401 at once


def test_401_after_refresh_is_access_denied(make_server: MakeServer) -> None:
    # The server's tokens die before any request can use them: a refresh does not help.
    srv = make_server(token_lifetime=0.0001)
    with v2_client(srv) as client, pytest.raises(AccessDeniedError):
        client.collections()


def test_logout_invalidates_the_token(make_server: MakeServer) -> None:
    # Spring era: logout (GET) removes the access token. (Keycloak era: see the next test.)
    srv = make_server(auth_era="spring")
    client = v2_client(srv, Credentials(ALICE, ALICE_PASSWORD))
    assert client.collections()
    assert client.tokens is not None
    token = client.tokens.token()
    url = f"{srv.url}/nbia-api/services/v2/getCollectionValues"
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
    client.close()
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 401
    # The server logs a request just after answering it: allow the record a moment to appear.
    deadline = time.monotonic() + 5
    while not any(r.endpoint == "logout" and r.user == ALICE for r in srv.requests):
        assert time.monotonic() < deadline, "no logout request seen"
        time.sleep(0.02)
    client.close()  # idempotent


def test_bad_password_is_authentication_error_without_the_password(
    archive_server: ArchiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = v2_client(archive_server, Credentials(ALICE, "not-the-Pa55word"))
    with caplog.at_level(logging.DEBUG), client, pytest.raises(AuthenticationError) as info:
        client.collections()
    assert "not-the-Pa55word" not in str(info.value) and "not-the-Pa55word" not in caplog.text


def test_secrets_never_logged(make_server: MakeServer, caplog: pytest.LogCaptureFixture) -> None:
    srv = make_server(token_lifetime=1.0, refresh_lifetime=60)
    seen_tokens: set[str] = set()
    with caplog.at_level(logging.DEBUG):
        client = v2_client(srv, Credentials(ALICE, ALICE_PASSWORD))
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                assert client.collections()
                assert client.tokens is not None
                seen_tokens.add(client.tokens.token())
                time.sleep(0.1)
            srv.revoke_tokens()
            assert client.collections()
            assert client.tokens is not None
            seen_tokens.add(client.tokens.token())
        finally:
            client.close()
    assert len(seen_tokens) >= 2 and caplog.records
    text = caplog.text + " ".join(repr(r.args) for r in caplog.records)
    assert ALICE_PASSWORD not in text
    for token in seen_tokens:
        assert token not in text


def test_keycloak_logout_is_a_post_and_the_session_survives(make_server: MakeServer) -> None:
    # Keycloak era (production): logout is POST only and NBIA relays no refresh token, so the session
    # outlives it (facts §2); the client still says goodbye, once, and never by GET.
    srv = make_server(auth_era="keycloak")
    client = v2_client(srv, Credentials(ALICE, ALICE_PASSWORD))
    assert client.collections()
    client.close()
    settle(srv)
    logouts = [r for r in srv.requests if r.endpoint == "logout"]
    assert [r.method for r in logouts] == ["POST"]

"""Shared pytest fixtures: the bundled NBIA-compatible archive server on loopback.

``archive_server``: one server for the whole session (default config: user ``alice`` / ``wonderland`` who may
see ``NBIAFS-RESTRICTED``, api key ``test-api-key``). Do not change its knobs; use ``make_server`` for that.

``make_server(**overrides)``: a fresh started server per call with ``ServerConfig`` fields overridden; every
server it made is stopped at teardown. The synthetic archive is generated once per process and shared, so
this is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nbiafs.server import ArchiveServer, ServerConfig
from tests.helpers import ALICE, ALICE_PASSWORD, API_KEY, RESTRICTED


def default_config(**overrides: Any) -> ServerConfig:
    """The test suite's standard configuration, with ``overrides`` applied."""
    base: dict[str, Any] = {
        "users": {ALICE: ALICE_PASSWORD},
        "restricted": {RESTRICTED: {ALICE}},
        "api_keys": {API_KEY},
    }
    base.update(overrides)
    return ServerConfig(**base)


@pytest.fixture(scope="session")
def archive_server() -> Iterator[ArchiveServer]:
    """A started server shared by the session; treat its config as read-only."""
    srv = ArchiveServer(default_config(), host="127.0.0.1", port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_server() -> Iterator[Callable[..., ArchiveServer]]:
    """Factory: ``make_server(**config_overrides)`` returns a started server, stopped at teardown."""
    started: list[ArchiveServer] = []

    def factory(**overrides: Any) -> ArchiveServer:
        srv = ArchiveServer(default_config(**overrides), host="127.0.0.1", port=0)
        srv.start()
        started.append(srv)
        return srv

    try:
        yield factory
    finally:
        for srv in started:
            srv.stop()

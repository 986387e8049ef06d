"""Servers of both authentication eras for the archive-server tests (module-scoped, read-only config)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nbiafs.server import ArchiveServer
from tests.conftest import default_config


def _serve(era: str) -> Iterator[ArchiveServer]:
    srv = ArchiveServer(default_config(auth_era=era), host="127.0.0.1", port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def keycloak() -> Iterator[ArchiveServer]:
    """A started Keycloak-era server (production's behaviour); treat its config as read-only."""
    yield from _serve("keycloak")


@pytest.fixture(scope="module")
def spring() -> Iterator[ArchiveServer]:
    """A started Spring-era server; treat its config as read-only."""
    yield from _serve("spring")

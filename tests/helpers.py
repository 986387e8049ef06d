"""What many tests share: the standard accounts of the bundled server, client factories, waiting helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nbiafs.api.client import NbiaClient
from nbiafs.api.credentials import Credentials
from nbiafs.api.profiles import resolve_profile
from nbiafs.server import ArchiveServer
from nbiafs.settings import ClientSettings

ALICE = "alice"
ALICE_PASSWORD = "wonderland"
API_KEY = "test-api-key"
RESTRICTED = "NBIAFS-RESTRICTED"

MakeServer = Callable[..., ArchiveServer]
"""``make_server(**ServerConfig overrides) -> a started ArchiveServer`` (the fixture of tests/conftest.py)."""


def api_client(
    base_url: str, version: str = "v2", credentials: Credentials | None = None, **settings: Any
) -> NbiaClient:
    """A client of the server at ``base_url`` (``http://HOST:PORT``) speaking API ``version``.

    ``v3`` uses the legacy-v3 profile (``credentials.api_key``), ``v4`` the tcia-v4 profile; ``settings``
    override :class:`ClientSettings` (default timeout 10 s).
    """
    settings.setdefault("timeout", 10.0)
    if version == "v3":
        profile = resolve_profile("legacy-v3", api_url=base_url)
    elif version == "v4":
        profile = resolve_profile("tcia-v4", api_url=base_url)
    else:
        profile = resolve_profile(api_url=f"{base_url}/nbia-api/services/{version}")
    return NbiaClient(profile, credentials, ClientSettings(**settings))


def settle(srv: ArchiveServer, quiet: float = 0.15, deadline: float = 5.0) -> None:
    """Wait (at most ``deadline`` s) until the server's request log stops growing for ``quiet`` s (it records
    a request just after answering it)."""
    end = time.monotonic() + deadline
    count = -1
    while count != len(srv.requests) and time.monotonic() < end:
        count = len(srv.requests)
        time.sleep(quiet)

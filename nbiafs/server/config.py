"""``ServerConfig`` (every knob of the archive server) and ``RequestRecord`` (one served request).

The config object is live: the server reads it on every request, so tests may change a knob at run time
(``srv.config.stall = 5``). Rates are fractions in [0, 1]; times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RESTRICTED_COLLECTION = "NBIAFS-RESTRICTED"
GUEST_USER = "nbia_guest"


def _default_restricted() -> dict[str, set[str]]:
    return {RESTRICTED_COLLECTION: set()}


@dataclass
class ServerConfig:
    """Accounts, visibility and fault knobs of an :class:`~nbiafs.server.ArchiveServer`.

    ``users`` maps user name to password (``nbia_guest`` with an empty password always exists).
    ``restricted`` maps a collection name to the users allowed to see it; it is invisible to everyone else and
    to every anonymous (v1, v3, v4) request. ``carts`` maps a shared-list name to SeriesInstanceUIDs; ``None``
    means the archive's own default cart(s). ``bandwidth`` is bytes per second per connection for bodies.
    ``request_log`` is a file that gets one tab-separated line per request (no credentials).
    ``data_dir`` serves a folder of real DICOM instead of the synthetic archive.
    """

    users: dict[str, str] = field(default_factory=dict)
    restricted: dict[str, set[str]] = field(default_factory=_default_restricted)
    api_keys: set[str] = field(default_factory=set)
    carts: dict[str, list[str]] | None = None
    token_lifetime: float = 7200.0
    refresh_lifetime: float = 7200.0
    latency: float = 0.0
    bandwidth: float | None = None
    error_rate_503: float = 0.0
    error_rate_429: float = 0.0
    cut_rate: float = 0.0
    stall: float = 0.0
    request_log: str | Path | None = None
    data_dir: str | Path | None = None
    seed: int = 0


@dataclass(frozen=True)
class RequestRecord:
    """One answered request.

    ``endpoint`` is the endpoint name (``getSeries``, ``oauth/token``, ``logout``, ...), ``path`` the request
    path with its query string (``api_key`` removed), ``bytes`` the body bytes sent, ``user`` the account
    (``""`` when anonymous), ``time`` seconds since the epoch when the request arrived.
    """

    method: str
    endpoint: str
    path: str
    status: int
    bytes: int
    user: str
    time: float

"""``ServerConfig`` (every knob of the archive server) and ``RequestRecord`` (one served request).

The config object is live: the server reads it on every request, so tests may change a knob at run time
(``srv.config.stall = 5``). Rates are fractions in [0, 1]; times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nbiafs.server.errors import ServerConfigError

RESTRICTED_COLLECTION = "NBIAFS-RESTRICTED"
GUEST_USER = "nbia_guest"
AUTH_ERAS = ("keycloak", "spring")
SERIES_SIZE_FORMS = ("string", "integer", "float")


def _default_restricted() -> dict[str, set[str]]:
    return {RESTRICTED_COLLECTION: set()}


@dataclass
class ServerConfig:
    """Accounts, visibility, authentication era and fault knobs of an :class:`~nbiafs.server.ArchiveServer`.

    ``users`` maps user name to password (``nbia_guest`` always exists). ``restricted`` maps a collection
    name to the users allowed to see it; it is invisible to everyone else. ``carts`` maps a shared-list name
    to SeriesInstanceUIDs; ``None`` means the archive's own default cart(s).

    ``auth_era``: ``"keycloak"`` (production since 2024: tokens checked per endpoint, failures answered with
    empty bodies, 204, 401 or 500 as the facts file's tables say) or ``"spring"`` (the older Spring Security
    OAuth2 server: JSON 401s, UUID tokens, GET logout). ``token_lifetime`` and ``refresh_lifetime`` are the
    access and refresh token lifetimes. ``series_size_form`` is how v1/v2 getSeriesSize writes
    ``TotalSizeInBytes``: ``"string"`` (``"104504.0"``, as recorded live), ``"integer"`` or ``"float"``.

    Faults: ``latency`` and ``stall`` delay every request; ``bandwidth`` is bytes per second per connection
    for bodies; ``error_rate_503`` / ``error_rate_429`` answer API requests with 503 / 429; ``cut_rate`` cuts
    image downloads mid-body. ``request_log`` is a file that gets one tab-separated line per request (no
    credentials). ``data_dir`` serves a folder of real DICOM instead of the synthetic archive.
    """

    users: dict[str, str] = field(default_factory=dict)
    restricted: dict[str, set[str]] = field(default_factory=_default_restricted)
    api_keys: set[str] = field(default_factory=set)
    carts: dict[str, list[str]] | None = None
    auth_era: str = "keycloak"
    token_lifetime: float = 7200.0
    refresh_lifetime: float = 7200.0
    series_size_form: str = "string"
    latency: float = 0.0
    bandwidth: float | None = None
    error_rate_503: float = 0.0
    error_rate_429: float = 0.0
    cut_rate: float = 0.0
    stall: float = 0.0
    request_log: str | Path | None = None
    data_dir: str | Path | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.auth_era not in AUTH_ERAS:
            raise ServerConfigError(f"auth_era must be one of {', '.join(AUTH_ERAS)}, not {self.auth_era!r}")
        if self.series_size_form not in SERIES_SIZE_FORMS:
            raise ServerConfigError(
                f"series_size_form must be one of {', '.join(SERIES_SIZE_FORMS)}, not {self.series_size_form!r}"
            )


@dataclass(frozen=True)
class RequestRecord:
    """One answered request.

    ``endpoint`` is the endpoint name (``getSeries``, ``oauth/token``, ``logout``, ...), ``path`` the request
    path with its query string (``api_key`` and ``access_token`` removed), ``bytes`` the body bytes sent,
    ``user`` the account (``""`` when anonymous), ``time`` seconds since the epoch when the request arrived.
    """

    method: str
    endpoint: str
    path: str
    status: int
    bytes: int
    user: str
    time: float

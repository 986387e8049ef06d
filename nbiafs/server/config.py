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
FAULTS = ("trickle", "drop", "truncate", "corrupt", "wrong_sop", "html", "huge_json")
"""The hostile fault modes, in the order a request rolls for them (see ``ServerConfig``)."""
TRUNCATE_STYLES = ("close", "chunked", "chunked-end")
FAULT_GROUPS = ("all", "api", "image", "zip", "metadata", "token")
"""Names a fault's scope may use besides endpoint names: ``all`` (every request), ``api`` (every API endpoint),
``image`` (getSingleImage), ``zip`` (getImage, getImageWithMD5Hash, getDCMImage), ``metadata`` (the row
endpoints: getCollectionValues, getPatient, getSeries, getSOPInstanceUIDs, ...), ``token`` (oauth/token)."""
DEFAULT_FAULT_SCOPE: dict[str, tuple[str, ...]] = {
    "trickle": ("image", "zip"),
    "drop": ("api",),
    "truncate": ("image", "zip"),
    "corrupt": ("image", "zip"),
    "wrong_sop": ("image", "zip"),
    "html": ("image", "zip"),
    "huge_json": ("metadata",),
}


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
    image downloads mid-body.

    Hostile faults (each applies to a seeded fraction ``<fault>_rate`` of the requests in its scope, and only
    to answers that would have been 200, except ``drop`` and ``trickle``; the scope is
    ``fault_scope[fault]``, a tuple of endpoint names and ``FAULT_GROUPS``, else ``DEFAULT_FAULT_SCOPE``):

    - ``trickle_rate``: the body goes out ``trickle_bytes`` bytes every ``trickle_interval`` seconds (headers
      at once, with the true Content-Length).
    - ``drop_rate``: the request is read, then the connection is closed without a byte of answer.
    - ``truncate_rate``: the answer is sent without Content-Length and cut after half its body (a ZIP: after
      half its images): ``truncate_style`` ``"close"`` (``Connection: close``, then a clean close: the client
      sees a normal end of body), ``"chunked"`` (chunked, connection dropped before the last chunk) or
      ``"chunked-end"`` (chunked, properly ended: a well-formed short body).
    - ``corrupt_rate``: an instance's bytes are altered, length kept (16 bytes of its pixel data inverted; a
      ZIP's members are altered before they are zipped, so their CRCs match and md5hashes.csv does not).
    - ``wrong_sop_rate``: an instance answer carries another instance's bytes (getSingleImage: another
      instance of the same series; a ZIP: instances of another series).
    - ``html_rate``: 200 with an HTML page (``text/html``) instead of the answer.
    - ``huge_json_rate``: a JSON list answer is repeated to at least ``huge_json_bytes`` bytes, streamed
      chunked (no Content-Length).
    - ``blackhole``: the server stops accepting connections and shrinks its listen backlog to one, which it
      fills itself: new connection attempts get no answer at all (the kernel drops their SYNs, as a firewall
      would); requests on connections already open get no answer until ``blackhole`` is turned off (then the
      connection is closed). Everything stays on loopback.

    ``request_log`` is a file that gets one tab-separated line per request (no
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
    trickle_rate: float = 0.0
    trickle_bytes: int = 1
    trickle_interval: float = 2.0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    truncate_style: str = "close"
    corrupt_rate: float = 0.0
    wrong_sop_rate: float = 0.0
    html_rate: float = 0.0
    huge_json_rate: float = 0.0
    huge_json_bytes: int = 100 << 20
    blackhole: bool = False
    fault_scope: dict[str, tuple[str, ...]] = field(default_factory=dict)
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
        if self.truncate_style not in TRUNCATE_STYLES:
            raise ServerConfigError(
                f"truncate_style must be one of {', '.join(TRUNCATE_STYLES)}, not {self.truncate_style!r}"
            )
        if self.trickle_bytes < 1 or self.trickle_interval < 0:
            raise ServerConfigError("trickle_bytes must be at least 1 and trickle_interval not negative")
        for fault in self.fault_scope:
            if fault not in FAULTS:
                raise ServerConfigError(f"fault_scope: unknown fault {fault!r} (one of {', '.join(FAULTS)})")

    def scope(self, fault: str) -> tuple[str, ...]:
        """The endpoint names and groups ``fault`` applies to."""
        return tuple(self.fault_scope.get(fault, DEFAULT_FAULT_SCOPE[fault]))


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

"""nbiafs: The Cancer Imaging Archive (NBIA) as a read-only FUSE filesystem, and a Python client for its API.

The public Python API, importable from here::

    from nbiafs import NbiaClient, resolve_profile, ClientSettings, NotFoundError

- the client: :class:`NbiaClient`, :func:`resolve_profile`, :class:`ServerProfile`, :class:`Credentials`;
- its typed records: :class:`Patient`, :class:`Study`, :class:`Series`, :class:`SeriesMetadata`,
  :class:`SeriesSize`, and the advanced API's :class:`ValueCount`, :class:`CollectionDescription`,
  :class:`DicomTag`, :class:`DoiEntry`, :class:`SearchResult`; each converts with ``to_dict()``, and a list of
  them to a pandas DataFrame with :func:`to_dataframe` (pandas optional);
- :func:`mount` (``with nbiafs.mount("/tmp/tcia", api_url=...) as m:``): a mount served by a background
  process, unmounted on exit;
- the settings: :class:`ClientSettings`, :class:`TreeSettings`, :class:`CacheSettings`;
- the errors of :mod:`nbiafs.errors` (one tree by meaning, each with its errno).

Names are loaded on first use, so ``import nbiafs.server`` (the bundled archive server) stays light. The layers
behind them are described in docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "NbiaClient": "nbiafs.api.client",
    "ServerProfile": "nbiafs.api.profiles",
    "resolve_profile": "nbiafs.api.profiles",
    "Credentials": "nbiafs.api.credentials",
    "Patient": "nbiafs.api.records",
    "Study": "nbiafs.api.records",
    "Series": "nbiafs.api.records",
    "SeriesMetadata": "nbiafs.api.records",
    "SeriesSize": "nbiafs.api.records",
    "mount": "nbiafs.background",
    "BackgroundMount": "nbiafs.background",
    "to_dataframe": "nbiafs.api.frames",
    "ValueCount": "nbiafs.api.records",
    "CollectionDescription": "nbiafs.api.records",
    "DicomTag": "nbiafs.api.records",
    "DoiEntry": "nbiafs.api.records",
    "SearchResult": "nbiafs.api.records",
    "SearchPatient": "nbiafs.api.records",
    "ClientSettings": "nbiafs.settings",
    "TreeSettings": "nbiafs.settings",
    "CacheSettings": "nbiafs.settings",
    "NbiaError": "nbiafs.errors",
    "ConfigError": "nbiafs.errors",
    "NotFoundError": "nbiafs.errors",
    "AccessDeniedError": "nbiafs.errors",
    "AuthenticationError": "nbiafs.errors",
    "UnavailableError": "nbiafs.errors",
    "RequestTimeoutError": "nbiafs.errors",
    "ServerError": "nbiafs.errors",
    "BadRequestError": "nbiafs.errors",
    "BadResponseError": "nbiafs.errors",
    "CacheError": "nbiafs.errors",
    "NoSpaceError": "nbiafs.errors",
}

__all__ = [
    "__version__",
    "NbiaClient",
    "ServerProfile",
    "resolve_profile",
    "Credentials",
    "Patient",
    "Study",
    "Series",
    "SeriesMetadata",
    "SeriesSize",
    "mount",
    "BackgroundMount",
    "to_dataframe",
    "ValueCount",
    "CollectionDescription",
    "DicomTag",
    "DoiEntry",
    "SearchResult",
    "SearchPatient",
    "ClientSettings",
    "TreeSettings",
    "CacheSettings",
    "NbiaError",
    "ConfigError",
    "NotFoundError",
    "AccessDeniedError",
    "AuthenticationError",
    "UnavailableError",
    "RequestTimeoutError",
    "ServerError",
    "BadRequestError",
    "BadResponseError",
    "CacheError",
    "NoSpaceError",
]

if TYPE_CHECKING:
    from nbiafs.api.client import NbiaClient
    from nbiafs.api.credentials import Credentials
    from nbiafs.api.frames import to_dataframe
    from nbiafs.api.profiles import ServerProfile, resolve_profile
    from nbiafs.api.records import (
        CollectionDescription,
        DicomTag,
        DoiEntry,
        Patient,
        SearchPatient,
        SearchResult,
        Series,
        SeriesMetadata,
        SeriesSize,
        Study,
        ValueCount,
    )
    from nbiafs.background import BackgroundMount, mount
    from nbiafs.errors import (
        AccessDeniedError,
        AuthenticationError,
        BadRequestError,
        BadResponseError,
        CacheError,
        ConfigError,
        NbiaError,
        NoSpaceError,
        NotFoundError,
        RequestTimeoutError,
        ServerError,
        UnavailableError,
    )
    from nbiafs.settings import CacheSettings, ClientSettings, TreeSettings


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nbiafs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

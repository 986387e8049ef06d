"""Every tunable default of nbiafs, defined once; the CLI, the mount and the Python API all read these.

Three frozen settings objects, one per layer that is tuned: :class:`ClientSettings` (HTTP),
:class:`TreeSettings` (the filesystem tree and its listing caches) and :class:`CacheSettings` (the instance
cache on disk). Sizes are bytes, times seconds. Also the size syntax of ``--cache-size`` and the default
cache directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from nbiafs.errors import ConfigError

APP_NAME = "nbiafs"
LAYOUTS = ("descriptive", "uid")


def default_cache_dir() -> Path:
    """The per-user cache directory (platformdirs: ``$XDG_CACHE_HOME/nbiafs`` or ``~/.cache/nbiafs``)."""
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True)
class ClientSettings:
    """How the HTTP client talks to a server.

    ``timeout``: seconds to wait for each read, and the window of the low-speed limit: a body that brings
    fewer than ``min_rate`` bytes per second on average over ``timeout`` seconds is abandoned (a trickle).
    ``connect_timeout``: seconds to wait for a connection (at most ``timeout``). ``retries``: retries of one
    request (429/5xx, cut bodies); ``connect_retries``: of a connection that failed (refused, dropped).
    ``max_connections``: connections to the server at most, shared by every thread of the process (gentle
    to a shared public server; extra requests wait for a free one). ``backoff``: urllib3's back-off factor in
    seconds. ``max_answer_bytes``: the largest metadata answer accepted (bytes; instances have no limit).
    """

    timeout: float = 30.0
    connect_timeout: float = 5.0
    retries: int = 5
    connect_retries: int = 1
    max_connections: int = 8
    backoff: float = 0.5
    min_rate: int = 4096
    max_answer_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ConfigError(f"the timeout must be positive, not {self.timeout}")
        if self.retries < 0 or self.connect_retries < 0:
            raise ConfigError(f"retries must be 0 or more, not {min(self.retries, self.connect_retries)}")
        if self.connect_timeout <= 0:
            raise ConfigError(f"the connect timeout must be positive, not {self.connect_timeout}")
        if self.max_connections < 1:
            raise ConfigError(f"the connection pool needs at least 1 connection, not {self.max_connections}")


@dataclass(frozen=True)
class TreeSettings:
    """How the tree is named, filtered and cached.

    ``layout``: ``descriptive`` (the Data Retriever's names) or ``uid``. ``collections``: mount only these
    (None: all). ``series_filter``: mount only these SeriesInstanceUIDs (a manifest or a cart).
    ``listing_ttl``: seconds a listing stays fresh (memory and disk). ``negative_ttl``: seconds a name missing
    from a listing stays missing. ``readahead``: instances of a series fetched ahead of a sequential reader
    (0: off). ``poll_interval``: seconds between two questions to the server about what it published since
    (getUpdatedSeries), whose answer makes only the affected listings be asked again (0: never ask).
    ``verify_md5``: check each getSingleImage download against the server's MD5 of it (one more request each).
    """

    layout: str = "descriptive"
    collections: tuple[str, ...] | None = None
    series_filter: frozenset[str] | None = None
    listing_ttl: float = 86400.0
    negative_ttl: float = 30.0
    readahead: int = 32
    poll_interval: float = 600.0
    verify_md5: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r} (one of {', '.join(LAYOUTS)})")
        if self.listing_ttl < 0 or self.negative_ttl < 0:
            raise ConfigError("the listing and negative TTLs must not be negative")
        if self.readahead < 0:
            raise ConfigError("read-ahead must not be negative")
        if self.poll_interval < 0:
            raise ConfigError("the poll interval must not be negative")


DEFAULT_CACHE_SIZE = 20 << 30
"""Bytes the instance cache may hold (``--cache-size`` default: 20 GiB)."""


@dataclass(frozen=True)
class CacheSettings:
    """Where the instance cache lives and how large it may grow (``max_bytes``, bytes)."""

    directory: Path = field(default_factory=default_cache_dir)
    max_bytes: int = DEFAULT_CACHE_SIZE


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional K/M/G/T suffix (binary multiples).

    "20G", "20GiB", "20gb", "1.5T", "4096" are accepted. Raises ConfigError for anything else, or for zero.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"not a size: {text!r} (expected e.g. 500M, 20G or a number of bytes)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise ConfigError(f"size must be positive: {text!r}")
    return value


def format_size(size: int) -> str:
    """``size`` bytes in binary units for humans, e.g. ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover

"""Fixtures of the filesystem layer's tests: an instance cache and a listing store in a temporary directory.

``cache`` is bounded by ``cache_bytes`` (64 MiB); a test module overrides that fixture for a smaller bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.listing_store import MetaStore


@pytest.fixture
def cache_bytes() -> int:
    """The bound of the ``cache`` fixture, in bytes."""
    return 64 * 1024 * 1024


@pytest.fixture
def cache(tmp_path: Path, cache_bytes: int) -> Iterator[InstanceCache]:
    """An instance cache in ``tmp_path/cache``, closed afterwards."""
    with InstanceCache(tmp_path / "cache", cache_bytes) as c:
        yield c


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetaStore]:
    """A listing store in ``tmp_path/meta``, closed afterwards."""
    with MetaStore(tmp_path / "meta") as s:
        yield s

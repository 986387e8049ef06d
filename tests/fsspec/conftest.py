"""Fixtures of the fsspec tests: the ``nbia`` protocol registered, no credentials from the environment, and
``make_fs(url, **options)``: an :class:`NbiaFileSystem` of a bundled server with a cache in ``tmp_path``,
closed (logged out, caches closed) at teardown.

The protocol is registered here with ``fsspec.register_implementation`` so that the tests do not depend on the
``fsspec.specs`` entry point of an installed nbiafs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from nbiafs.fsspec import NbiaFileSystem

MakeFs = Callable[..., "NbiaFileSystem"]
"""``make_fs(base_url, **NbiaFileSystem options) -> NbiaFileSystem`` (cache in ``tmp_path/cache``)."""


def api_url(base_url: str, version: str = "v2") -> str:
    """The API URL of a bundled server at ``base_url``, as the mount tests give it (``--api-url``)."""
    return f"{base_url}/nbia-api/services/{version}"


@pytest.fixture(scope="session", autouse=True)
def nbia_protocol() -> None:
    fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed (the nbiafs[fsspec] extra)")
    from nbiafs.fsspec import NbiaFileSystem

    fsspec.register_implementation("nbia", NbiaFileSystem, clobber=True)


@pytest.fixture(autouse=True)
def no_credentials_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest unless a test says otherwise (also for Dask workers started by the test)."""
    for name in ("NBIA_USER", "NBIA_PASSWORD", "NBIA_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_fs(tmp_path: Path) -> Iterator[MakeFs]:
    from nbiafs.fsspec import NbiaFileSystem

    made: list[NbiaFileSystem] = []

    def factory(base_url: str, **options: Any) -> NbiaFileSystem:
        options.setdefault("cache_dir", str(tmp_path / "cache"))
        options.setdefault("timeout", 10.0)
        fs = NbiaFileSystem(api_url=api_url(base_url), **options)
        made.append(fs)
        return fs

    try:
        yield factory
    finally:
        for fs in made:
            fs.close()
        NbiaFileSystem.clear_instance_cache()

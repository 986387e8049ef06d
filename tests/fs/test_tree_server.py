"""ArchiveTree against the bundled archive server and the real client (no kernel, no mount)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from nbiafs.api.client import NbiaClient
from nbiafs.api.credentials import Credentials
from nbiafs.api.profiles import resolve_profile
from nbiafs.errors import NotFoundError
from nbiafs.fs import names
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.listing_store import MetaStore
from nbiafs.fs.tree import ArchiveTree
from nbiafs.server import ArchiveServer
from nbiafs.settings import ClientSettings, TreeSettings
from tests.fs.helpers import Calls
from tests.helpers import ALICE, ALICE_PASSWORD, RESTRICTED

SKIP = {"NBIAFS-Bench"}  # one 200-instance series: walked by the benchmarks, not here


class Counting:
    """Delegates to a real client and counts the calls of each method (thread-safe).

    Has the client's :attr:`~nbiafs.api.client.NbiaClient.scope`, so it satisfies
    :class:`nbiafs.fs.protocols.ArchiveClient` as the client does.
    """

    def __init__(self, client: NbiaClient) -> None:
        self._client = client
        self.scope = client.scope
        self.calls: Calls[str] = Calls()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.add(name)
            return attr(*args, **kwargs)

        return counted


def make_client(srv: ArchiveServer, user: str | None) -> NbiaClient:
    profile = resolve_profile(api_url=f"{srv.url}/nbia-api/services/v2")
    creds = Credentials(user, ALICE_PASSWORD) if user else None
    return NbiaClient(profile, creds, ClientSettings(timeout=10.0, retries=2, backoff=0.05))


@pytest.fixture
def clients(archive_server: ArchiveServer) -> Iterator[Callable[[str | None], NbiaClient]]:
    made: list[NbiaClient] = []

    def factory(user: str | None) -> NbiaClient:
        client = make_client(archive_server, user)
        made.append(client)
        return client

    try:
        yield factory
    finally:
        for client in made:
            client.close()


def walk(tree: ArchiveTree, path: str = "/") -> Iterator[tuple[str, str]]:
    """(path, kind) of every entry below ``path``, skipping SKIP collections."""
    for name in tree.listdir(path):
        assert name not in ("", ".", "..") and "/" not in name and len(name.encode()) <= 255
        if path == "/" and name in SKIP:
            continue
        child = f"{path.rstrip('/')}/{name}"
        node = tree.lookup(child)
        assert node.name == name
        yield child, node.kind
        if node.is_dir:
            yield from walk(tree, child)


@pytest.mark.parametrize("layout", ["descriptive", "uid"])
def test_every_path_resolves(
    layout: str, clients: Callable[[str | None], NbiaClient], cache: InstanceCache
) -> None:
    tree = ArchiveTree(clients(ALICE), cache, None, TreeSettings(layout=layout))
    kinds: Counter[str] = Counter()
    for path, kind in walk(tree):
        kinds[kind] += 1
        attrs = tree.xattrs(path)
        assert all(
            k.startswith(("user.nbia.", "user.nbiafs.")) and isinstance(v, bytes) for k, v in attrs.items()
        )
        if kind == "series":
            assert "user.nbia.Modality" in attrs
            count = int(attrs["user.nbia.ImageCount"])
            assert len(tree.listdir(path)) == count
            if layout == "uid":
                assert path.rsplit("/", 1)[1] == attrs["user.nbia.SeriesInstanceUID"].decode()
            else:
                assert path.endswith("-" + attrs["user.nbia.SeriesInstanceUID"].decode()[-5:]) or "~" in path
        if kind == "instance":
            assert attrs["user.nbia.SOPInstanceUID"].decode() + ".dcm" == path.rsplit("/", 1)[1]
            node = tree.lookup(path)
            assert node.size > 0 and not node.exact_size
    assert kinds["collection"] >= 2 and kinds["series"] >= 5 and kinds["instance"] >= 20
    assert RESTRICTED in tree.listdir("/")


def test_sizes_exact_after_open(clients: Callable[[str | None], NbiaClient], cache: InstanceCache) -> None:
    tree = ArchiveTree(clients(ALICE), cache, None, TreeSettings())
    series_paths = [p for p, kind in walk(tree) if kind == "series"][:3]
    assert series_paths
    for series_path in series_paths:
        attrs = tree.xattrs(series_path)
        estimate = math.ceil(int(attrs["user.nbia.FileSize"]) / int(attrs["user.nbia.ImageCount"]))
        first = tree.listdir(series_path)[0]
        path = f"{series_path}/{first}"
        before = tree.lookup(path)
        assert (before.size, before.exact_size) == (estimate, False)
        local, fetched = tree.open_instance(path)
        assert fetched
        after = tree.lookup(path)
        assert after.exact_size and after.size == local.stat().st_size
        assert pydicom.dcmread(local, stop_before_pixels=True).SOPInstanceUID + ".dcm" == first
        assert tree.open_instance(path) == (local, False)


def test_restricted_collection_absent_for_guest(
    clients: Callable[[str | None], NbiaClient], cache: InstanceCache
) -> None:
    guest = ArchiveTree(clients(None), cache, None, TreeSettings())
    assert RESTRICTED not in guest.listdir("/")
    with pytest.raises(NotFoundError):
        guest.lookup(f"/{RESTRICTED}")
    alice = ArchiveTree(clients(ALICE), cache, None, TreeSettings())
    assert RESTRICTED in alice.listdir("/")
    assert alice.listdir(f"/{RESTRICTED}")


def test_remount_lists_with_zero_requests(
    clients: Callable[[str | None], NbiaClient], cache: InstanceCache, tmp_path: Path
) -> None:
    with MetaStore(tmp_path / "meta") as store:
        first = Counting(clients(ALICE))
        tree = ArchiveTree(first, cache, store, TreeSettings())
        seen = {path: kind for path, kind in walk(tree)}
        assert sum(first.calls.values()) > 0
    with MetaStore(tmp_path / "meta") as store:
        second = Counting(clients(ALICE))
        again = ArchiveTree(second, cache, store, TreeSettings())
        assert {path: kind for path, kind in walk(again)} == seen
        assert sum(second.calls.values()) == 0
        guest = Counting(clients(None))
        guest_tree = ArchiveTree(guest, cache, store, TreeSettings())
        assert RESTRICTED not in guest_tree.listdir("/")  # alice's listing is not the guest's
        assert guest.calls["collections"] == 1


def test_cart_filter_lists_only_its_series(
    clients: Callable[[str | None], NbiaClient], cache: InstanceCache
) -> None:
    client = Counting(clients(ALICE))
    cart = client.contents_by_name("nbiafs-demo-cart")
    uids = frozenset(s.series_instance_uid for s in cart)
    assert uids
    tree = ArchiveTree(client, cache, None, TreeSettings(series_filter=uids))
    found = {tree.xattrs(p)["user.nbia.SeriesInstanceUID"].decode() for p, k in walk(tree) if k == "series"}
    assert found == uids
    assert tree.listdir("/") == sorted({names.safe_name(s.collection) for s in cart if s.collection})
    assert client.calls["patients"] == 0  # never a whole collection

"""What the tree trusts: empty answers (renewal, never stored), an unreachable server (stale listings, ENOENT
at once, EIO for what was never cached, the probe), collections that disappear, and what enters the cache."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from nbiafs.api.records import Patient
from nbiafs.errors import (
    AccessDeniedError,
    BadResponseError,
    NotFoundError,
    RequestTimeoutError,
    UnavailableError,
)
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.listing_store import MetaStore
from nbiafs.fs.tree import ArchiveTree
from nbiafs.settings import TreeSettings
from tests.fs.helpers import FakeClock, dicom_bytes, wait_for
from tests.fs.test_tree import C1, CT, CT_NAME, RESTRICTED, SERIES_DIR, FakeClient

CT_DIR = f"{SERIES_DIR}/{CT_NAME}"
CT_FILE = f"{CT_DIR}/1.2.3.1.9.33333.1.dcm"
TTL = 100.0
NEG = 5.0


class EmptyFirst(FakeClient):
    """Answers the listings named in ``empty`` with no rows ``times`` times (a dead token), then truly."""

    def __init__(self, empty: set[str], times: int = 1, renews: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.empty = empty
        self.left = {kind: times for kind in empty}
        self.renews = renews

    def _emptied(self, kind: str, rows: list[Any]) -> list[Any]:
        if self.left.get(kind, 0) > 0:
            self.left[kind] -= 1
            return []
        return rows

    def renew_token(self) -> bool:
        self._call("renew")
        return self.renews

    def patients(self, collection: str | None = None) -> list[Patient]:
        return self._emptied("patients", super().patients(collection))

    def sop_instance_uids(self, series_instance_uid: str) -> list[str]:
        return self._emptied("sops", super().sop_instance_uids(series_instance_uid))


def tree_of(
    client: FakeClient, cache: InstanceCache, store: MetaStore | None, clock: FakeClock
) -> ArchiveTree:
    settings = TreeSettings(listing_ttl=TTL, negative_ttl=NEG)
    return ArchiveTree(client, cache, store, settings, clock=clock, probe_interval=0.05)


# --- A. empty answers ---------------------------------------------------------------------------------------


def test_doubtful_empty_answer_renews_the_token_and_asks_once_more(
    cache: InstanceCache, store: MetaStore
) -> None:
    client = EmptyFirst({"patients", "sops"})
    tree = tree_of(client, cache, store, FakeClock())
    assert tree.listdir(f"/{C1}") == ["0042"]
    assert tree.listdir(CT_DIR) == [f"1.2.3.1.9.33333.{i}.dcm" for i in (1, 2, 3)]
    assert client.calls[("renew",)] == 2
    assert client.calls[("patients", C1)] == 2 and client.calls[("sops", CT)] == 2


def test_empty_answer_is_kept_in_memory_for_negative_ttl_only_never_on_disk(
    cache: InstanceCache, store: MetaStore
) -> None:
    clock = FakeClock()
    client = EmptyFirst({"patients"}, times=2)  # still empty after the renewal
    tree = tree_of(client, cache, store, clock)
    assert tree.listdir(f"/{C1}") == []
    assert client.calls[("renew",)] == 1 and client.calls[("patients", C1)] == 2
    assert tree.listdir(f"/{C1}") == []  # remembered: no request
    assert client.calls[("patients", C1)] == 2
    assert store.scoped(client.scope).get(f"patients\x1f{C1}", 1e9) is None
    clock.advance(NEG + 0.1)
    assert tree.listdir(f"/{C1}") == ["0042"]  # asked again after negative_ttl
    assert client.calls[("patients", C1)] == 3
    # A remount on the same disk store never sees the empty answer.
    again = FakeClient()
    assert tree_of(again, cache, MetaStore(store.directory), clock).listdir(f"/{C1}") == ["0042"]
    assert again.calls[("patients", C1)] == 0


def test_empty_answer_not_doubtful_or_no_token_is_not_asked_again(cache: InstanceCache) -> None:
    client = EmptyFirst({"patients", "sops"}, renews=False)
    client.sops[CT] = []
    tree = tree_of(client, cache, None, FakeClock())
    assert tree.listdir(f"/{C1}") == []  # doubtful, but there is no token to renew
    assert client.calls[("renew",)] == 1 and client.calls[("patients", C1)] == 1
    # A series listed with ImageCount 0 may well be empty: no renewal.
    client.series_data[(C1, "0042")][2] = type(client.series_data[(C1, "0042")][2])(
        CT, "1.2.3.1.11111", C1, "0042", series_number=2, series_description="AX 5mm", image_count=0, raw={}
    )
    fresh = tree_of(client, cache, None, FakeClock())
    assert fresh.listdir(CT_DIR) == []
    assert client.calls[("renew",)] == 1


# --- B. offline -------------------------------------------------------------------------------------------


def warm(cache: InstanceCache, store: MetaStore, clock: FakeClock) -> tuple[FakeClient, ArchiveTree]:
    """A tree that listed the CT series and fetched one instance; then the listings expire."""
    client = FakeClient()
    tree = tree_of(client, cache, store, clock)
    tree.listdir(CT_DIR)
    tree.open_instance(CT_FILE)
    clock.advance(TTL * 10)
    return client, tree


@pytest.mark.parametrize("error", [UnavailableError("refused"), RequestTimeoutError("no answer")])
def test_offline_serves_stale_listings_and_cached_files(
    cache: InstanceCache, store: MetaStore, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    client, tree = warm(cache, store, clock)
    tree.close()
    down = FakeClient()
    down.fail = error
    offline = tree_of(down, cache, MetaStore(store.directory), clock)  # a remount on a warm cache
    caplog.set_level(logging.WARNING)
    assert offline.listdir(CT_DIR) == [f"1.2.3.1.9.33333.{i}.dcm" for i in (1, 2, 3)]
    assert not offline.connectivity.online
    assert down.total() == 1  # one request found the server gone; nothing since
    local, fetched = offline.open_instance(CT_FILE)
    assert not fetched and local.read_bytes() == dicom_bytes("1.2.3.1.9.33333.1")
    assert offline.lookup(CT_FILE).exact_size
    with pytest.raises(NotFoundError):
        offline.lookup(f"{CT_DIR}/nothing.dcm")  # missing from a held listing: ENOENT, no request
    with pytest.raises(NotFoundError):
        offline.lookup(f"/{C1}/nobody")
    with pytest.raises(UnavailableError):
        offline.open_instance(f"{CT_DIR}/1.2.3.1.9.33333.2.dcm")  # never cached: EIO, no request
    with pytest.raises(UnavailableError):
        offline.listdir("/CHEST_ABD")  # never listed: EIO, no request
    assert down.total() - down.calls[("collections",)] == 0
    offline_warnings = [r for r in caplog.records if "offline" in r.getMessage()]
    assert len(offline_warnings) == 1
    offline.close()


def test_back_online_by_itself(cache: InstanceCache, store: MetaStore) -> None:
    clock = FakeClock()
    client, tree = warm(cache, store, clock)
    client.fail = UnavailableError("refused")
    assert tree.listdir(CT_DIR)  # stale
    assert not tree.connectivity.online
    wait_for(lambda: client.calls[("collections",)] >= 3)  # the probe keeps trying, in the background
    client.fail = None
    wait_for(lambda: tree.connectivity.online)
    before = client.calls[("sops", CT)]
    assert tree.listdir(CT_DIR)  # expired: listed again now that the server answers
    assert client.calls[("sops", CT)] == before + 1
    tree.close()


def test_access_errors_do_not_mean_offline(cache: InstanceCache) -> None:
    client = FakeClient()
    tree = tree_of(client, cache, None, FakeClock())
    with pytest.raises(AccessDeniedError):
        tree.open_instance(f"/{C1}/0042/NA-NA-22222/NA-44444/1.2.3.5.9.44444.1.dcm")
    assert tree.connectivity.online


def test_missing_name_when_relisting_finds_the_server_gone(cache: InstanceCache) -> None:
    clock = FakeClock()
    client = FakeClient()
    tree = tree_of(client, cache, None, clock)
    tree.listdir(f"/{C1}")
    clock.advance(NEG + 1)
    client.fail = UnavailableError("refused")
    with pytest.raises(NotFoundError):
        tree.lookup(f"/{C1}/nobody")  # the re-listing failed: the held listing answers
    assert not tree.connectivity.online
    tree.close()


# --- E. collections that disappear ----------------------------------------------------------------------------


def test_collection_no_longer_listed_is_dropped(cache: InstanceCache, store: MetaStore) -> None:
    clock = FakeClock()
    client = FakeClient()
    tree = tree_of(client, cache, store, clock)
    assert tree.listdir(f"/{RESTRICTED}") == ["s1"]
    scoped = store.scoped(client.scope)
    assert scoped.get(f"patients\x1f{RESTRICTED}", 1e9) is not None
    client.collections_data.remove(RESTRICTED)  # access revoked
    clock.advance(TTL + 1)
    assert RESTRICTED not in tree.listdir("/")
    with pytest.raises(NotFoundError):
        tree.listdir(f"/{RESTRICTED}")
    assert scoped.get(f"patients\x1f{RESTRICTED}", 1e9) is None
    # Offline afterwards, the restricted collection stays gone.
    client.fail = UnavailableError("refused")
    clock.advance(TTL * 10)
    with pytest.raises(NotFoundError):
        tree.lookup(f"/{RESTRICTED}/s1")
    tree.close()


# --- C. what enters the cache -------------------------------------------------------------------------------


class Serving(FakeClient):
    """Serves ``body(sop)`` as every instance, at ``url``."""

    def __init__(self, body: Any, url: str = "http://fake/nbia-api/services/v2", **kw: Any) -> None:
        super().__init__(**kw)
        self.body = body
        self.url = url

    @property
    def scope(self) -> str:
        return f"{self.url}|{self.user}"

    def download_instance(self, series_instance_uid: str, sop_instance_uid: str, out: BinaryIO) -> int:
        self._call("download", sop_instance_uid)
        data: bytes = self.body(sop_instance_uid)
        out.write(data)
        return len(data)


def no_parts(cache: InstanceCache) -> bool:
    return not list(Path(cache.directory, "data").rglob("*.part"))


@pytest.mark.parametrize(
    "body",
    [
        lambda sop: dicom_bytes("9.9.9"),  # another instance
        lambda sop: dicom_bytes(sop)[:-7],  # cut short
        lambda sop: b"<html>Server was not able to process your request</html>",
        lambda sop: b"\0" * 128 + b"DICM" + b"\xff" * 50,  # no file meta
    ],
    ids=["wrong-uid", "truncated", "html", "no-meta"],
)
def test_wrong_bytes_are_refused_and_never_cached(cache: InstanceCache, body: Any) -> None:
    client = Serving(body)
    tree = tree_of(client, cache, None, FakeClock())
    with pytest.raises(BadResponseError):
        tree.open_instance(CT_FILE)
    assert cache.info().entries == 0 and no_parts(cache)
    assert not tree.lookup(CT_FILE).exact_size
    assert tree.connectivity.online


def test_instances_are_keyed_by_server_not_user(cache: InstanceCache) -> None:
    first = Serving(dicom_bytes)
    tree = tree_of(first, cache, None, FakeClock())
    local, fetched = tree.open_instance(CT_FILE)
    assert fetched
    # The same server for another user: shared.
    guest = Serving(dicom_bytes, user="nbia_guest")
    assert tree_of(guest, cache, None, FakeClock()).open_instance(CT_FILE) == (local, False)
    # Another server cannot supply (or poison) this server's instances, nor use them.
    hostile = Serving(lambda sop: dicom_bytes(sop, pixels=64), url="http://evil/nbia-api/services/v2")
    other, fetched = tree_of(hostile, cache, None, FakeClock()).open_instance(CT_FILE)
    assert fetched and other != local
    assert local.read_bytes() == dicom_bytes("1.2.3.1.9.33333.1")
    assert hostile.calls[("download", "1.2.3.1.9.33333.1")] == 1


def test_instance_larger_than_the_cache_is_served_not_kept(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "small", 2000) as small:
        client = Serving(lambda sop: dicom_bytes(sop, pixels=5000))
        tree = tree_of(client, small, None, FakeClock())
        local, fetched = tree.open_instance(CT_FILE)
        assert fetched and local.read_bytes() == dicom_bytes("1.2.3.1.9.33333.1", pixels=5000)
        assert small.info().entries == 0 and not tree.lookup(CT_FILE).exact_size
        tree.close()
    assert not local.exists()  # removed when the cache closed


def test_calls_unchanged_by_trust(cache: InstanceCache) -> None:
    """Checking what enters the cache costs no request."""
    client = FakeClient()
    tree = tree_of(client, cache, None, FakeClock())
    tree.open_instance(CT_FILE)
    tree.open_instance(CT_FILE)
    assert client.calls[("download", "1.2.3.1.9.33333.1")] == 1
    assert Counter(k[0] for k in client.calls)["renew"] == 0

"""The fetch strategy: small-instance series as one getImage ZIP filed member by member, fallbacks, the
connection limit of background work, walking ahead across series, and listing prefetch. Behaviour only:
orders of events and request counts, never durations."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import nbiafs.fs.tree
from nbiafs.api.client import NbiaClient
from nbiafs.errors import BadResponseError, UnavailableError
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.tree import ArchiveTree
from nbiafs.server import ArchiveServer
from nbiafs.server.archive import SeriesInfo
from nbiafs.settings import ClientSettings, TreeSettings
from tests.helpers import MakeServer, api_client, settle

BENCH = "NBIAFS-Bench"
RIDER = "RIDER Synth CT"


def series_path(series: SeriesInfo) -> str:
    return (
        f"/{series.collection}/{series.patient_id}/{series.study_instance_uid}/{series.series_instance_uid}"
    )


def one_series(srv: ArchiveServer, collection: str) -> SeriesInfo:
    return max(
        (s for s in srv.archive.iter_series() if s.collection == collection), key=lambda s: s.image_count
    )


def uid_tree(client: Any, cache: InstanceCache, **settings: Any) -> ArchiveTree:
    return ArchiveTree(client, cache, None, TreeSettings(layout="uid", **settings))


def walk(tree: ArchiveTree, path: str, count: int | None = None) -> list[tuple[str, Path]]:
    """Open the instances of the series at ``path`` in listing order, as ``cp`` does."""
    opened = []
    for name in tree.listdir(path)[:count]:
        local, _fetched = tree.open_instance(f"{path}/{name}")
        opened.append((name, local))
    return opened


def endpoints(srv: ArchiveServer) -> Counter[str]:
    settle(srv)
    return Counter(r.endpoint for r in srv.requests if r.endpoint not in ("oauth/token", "logout"))


ZIPS = ("getImage", "getImageWithMD5Hash")  # v1/v2 ask getImageWithMD5Hash, v4 getImage?IncludeMD5=Yes


def test_zip_files_every_member_under_its_sop_byte_identical(
    make_server: MakeServer, cache: InstanceCache
) -> None:
    srv = make_server()
    series = one_series(srv, RIDER)
    with api_client(srv.url, "v1") as client:
        tree = uid_tree(client, cache)
        try:
            opened = walk(tree, series_path(series))
            assert tree.background.join(30)
        finally:
            tree.close()
    assert len(opened) == series.image_count
    for name, local in opened:
        assert local.read_bytes() == srv.archive.instance_bytes(name.removesuffix(".dcm"))
    for inst in series.instances:  # every member went under its own SOPInstanceUID
        key = tree.instance_key(inst.sop_instance_uid)
        assert cache.path_for(key).read_bytes() == srv.archive.instance_bytes(inst.sop_instance_uid)
    counts = endpoints(srv)
    assert sum(counts[e] for e in ZIPS) == 1 and counts["getImageWithMD5Hash"] == 1
    assert counts["getSingleImage"] <= 2  # the opens before the walk was recognised


def test_one_open_streams_no_zip(make_server: MakeServer, cache: InstanceCache) -> None:
    srv = make_server()
    series = one_series(srv, RIDER)
    with api_client(srv.url, "v1") as client:
        tree = uid_tree(client, cache)
        try:
            walk(tree, series_path(series), count=1)
            assert tree.background.join(30)
        finally:
            tree.close()
    counts = endpoints(srv)
    assert sum(counts[e] for e in ZIPS) == 0 and counts["getSingleImage"] == 1


def first_member(srv: ArchiveServer, series: SeriesInfo, skip: set[str]) -> str:
    """The SOPInstanceUID of the first ZIP member not in ``skip``, read from the headers of a ZIP."""
    from nbiafs.fs.dicomcheck import read_sop_instance_uid

    with api_client(srv.url, "v1") as client:
        buf = io.BytesIO()
        client.download_series(series.series_instance_uid, buf)
    with zipfile.ZipFile(buf) as zf:
        for name in zf.namelist():
            if name.endswith(".dcm"):
                sop = read_sop_instance_uid(io.BytesIO(zf.read(name)))
                assert sop is not None
                if sop not in skip:
                    return sop
    raise AssertionError("no member")


def test_reader_gets_a_member_as_soon_as_it_lands(
    make_server: MakeServer, archive_server: ArchiveServer, cache: InstanceCache
) -> None:
    srv = make_server(bandwidth=300_000)  # the ZIP of 200 instances takes a few seconds
    series = one_series(srv, BENCH)
    path = series_path(series)
    with api_client(srv.url, "v1", timeout=30) as client:
        tree = uid_tree(client, cache)
        try:
            names = tree.listdir(path)
            # the same archive, unthrottled: which instance its ZIP brings first
            first = first_member(archive_server, series, {n.removesuffix(".dcm") for n in names[:2]})
            for name in names[:2]:  # the second consecutive open starts the ZIP
                tree.open_instance(f"{path}/{name}")
            srv.clear_requests()
            local, _ = tree.open_instance(f"{path}/{first}.dcm")
            # Released while the ZIP still streams (its MD5 asked alone: md5hashes.csv comes last): its last
            # members have not landed yet.
            last = [inst.sop_instance_uid for inst in series.instances][-3:]
            assert all(cache.peek(tree.instance_key(sop)) is None for sop in last)
            assert local.read_bytes() == srv.archive.instance_bytes(first)
            assert tree.background.join(60)
        finally:
            tree.close()
    singles = [r for r in srv.requests if r.endpoint == "getSingleImage"]
    assert not [r for r in singles if first in r.path]  # it came from the ZIP, not by itself
    hashes = [r for r in srv.requests if r.endpoint == "getM5HashForImage"]
    assert [r for r in hashes if first in r.path]


class ZipTampering:
    """A real client whose series ZIP stream is rewritten: cut after ``cut`` members, without member ``drop``,
    with member ``alter``'s bytes altered (its CRC matching, md5hashes.csv not), without md5hashes.csv
    (``csv=False``), or held before md5hashes.csv until ``hold`` is set."""

    def __init__(
        self,
        client: NbiaClient,
        *,
        cut: int | None = None,
        drop: int | None = None,
        alter: int | None = None,
        csv: bool = True,
        hold: threading.Event | None = None,
    ) -> None:
        self._client = client
        self.cut = cut
        self.drop = drop
        self.alter = alter
        self.csv = csv
        self.hold = hold
        self.holding = threading.Event()
        self.settings = client.settings
        self.singles: Counter[str] = Counter()
        self.hashes: Counter[str] = Counter()
        self.altered: str | None = None  # the SOPInstanceUID of the altered member
        self.zips = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    @property
    def scope(self) -> str:
        return self._client.scope

    def download_instance(self, series_uid: str, sop_uid: str, out: BinaryIO) -> int:
        self.singles[sop_uid] += 1
        return self._client.download_instance(series_uid, sop_uid, out)

    def instance_md5(self, sop_uid: str) -> str | None:
        self.hashes[sop_uid] += 1
        return self._client.instance_md5(sop_uid)

    def stream_series(self, series_uid: str) -> Iterator[bytes]:
        from nbiafs.fs.dicomcheck import read_sop_instance_uid
        from nbiafs.server.faults import corrupt

        self.zips += 1
        original = io.BytesIO(b"".join(self._client.stream_series(series_uid)))
        out = io.BytesIO()
        with zipfile.ZipFile(original) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            assert src.namelist()[-1] == "md5hashes.csv"
            members = [n for n in src.namelist() if n.endswith(".dcm")]
            for index, name in enumerate(members):
                if index == self.drop:
                    continue
                data = src.read(name)
                if index == self.alter:
                    self.altered = read_sop_instance_uid(io.BytesIO(data))
                    data = corrupt(data)
                dst.writestr(name, data)
            csv_at = out.tell()
            if self.csv:
                dst.writestr("md5hashes.csv", src.read("md5hashes.csv"))
        data = out.getvalue()
        if self.cut is not None:  # cut inside the member after ``cut`` whole ones
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                info = zf.infolist()[self.cut]
                data = data[: info.header_offset + 40]
        for start in range(0, len(data), 4096):
            if self.hold is not None and start + 4096 > csv_at:
                self.holding.set()
                assert self.hold.wait(30)
                self.hold = None
            yield data[start : start + 4096]
        if self.cut is not None:
            raise UnavailableError("getImage: body cut off (injected)")


@pytest.mark.parametrize("how", ["cut", "drop"])
def test_what_the_zip_does_not_bring_comes_by_getsingleimage(
    archive_server: ArchiveServer, cache: InstanceCache, how: str
) -> None:
    series = one_series(archive_server, RIDER)
    with api_client(archive_server.url, "v1") as real:
        client = ZipTampering(real, cut=5 if how == "cut" else None, drop=7 if how == "drop" else None)
        tree = uid_tree(client, cache)
        try:
            opened = walk(tree, series_path(series))  # never an error for the reader
            assert tree.background.join(30)
        finally:
            tree.close()
    assert client.zips == 1
    for name, local in opened:
        assert local.read_bytes() == archive_server.archive.instance_bytes(name.removesuffix(".dcm"))
    assert all(n == 1 for n in client.singles.values())
    fetched_alone = set(client.singles) | set(client.hashes)
    # A cut ZIP never brought md5hashes.csv: what it staged was never verified (unless a reader waiting for it
    # had its MD5 asked), so it all comes alone.
    expected_missing = series.image_count if how == "cut" else 1
    assert len(fetched_alone) >= expected_missing
    assert len(fetched_alone) <= expected_missing + 2  # plus the opens before the walk was recognised


def test_an_altered_member_is_never_cached_and_comes_by_getsingleimage(
    archive_server: ArchiveServer, cache: InstanceCache, caplog: pytest.LogCaptureFixture
) -> None:
    series = one_series(archive_server, RIDER)
    with api_client(archive_server.url, "v1") as real:
        client = ZipTampering(real, alter=6)
        tree = uid_tree(client, cache)
        try:
            opened = walk(tree, series_path(series))
            assert tree.background.join(30)
        finally:
            tree.close()
    altered = client.altered
    assert altered is not None
    for name, local in opened:
        assert local.read_bytes() == archive_server.archive.instance_bytes(name.removesuffix(".dcm"))
    for inst in series.instances:
        path = cache.path_for(tree.instance_key(inst.sop_instance_uid))
        assert path.read_bytes() == archive_server.archive.instance_bytes(inst.sop_instance_uid)
    assert client.singles[altered] == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR" and altered in r.getMessage()]
    assert errors, "the altered member is logged as an error naming its SOPInstanceUID"


def test_no_member_is_filed_before_md5hashes_csv(archive_server: ArchiveServer, cache: InstanceCache) -> None:
    """Held before its md5hashes.csv, a ZIP has filed nothing (no reader waits for a member); then all."""
    series = one_series(archive_server, RIDER)
    hold = threading.Event()
    with api_client(archive_server.url, "v1") as real:
        client = ZipTampering(real, hold=hold)
        tree = uid_tree(client, cache)
        try:
            path = series_path(series)
            names = tree.listdir(path)
            for name in names[:2]:  # the second consecutive open starts the ZIP
                tree.open_instance(f"{path}/{name}")
            assert client.holding.wait(30)
            rest = [n.removesuffix(".dcm") for n in names[2:]]
            assert all(cache.peek(tree.instance_key(sop)) is None for sop in rest)
            hold.set()
            assert tree.background.join(30)
            assert all(cache.peek(tree.instance_key(sop)) is not None for sop in rest)
        finally:
            hold.set()
            tree.close()
    assert not set(client.singles) & set(rest) and not client.hashes


@pytest.mark.parametrize("verify", [False, True])
def test_a_zip_without_md5hashes_csv_is_checked_as_getsingleimage_is(
    archive_server: ArchiveServer, cache: InstanceCache, verify: bool
) -> None:
    """No md5hashes.csv (v3, or a server that ignores the request): the members are filed on the DICOM
    check alone, or with ``verify_md5`` once getM5HashForImage confirms each."""
    series = one_series(archive_server, RIDER)
    with api_client(archive_server.url, "v1") as real:
        client = ZipTampering(real, csv=False)
        tree = uid_tree(client, cache, verify_md5=verify)
        try:
            opened = walk(tree, series_path(series))
            assert tree.background.join(30)
        finally:
            tree.close()
    for name, local in opened:
        assert local.read_bytes() == archive_server.archive.instance_bytes(name.removesuffix(".dcm"))
    assert len(client.singles) <= 2  # the opens before the walk was recognised
    if verify:
        assert set(client.hashes) == {i.sop_instance_uid for i in series.instances}
    else:
        assert not client.hashes


class AlteringClient(ZipTampering):
    """getSingleImage answers with altered bytes (length kept); the MD5 endpoint tells the truth."""

    def download_instance(self, series_uid: str, sop_uid: str, out: BinaryIO) -> int:
        from nbiafs.server.faults import corrupt

        self.singles[sop_uid] += 1
        buf = io.BytesIO()
        self._client.download_instance(series_uid, sop_uid, buf)
        return out.write(corrupt(buf.getvalue()))


@pytest.mark.parametrize("verify", [False, True])
def test_verify_md5_refuses_altered_single_images(
    archive_server: ArchiveServer, cache: InstanceCache, verify: bool
) -> None:
    series = one_series(archive_server, RIDER)
    sop = series.instances[0].sop_instance_uid
    with api_client(archive_server.url, "v1") as real:
        client = AlteringClient(real)
        tree = uid_tree(client, cache, verify_md5=verify, readahead=0)
        try:
            if verify:
                with pytest.raises(BadResponseError, match="MD5"):
                    tree.open_instance(f"{series_path(series)}/{sop}.dcm")
                assert cache.peek(tree.instance_key(sop)) is None
            else:
                local, _ = tree.open_instance(f"{series_path(series)}/{sop}.dcm")
                assert local.read_bytes() != archive_server.archive.instance_bytes(sop)  # cannot be checked
        finally:
            tree.close()
    assert client.hashes[sop] == (1 if verify else 0)


def test_a_failing_zip_is_never_a_readers_error(archive_server: ArchiveServer, cache: InstanceCache) -> None:
    series = one_series(archive_server, RIDER)
    with api_client(archive_server.url, "v1") as real:
        client = ZipTampering(real)

        def broken(series_uid: str) -> Iterator[bytes]:
            raise UnavailableError("getImage: connection reset (injected)")
            yield b""  # pragma: no cover

        client.stream_series = broken  # type: ignore[method-assign]
        tree = uid_tree(client, cache)
        try:
            opened = walk(tree, series_path(series))
        finally:
            tree.close()
    assert len(opened) == series.image_count
    assert tree.connectivity.online  # a failed ZIP says nothing of the server being reachable


class CountingClient:
    """A fake archive of one collection, 3 patients x 1 study x 2 series x 12 instances of 300 KiB (too large
    for a ZIP); counts concurrent getSingleImage calls."""

    def __init__(self, max_connections: int, delay: float = 0.02) -> None:
        from nbiafs.api.records import Patient, Series, Study

        self.settings = ClientSettings(max_connections=max_connections)
        self.delay = delay
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0  # concurrent getSingleImage calls from background threads
        self.calls: Counter[tuple[str, ...]] = Counter()
        self.patients_ = [Patient(f"P{p}", "C", raw={}) for p in range(3)]
        self.studies_ = {f"P{p}": [Study(f"1.{p}", f"P{p}", "C", raw={})] for p in range(3)}
        self.series_ = {
            f"P{p}": [
                Series(
                    f"1.{p}.{s}", f"1.{p}", "C", f"P{p}", image_count=12, file_size=12 * 300 * 1024, raw={}
                )
                for s in range(2)
            ]
            for p in range(3)
        }

    @property
    def scope(self) -> str:
        return "http://fake/api|"

    def _count(self, *key: str) -> None:
        with self._lock:
            self.calls[key] += 1

    def renew_token(self) -> bool:
        return False

    def collections(self) -> list[str]:
        self._count("collections")
        return ["C"]

    def patients(self, collection: str | None = None) -> list[Any]:
        self._count("patients", str(collection))
        return list(self.patients_)

    def studies(self, collection: str, patient_id: str | None = None) -> list[Any]:
        self._count("studies", str(patient_id))
        return list(self.studies_[str(patient_id)])

    def series(self, collection: str | None = None, patient_id: str | None = None, **_: Any) -> list[Any]:
        self._count("series", str(patient_id))
        return list(self.series_[str(patient_id)])

    def updated_series(self, since: Any) -> list[Any]:
        return []

    def sop_instance_uids(self, series_instance_uid: str) -> list[str]:
        self._count("sops", series_instance_uid)
        return [f"{series_instance_uid}.{i}" for i in range(10, 22)]

    def download_instance(self, series_instance_uid: str, sop_instance_uid: str, out: BinaryIO) -> int:
        from tests.fs.helpers import dicom_bytes

        self._count("instance", sop_instance_uid)
        background = threading.current_thread().name.startswith("nbiafs-background")
        with self._lock:
            self.running += background
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.delay)
            return out.write(dicom_bytes(sop_instance_uid))
        finally:
            with self._lock:
                self.running -= background


def test_background_work_leaves_two_connections_to_readers(cache: InstanceCache) -> None:
    client = CountingClient(max_connections=5)
    tree = ArchiveTree(client, cache, None, TreeSettings(layout="uid"))
    try:
        walk(tree, "/C/P0/1.0/1.0.0", count=2)  # starts the read-ahead of the other 10
        assert tree.background.workers == 3
        assert tree.background.join(30)
    finally:
        tree.close()
    assert client.peak == 3  # read-ahead ran wide, but within max_connections - 2
    assert all(n == 1 for key, n in client.calls.items() if key[0] == "instance")


def test_walking_into_the_next_series_fetches_the_one_after(cache: InstanceCache) -> None:
    client = CountingClient(max_connections=8, delay=0.0)
    tree = ArchiveTree(client, cache, None, TreeSettings(layout="uid"))
    try:
        walk(tree, "/C/P0/1.0/1.0.0")  # the whole first series
        assert tree.background.join(30)
        assert client.calls[("sops", "1.0.1")] == 0  # one series read: nothing ahead yet
        walk(tree, "/C/P0/1.0/1.0.1", count=2)  # into the next one
        assert tree.background.join(30)
        # The series after it (the next patient's first) is listed and its first instances are fetched.
        assert client.calls[("sops", "1.1.0")] == 1
        assert client.calls[("instance", "1.1.0.10")] == 1
        walk(tree, "/C/P1/1.1/1.1.0")
        walk(tree, "/C/P1/1.1/1.1.1")
        assert tree.background.join(30)
    finally:
        tree.close()
    assert all(n == 1 for n in client.calls.values() if n)  # one request per listing and per instance
    assert max(client.calls.values()) == 1


def test_recursive_walk_prefetches_listings_once_each(cache: InstanceCache) -> None:
    client = CountingClient(max_connections=8, delay=0.0)
    tree = ArchiveTree(client, cache, None, TreeSettings(layout="uid"))

    def ls_r(path: str) -> None:
        for name in tree.listdir(path):
            child = f"{path.rstrip('/')}/{name}"
            if (path.count("/") < 4 or path == "/") and tree.lookup(child).is_dir:
                ls_r(child)

    try:
        tree.listdir("/C")
        tree.listdir("/C/P0")
        tree.listdir("/C/P1")  # a walk of /C: its subtree is listed ahead of the walker
        assert tree.background.join(30)
        assert all(client.calls[("sops", f"1.{p}.{s}")] == 1 for p in range(3) for s in range(2))
        before = sum(client.calls.values())
        ls_r("/")
        assert sum(client.calls.values()) == before  # nothing left for the walker to ask
    finally:
        tree.close()
    assert max(client.calls.values()) == 1


def test_listing_a_study_prefetches_its_first_series(cache: InstanceCache) -> None:
    client = CountingClient(max_connections=8, delay=0.0)
    tree = ArchiveTree(client, cache, None, TreeSettings(layout="uid"))
    try:
        tree.listdir("/C/P2/1.2")
        assert tree.background.join(30)
        assert client.calls[("sops", "1.2.0")] == 1 and client.calls[("sops", "1.2.1")] == 0
        tree.listdir("/C/P2/1.2/1.2.0")
        assert client.calls[("sops", "1.2.0")] == 1
    finally:
        tree.close()


def test_readahead_zero_prefetches_nothing(cache: InstanceCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nbiafs.fs.tree, "ZIP_MAX_AVERAGE", 1 << 30)
    client = CountingClient(max_connections=8, delay=0.0)
    tree = ArchiveTree(client, cache, None, TreeSettings(layout="uid", readahead=0))
    try:
        tree.listdir("/C")
        tree.listdir("/C/P0")
        tree.listdir("/C/P0/1.0")
        walk(tree, "/C/P0/1.0/1.0.0", count=3)
        assert tree.background.join(30)
    finally:
        tree.close()
    assert sum(n for key, n in client.calls.items() if key[0] == "instance") == 3
    assert client.calls[("sops", "1.0.1")] == 0

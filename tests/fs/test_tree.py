"""ArchiveTree against a small fake client: names, request counts, caches, single flight, sizes, xattrs."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from typing import Any, BinaryIO, TypeVar

import pytest

from nbiafs.api.records import Patient, Series, Study
from nbiafs.errors import AccessDeniedError, NotFoundError, ServerError
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.listing_store import MetaStore
from nbiafs.fs.tree import DEFAULT_INSTANCE_SIZE, ArchiveTree, Node
from nbiafs.settings import TreeSettings
from tests.fs.helpers import Calls, FakeClock, dicom_bytes, in_threads

C1 = "RIDER Lung CT"
C2 = "CHEST/ABD"
RESTRICTED = "SECRET"
STUDY1 = "1.2.3.1.11111"
STUDY2 = "1.2.3.2.22222"
SEG_A = "1.2.3.1.7.55555"
SEG_B = "1.2.3.1.8.55555"
CT = "1.2.3.1.9.33333"
OTHER = "1.2.3.5.9.44444"
RELEASED = dt.datetime(2020, 5, 17, 10, 30)
API_URL = "http://fake/nbia-api/services/v2"

T = TypeVar("T")


def segmentation(uid: str, file_size: int) -> Series:
    """One of the patient's two SEG series of study 1 (same number and description, one image each)."""
    return Series(
        uid,
        STUDY1,
        C1,
        "0042",
        modality="SEG",
        series_number=1000,
        series_description="Segmentation",
        image_count=1,
        file_size=file_size,
        raw={"Modality": "SEG"},
    )


class FakeClient:
    """An in-memory NBIA archive that counts every call (thread-safe) and can be slowed down or broken.

    Implements :class:`nbiafs.fs.protocols.ArchiveClient`.
    """

    def __init__(self, user: str = "alice", delay: float = 0.0) -> None:
        self.user = user
        self.delay = delay
        self.calls: Calls[tuple[Any, ...]] = Calls()
        self.fail: Exception | None = None
        self.reverse = False
        self.collections_data = [C1, C2] + ([RESTRICTED] if user == "alice" else [])
        self.patients_data = {
            C1: [Patient("0042", C1, raw={"PatientId": "0042", "Collection": C1, "PatientSex": "F"})],
            C2: [Patient("p/1", C2, raw={"PatientId": "p/1", "Collection": C2})],
            RESTRICTED: [Patient("s1", RESTRICTED, raw={"PatientId": "s1"})],
        }
        self.studies_data = {
            (C1, "0042"): [
                Study(
                    STUDY1,
                    "0042",
                    C1,
                    study_date=dt.datetime(2003, 12, 9),
                    study_description="CHEST/ABD W CONTRAST",
                    study_id="7",
                    raw={"StudyInstanceUID": STUDY1, "StudyDescription": "CHEST/ABD W CONTRAST"},
                ),
                Study(STUDY2, "0042", C1, raw={"StudyInstanceUID": STUDY2}),
            ],
            (C2, "p/1"): [Study("9.9.1", "p/1", C2, raw={})],
        }
        self.series_data = {
            (C1, "0042"): [
                segmentation(SEG_A, 100),
                segmentation(SEG_B, 200),
                Series(
                    CT,
                    STUDY1,
                    C1,
                    "0042",
                    modality="CT",
                    series_number=2,
                    series_description="AX 5mm",
                    image_count=3,
                    file_size=1000,
                    license_name="CC BY 4.0",
                    date_released=RELEASED,
                    raw={"Modality": "CT", "Series Description": "AX 5mm", "ImageCount": 3, "FileSize": 1000},
                ),
                Series(OTHER, STUDY2, C1, "0042", modality="MR", raw={"Modality": "MR"}),
            ],
            (C2, "p/1"): [Series("9.9.1.1", "9.9.1", C2, "p/1", modality="CR", raw={})],
        }
        self.updated: list[Series] = []  # what getUpdatedSeries answers
        self.sops = {
            SEG_A: ["1.2.3.1.7.55555.1"],
            SEG_B: ["1.2.3.1.8.55555.1"],
            CT: ["1.2.3.1.9.33333.1", "1.2.3.1.9.33333.2", "1.2.3.1.9.33333.3"],
            OTHER: ["1.2.3.5.9.44444.1"],
            "9.9.1.1": ["9.9.1.1.1"],
        }

    @property
    def scope(self) -> str:
        return f"{API_URL}|{self.user}"

    def _call(self, *key: Any) -> None:
        self.calls.add(key)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail

    def _order(self, rows: list[T]) -> list[T]:
        return list(reversed(rows)) if self.reverse else list(rows)

    def total(self) -> int:
        return self.calls.total()

    def collections(self) -> list[str]:
        self._call("collections")
        return self._order(self.collections_data)

    def patients(self, collection: str | None = None) -> list[Patient]:
        self._call("patients", collection)
        assert collection is not None, "the tree must never list every patient of the archive"
        return self._order(self.patients_data.get(collection, []))

    def studies(self, collection: str, patient_id: str | None = None) -> list[Study]:
        self._call("studies", collection, patient_id)
        return self._order(self.studies_data.get((collection, patient_id or ""), []))

    def series(
        self,
        collection: str | None = None,
        patient_id: str | None = None,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
    ) -> list[Series]:
        self._call("series", collection, patient_id, study_instance_uid, series_instance_uid)
        if series_instance_uid is not None:
            return [
                s
                for rows in self.series_data.values()
                for s in rows
                if s.series_instance_uid == series_instance_uid
            ]
        assert collection is not None and patient_id is not None, "never list a whole collection's series"
        return self._order(self.series_data.get((collection, patient_id), []))

    def updated_series(self, since: dt.date) -> list[Series]:
        self._call("updated", since)
        return list(self.updated)

    def sop_instance_uids(self, series_instance_uid: str) -> list[str]:
        self._call("sops", series_instance_uid)
        return self._order(self.sops.get(series_instance_uid, []))

    def download_instance(self, series_instance_uid: str, sop_instance_uid: str, out: BinaryIO) -> int:
        self._call("download", sop_instance_uid)
        if series_instance_uid == OTHER:
            raise AccessDeniedError("The user has not been granted the access", status=400)
        data = dicom_bytes(sop_instance_uid)
        out.write(data)
        return len(data)

    def renew_token(self) -> bool:
        self._call("renew")
        return True


STUDY1_NAME = "12-09-2003-7-CHESTABD W CONTRAST-11111"
SERIES_DIR = f"/{C1}/0042/{STUDY1_NAME}"
CT_NAME = "2.000000-AX 5mm-33333"


def test_descriptive_tree(cache: InstanceCache) -> None:
    tree = ArchiveTree(FakeClient(), cache, None, TreeSettings())
    assert tree.listdir("/") == sorted([C1, "CHEST_ABD", RESTRICTED])
    assert tree.listdir(f"/{C1}") == ["0042"]
    assert tree.listdir(f"/{C1}/0042") == [STUDY1_NAME, "NA-NA-22222"]
    assert tree.listdir(SERIES_DIR) == sorted(
        ["1000.000000-Segmentation-7.55555", "1000.000000-Segmentation-8.55555", CT_NAME]
    )
    assert tree.listdir(f"{SERIES_DIR}/{CT_NAME}") == [f"1.2.3.1.9.33333.{i}.dcm" for i in (1, 2, 3)]
    assert tree.listdir("/CHEST_ABD") == ["p_1"]
    assert tree.lookup("/") == Node("root", "", True, 0, True, 0.0)
    assert tree.lookup("/CHEST_ABD/p_1").kind == "patient"


def test_uid_layout(cache: InstanceCache) -> None:
    tree = ArchiveTree(FakeClient(), cache, None, TreeSettings(layout="uid"))
    assert tree.listdir(f"/{C1}/0042") == [STUDY1, STUDY2]
    assert tree.listdir(f"/{C1}/0042/{STUDY1}") == sorted([SEG_A, SEG_B, CT])
    assert tree.lookup(f"/{C1}/0042/{STUDY1}/{CT}/1.2.3.1.9.33333.2.dcm").kind == "instance"


def test_names_are_stable_whatever_the_listing_order(cache: InstanceCache) -> None:
    forward = FakeClient()
    backward = FakeClient()
    backward.reverse = True
    t1 = ArchiveTree(forward, cache, None, TreeSettings())
    t2 = ArchiveTree(backward, cache, None, TreeSettings())
    for path in ("/", f"/{C1}/0042", SERIES_DIR, f"{SERIES_DIR}/{CT_NAME}"):
        assert t1.listdir(path) == t2.listdir(path)
    seg = t1.lookup(f"{SERIES_DIR}/1000.000000-Segmentation-8.55555")
    assert seg.kind == "series"


def test_lookup_lists_only_the_directories_on_the_path(cache: InstanceCache) -> None:
    client = FakeClient()
    tree = ArchiveTree(client, cache, None, TreeSettings())
    tree.lookup(f"/{C1}/0042")
    assert client.calls == Counter({("collections",): 1, ("patients", C1): 1})
    tree.lookup(f"{SERIES_DIR}/{CT_NAME}/1.2.3.1.9.33333.1.dcm")
    assert client.calls == Counter(
        {
            ("collections",): 1,
            ("patients", C1): 1,
            ("studies", C1, "0042"): 1,
            ("series", C1, "0042", None, None): 1,
            ("sops", CT): 1,
        }
    )
    # The other study of the patient is served by the same getSeries answer.
    assert tree.listdir(f"/{C1}/0042/NA-NA-22222") == ["NA-44444"]
    tree.lookup(f"/{C1}/0042/NA-NA-22222/NA-44444")
    assert client.calls[("series", C1, "0042", None, None)] == 1
    assert client.total() == 5


def test_single_flight(cache: InstanceCache) -> None:
    client = FakeClient(delay=0.3)
    tree = ArchiveTree(client, cache, None, TreeSettings())
    results, errors = in_threads(*[lambda: tree.listdir(f"/{C1}/0042")] * 8)
    assert not errors
    assert len(results) == 8 and all(r == results[0] for r in results)
    assert client.calls[("collections",)] == 1
    assert client.calls[("patients", C1)] == 1
    assert client.calls[("studies", C1, "0042")] == 1


def test_negative_cache_and_relisting(cache: InstanceCache) -> None:
    client = FakeClient()
    clock = FakeClock()
    tree = ArchiveTree(client, cache, None, TreeSettings(negative_ttl=0.3), clock=clock)
    tree.listdir(f"/{C1}")
    before = client.total()
    with pytest.raises(NotFoundError):
        tree.lookup(f"/{C1}/nobody")
    with pytest.raises(NotFoundError):
        tree.lookup(f"/{C1}/nobody")
    assert client.total() == before  # the fresh listing answers; the miss is remembered
    # A patient published later shows up through one re-listing once the listing is older than negative_ttl.
    client.patients_data[C1].append(Patient("new", C1, raw={}))
    clock.advance(0.35)
    assert tree.lookup(f"/{C1}/new").kind == "patient"
    assert client.calls[("patients", C1)] == 2
    with pytest.raises(NotFoundError):
        tree.lookup(f"/{C1}/still-nobody")  # the listing is fresh again: no request
    with pytest.raises(NotFoundError):
        tree.lookup(f"/{C1}/still-nobody")
    assert client.calls[("patients", C1)] == 2


def test_remount_on_the_same_metastore_makes_no_request(cache: InstanceCache, store: MetaStore) -> None:
    paths = ["/", f"/{C1}", f"/{C1}/0042", SERIES_DIR, f"{SERIES_DIR}/{CT_NAME}"]
    first = FakeClient()
    tree = ArchiveTree(first, cache, store, TreeSettings())
    listings = [tree.listdir(p) for p in paths]
    node = tree.lookup(f"{SERIES_DIR}/{CT_NAME}/1.2.3.1.9.33333.1.dcm")
    assert tree.background.join(10)
    # five listings, and the first series' SOP list prefetched when its study was listed
    first_series = listings[3][0]
    assert first_series != CT_NAME and first.total() == 6
    listings.append(tree.listdir(f"{SERIES_DIR}/{first_series}"))
    paths.append(f"{SERIES_DIR}/{first_series}")
    assert first.total() == 6

    second = FakeClient()
    again = ArchiveTree(second, cache, MetaStore(store.directory), TreeSettings())
    assert [again.listdir(p) for p in paths] == listings
    assert again.lookup(f"{SERIES_DIR}/{CT_NAME}/1.2.3.1.9.33333.1.dcm") == node
    assert again.xattrs(f"{SERIES_DIR}/{CT_NAME}") == tree.xattrs(f"{SERIES_DIR}/{CT_NAME}")
    assert second.total() == 0

    # Another account on the same server never sees alice's listings.
    guest = FakeClient(user="nbia_guest")
    guest_tree = ArchiveTree(guest, cache, store, TreeSettings())
    assert RESTRICTED not in guest_tree.listdir("/")
    assert guest.calls[("collections",)] == 1

    # Expired listings are fetched again.
    stale = FakeClient()
    stale_tree = ArchiveTree(stale, cache, store, TreeSettings(listing_ttl=0.0))
    stale_tree.listdir("/")
    assert stale.calls[("collections",)] == 1


def test_sizes_estimated_then_exact(cache: InstanceCache) -> None:
    client = FakeClient()
    tree = ArchiveTree(client, cache, None, TreeSettings())
    path = f"{SERIES_DIR}/{CT_NAME}/1.2.3.1.9.33333.1.dcm"
    estimate = tree.lookup(path)
    assert (estimate.size, estimate.exact_size, estimate.is_dir) == (334, False, False)  # ceil(1000 / 3)
    assert client.calls[("download", "1.2.3.1.9.33333.1")] == 0
    for name in tree.listdir(f"{SERIES_DIR}/{CT_NAME}"):
        assert not tree.lookup(f"{SERIES_DIR}/{CT_NAME}/{name}").exact_size
    assert not any(k[0] == "download" for k in client.calls)  # stat never downloads
    local, fetched = tree.open_instance(path)
    assert fetched and local.read_bytes()[128:132] == b"DICM"
    exact = tree.lookup(path)
    assert (exact.size, exact.exact_size) == (local.stat().st_size, True)
    assert tree.open_instance(path) == (local, False)
    assert client.calls[("download", "1.2.3.1.9.33333.1")] == 1
    # A series without FileSize/ImageCount gets the fallback.
    other = tree.lookup(f"/{C1}/0042/NA-NA-22222/NA-44444/1.2.3.5.9.44444.1.dcm")
    assert (other.size, other.exact_size) == (DEFAULT_INSTANCE_SIZE, False)


def test_mtimes_come_from_the_data(cache: InstanceCache) -> None:
    tree = ArchiveTree(FakeClient(), cache, None, TreeSettings())
    released = RELEASED.replace(tzinfo=dt.timezone.utc).timestamp()
    study_date = dt.datetime(2003, 12, 9, tzinfo=dt.timezone.utc).timestamp()
    assert tree.lookup(f"{SERIES_DIR}/{CT_NAME}").mtime == released
    assert tree.lookup(f"{SERIES_DIR}/{CT_NAME}/1.2.3.1.9.33333.3.dcm").mtime == released
    assert tree.lookup(SERIES_DIR).mtime == study_date
    # A series without a date of its own takes its study's.
    assert tree.lookup(f"{SERIES_DIR}/1000.000000-Segmentation-7.55555").mtime == study_date
    assert tree.lookup(f"/{C1}").mtime == 0.0


def test_xattrs(cache: InstanceCache) -> None:
    tree = ArchiveTree(FakeClient(), cache, None, TreeSettings())
    assert tree.xattrs(f"/{C1}") == {"user.nbia.Collection": C1.encode()}
    patient = tree.xattrs(f"/{C1}/0042")
    assert patient["user.nbia.PatientId"] == b"0042" and patient["user.nbia.PatientSex"] == b"F"
    series = tree.xattrs(f"{SERIES_DIR}/{CT_NAME}")
    assert series["user.nbia.Modality"] == b"CT"
    assert series["user.nbia.SeriesDescription"] == b"AX 5mm"  # "Series Description": space removed
    assert series["user.nbia.ImageCount"] == b"3"
    assert series["user.nbia.SeriesInstanceUID"] == CT.encode()
    inst = tree.xattrs(f"{SERIES_DIR}/{CT_NAME}/1.2.3.1.9.33333.2.dcm")
    assert inst["user.nbia.SOPInstanceUID"] == b"1.2.3.1.9.33333.2"
    assert inst["user.nbia.SeriesInstanceUID"] == CT.encode()
    assert inst["user.nbia.StudyInstanceUID"] == STUDY1.encode()
    assert inst["user.nbia.PatientID"] == b"0042"
    assert inst["user.nbia.Collection"] == C1.encode()
    assert inst["user.nbia.Modality"] == b"CT"
    assert inst["user.nbia.LicenseName"] == b"CC BY 4.0"
    assert all(isinstance(v, bytes) for v in inst.values())
    with pytest.raises(NotFoundError):
        tree.xattrs(f"/{C1}/nobody")


def test_errors(cache: InstanceCache) -> None:
    client = FakeClient()
    tree = ArchiveTree(client, cache, None, TreeSettings())
    file_path = f"{SERIES_DIR}/{CT_NAME}/1.2.3.1.9.33333.2.dcm"
    with pytest.raises(NotFoundError):
        tree.listdir(file_path)
    with pytest.raises(NotFoundError):
        tree.lookup(file_path + "/below")
    with pytest.raises(NotFoundError):
        tree.open_instance(SERIES_DIR)
    with pytest.raises(NotFoundError):
        tree.lookup("/nope/x/y")
    with pytest.raises(AccessDeniedError):
        tree.open_instance(f"/{C1}/0042/NA-NA-22222/NA-44444/1.2.3.5.9.44444.1.dcm")
    broken = FakeClient()
    broken.fail = ServerError("HTTP 503", status=503)
    with pytest.raises(ServerError):
        ArchiveTree(broken, cache, None, TreeSettings()).listdir("/")


def test_collections_option(cache: InstanceCache) -> None:
    client = FakeClient(user="nbia_guest")
    options = TreeSettings(collections=("rider lung ct", RESTRICTED))
    tree = ArchiveTree(client, cache, None, options)
    assert tree.listdir("/") == [C1]  # matched case-insensitively; the invisible one is absent
    with pytest.raises(NotFoundError):
        tree.lookup(f"/{RESTRICTED}")
    with pytest.raises(NotFoundError):
        tree.lookup("/CHEST_ABD")


def test_series_filter(cache: InstanceCache, store: MetaStore) -> None:
    client = FakeClient()
    options = TreeSettings(series_filter=frozenset({CT, "9.9.9.unknown"}))
    tree = ArchiveTree(client, cache, store, options)
    assert tree.listdir("/") == [C1]
    assert tree.listdir(f"/{C1}") == ["0042"]
    assert tree.listdir(f"/{C1}/0042") == [STUDY1_NAME]
    assert tree.listdir(SERIES_DIR) == [CT_NAME]
    assert len(tree.listdir(f"{SERIES_DIR}/{CT_NAME}")) == 3
    assert tree.xattrs(f"/{C1}/0042")["user.nbia.PatientID"] == b"0042"
    # Never a whole collection: no getPatient, no getSeries by collection.
    assert all(k[0] != "patients" for k in client.calls)
    assert all(k[0] != "series" or k[4] is not None for k in client.calls)
    assert client.calls[("series", None, None, None, CT)] == 1
    with pytest.raises(NotFoundError):
        tree.lookup(f"{SERIES_DIR}/1000.000000-Segmentation-7.55555")
    # A remount with the same filter lists from the metastore; the empty answer was never stored.
    second = FakeClient()
    again = ArchiveTree(second, cache, MetaStore(store.directory), options)
    assert again.listdir(SERIES_DIR) == [CT_NAME]
    assert second.calls == Counter({("series", None, None, None, "9.9.9.unknown"): 1})


def test_tiny_memory_falls_back_to_the_metastore(
    cache: InstanceCache, store: MetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbiafs.fs.listings
    import nbiafs.fs.tree

    monkeypatch.setattr(nbiafs.fs.listings, "_MEMORY_ROWS", 1)
    monkeypatch.setattr(nbiafs.fs.tree, "_MEMORY_DIRS", 1)
    client = FakeClient()
    tree = ArchiveTree(client, cache, store, TreeSettings())
    first = tree.listdir(SERIES_DIR)
    assert tree.background.join(10)  # the first series' SOP list, prefetched
    calls = client.total()
    for _ in range(3):
        assert tree.listdir(SERIES_DIR) == first  # answers too big for memory come back from disk
    assert client.total() == calls

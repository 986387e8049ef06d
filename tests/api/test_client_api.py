"""Every client method against the bundled server, on the v1, v2, v3 and v4 flavours; restricted visibility.

Expected values come from the server's own archive model (``srv.archive``), never from constants.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from nbiafs.api.client import NbiaClient
from nbiafs.api.credentials import Credentials
from nbiafs.errors import AccessDeniedError, BadRequestError, ConfigError, NotFoundError
from nbiafs.server import ArchiveServer, SeriesInfo
from tests.helpers import ALICE, ALICE_PASSWORD, API_KEY, RESTRICTED, api_client

FLAVOURS = ("v1", "v2", "v3", "v4")
MR = "NBIAFS-MR-Brain"
CT = "RIDER Synth CT"


def make_client(srv: ArchiveServer, flavour: str, *, alice: bool = False) -> NbiaClient:
    """A client of ``srv`` speaking ``flavour`` (guest / anonymous unless ``alice``)."""
    if flavour == "v3":
        return api_client(srv.url, "v3", Credentials("", "", API_KEY))
    creds = Credentials(ALICE, ALICE_PASSWORD) if alice and flavour != "v4" else None
    return api_client(srv.url, flavour, creds)


@pytest.fixture(params=FLAVOURS)
def client(request: pytest.FixtureRequest, archive_server: ArchiveServer) -> Iterator[NbiaClient]:
    c = make_client(archive_server, request.param)
    try:
        yield c
    finally:
        c.close()


def all_series(srv: ArchiveServer, collection: str) -> list[SeriesInfo]:
    coll = srv.archive.collections[collection]
    return [s for p in coll.patients for st in p.studies for s in st.series]


def public_collections(srv: ArchiveServer) -> set[str]:
    return {name for name in srv.archive.collections if name != RESTRICTED}


def test_value_lists(client: NbiaClient, archive_server: ArchiveServer) -> None:
    srv = archive_server
    assert set(client.collections()) == public_collections(srv)
    series = all_series(srv, MR)
    assert sorted(client.modalities(collection=MR)) == sorted({s.modality for s in series})
    assert client.modalities(collection=MR, body_part="LEG") == ["MR"]
    parts = client.body_parts(collection=MR)
    assert set(parts) == {s.body_part_examined for s in series if s.body_part_examined}
    assert "CHEST/ABD" not in parts and "" not in parts
    makers = client.manufacturers(collection=MR, modality="MR")
    assert set(makers) == {s.manufacturer for s in series if s.modality == "MR" and s.manufacturer}
    assert any(m.startswith("https://") for m in makers)
    # A collection with a series lacking BodyPartExamined: the server sends {} first; it is skipped.
    pet_parts = client.body_parts(collection="NBIAFS-PET-CR")
    assert pet_parts and all(pet_parts)


def test_patients_studies_series(client: NbiaClient, archive_server: ArchiveServer) -> None:
    srv = archive_server
    coll = srv.archive.collections[CT]
    patients = client.patients(collection=CT)
    assert sorted(p.patient_id for p in patients) == sorted(p.patient_id for p in coll.patients)
    assert "0042" in {p.patient_id for p in patients}  # numeric ID stays a string with its zeros
    assert all(p.collection == CT for p in patients)
    assert {p.patient_id for p in client.patients()} >= {p.patient_id for p in coll.patients}

    by_modality = client.patients_by_modality(MR, "SEG")
    expected = {
        p.patient_id
        for p in srv.archive.collections[MR].patients
        if any(s.modality == "SEG" for st in p.studies for s in st.series)
    }
    assert {p.patient_id for p in by_modality} == expected and all(p.collection == MR for p in by_modality)

    first = coll.patients[0]
    studies = client.studies(CT, patient_id=first.patient_id.lower())  # PatientID matches case-insensitively
    assert [s.study_instance_uid for s in studies] == [st.study_instance_uid for st in first.studies]
    st0 = first.studies[0]
    # v4 writes every date as MM-dd-yyyy (day only, facts §3); the others keep the time.
    got_date = studies[0].study_date
    want_date = st0.study_date
    if client.profile.flavour == "v4" and want_date is not None:
        want_date = (
            dt.datetime.combine(want_date.date(), dt.time())
            if isinstance(want_date, dt.datetime)
            else want_date
        )
    assert got_date == want_date and studies[0].series_count == len(st0.series)
    assert client.studies(CT, study_instance_uid=st0.study_instance_uid)[0].patient_id == first.patient_id

    series = client.series(collection=CT)
    expected_series = {s.series_instance_uid: s for s in all_series(srv, CT)}
    assert {s.series_instance_uid for s in series} == set(expected_series)
    for s in series:
        info = expected_series[s.series_instance_uid]
        assert (s.image_count, s.file_size, s.series_number) == (
            info.image_count,
            info.file_size,
            info.series_number,
        )
        stamp = info.timestamp
        if client.profile.flavour == "v4" and stamp is not None:
            stamp = dt.datetime.combine(stamp.date(), dt.time())
        assert s.timestamp == stamp and s.collection_uri is not None
        assert s.patient_id in {p.patient_id for p in coll.patients}
    one = next(iter(expected_series.values()))
    assert [s.series_instance_uid for s in client.series(series_instance_uid=one.series_instance_uid)] == [
        one.series_instance_uid
    ]
    assert {s.modality for s in client.series(collection=MR, modality="SEG")} == {"SEG"}


def test_series_level_endpoints(client: NbiaClient, archive_server: ArchiveServer) -> None:
    info = all_series(archive_server, MR)[0]
    uid = info.series_instance_uid
    md = client.series_metadata(uid)
    assert len(md) == 1
    assert (md[0].series_instance_uid, md[0].number_of_images, md[0].file_size) == (
        uid,
        info.image_count,
        info.file_size,
    )
    assert md[0].series_number == info.series_number and md[0].subject_id == info.patient_id
    assert client.series_metadata("1.2.3.404") == []

    size = client.series_size(uid)
    assert (size.total_size_in_bytes, size.object_count) == (info.file_size, info.image_count)
    with pytest.raises(NotFoundError):
        client.series_size("1.2.3.404")

    uids = client.sop_instance_uids(uid)
    assert uids == [i.sop_instance_uid for i in info.instances]
    assert client.sop_instance_uids("1.2.3.404") == []


def test_downloads(client: NbiaClient, archive_server: ArchiveServer) -> None:
    srv = archive_server
    info = all_series(srv, CT)[0]
    inst = info.instances[1]
    out = io.BytesIO()
    n = client.download_instance(info.series_instance_uid, inst.sop_instance_uid, out)
    assert out.getvalue() == srv.archive.instance_bytes(inst.sop_instance_uid) and n == len(out.getvalue())
    # An unknown instance is NBIA's HTTP 500, which also means "refused": an access error, not retried.
    with pytest.raises(AccessDeniedError):
        client.download_instance(info.series_instance_uid, "1.2.3.404", io.BytesIO())

    small = min(all_series(srv, MR), key=lambda s: s.image_count)
    zbuf = io.BytesIO()
    assert client.download_series(small.series_instance_uid, zbuf) == len(zbuf.getvalue())
    with zipfile.ZipFile(zbuf) as zf:
        names = zf.namelist()
        assert names[0] == "LICENSE" and len(names) == small.image_count + 1
        payloads = {zf.read(n) for n in names[1:]}
    assert payloads == {srv.archive.instance_bytes(i.sop_instance_uid) for i in small.instances}

    mbuf = io.BytesIO()
    client.download_series(small.series_instance_uid, mbuf, md5=True)
    with zipfile.ZipFile(mbuf) as zf:
        lines = zf.read("md5hashes.csv").decode().split()
        assert lines[0] == "Filename,MD5Hash"
        for line in lines[1:]:
            name, digest = line.split(",")
            assert hashlib.md5(zf.read(name)).hexdigest() == digest

    if client.profile.flavour != "v3":
        nbuf = io.BytesIO()
        client.download_series(small.series_instance_uid, nbuf, new_file_names=True)
        with zipfile.ZipFile(nbuf) as zf:
            assert all("-" in n for n in zf.namelist() if n.endswith(".dcm"))


def test_cart_and_changes(client: NbiaClient, archive_server: ArchiveServer) -> None:
    srv = archive_server
    (cart, uids), *_ = srv.archive.default_carts.items()
    got = client.contents_by_name(cart)
    assert [s.series_instance_uid for s in got] == uids
    assert client.contents_by_name("no-such-cart") == []

    # Every date query compares with the series' release date (facts §4), per version's own format.
    def released_after(series: Any, day: dt.date) -> bool:
        start = dt.datetime.combine(day, dt.time())
        released = series.date_released
        return released is not None and (released > start or (on_or_after and released == start))

    # v4 New* and the retired v3 count a release on the day's first instant; v1/v2 only after it.
    on_or_after = client.profile.flavour in ("v3", "v4")
    mr = srv.archive.collections[MR]
    since = dt.date(2020, 1, 1)
    new_ids = {
        p.patient_id
        for p in mr.patients
        if any(released_after(s, since) for st in p.studies for s in st.series)
    }
    assert new_ids and new_ids != {p.patient_id for p in mr.patients}
    assert {p.patient_id for p in client.new_patients(MR, since)} == new_ids
    assert len(client.new_patients(MR, dt.date(2000, 1, 1))) == len(mr.patients)

    some = sorted(new_ids)[0]
    studies = client.new_studies(MR, since, patient_id=some)
    assert studies and {s.patient_id for s in studies} == {some}
    old = [p.patient_id for p in mr.patients if p.patient_id not in new_ids]
    assert client.new_studies(MR, since, patient_id=old[0]) == []
    assert {s.patient_id for s in client.new_studies(MR, since)} == new_ids

    day = dt.date(2014, 12, 20)
    updated = client.updated_series(day)
    expected = {
        s.series_instance_uid
        for s in srv.archive.iter_series()
        if s.collection != RESTRICTED
        and released_after(s, day)
        and (s.date_released != dt.datetime.combine(day, dt.time()) or client.profile.flavour == "v3")
    }
    assert {s.series_instance_uid for s in updated} == expected and expected


def test_endpoint_metadata(client: NbiaClient) -> None:
    if client.profile.flavour != "v3":
        with pytest.raises(ConfigError):
            client.endpoint_metadata("getSeries")
        return
    meta = client.endpoint_metadata("getPatientStudy")
    assert meta["name"] == "getPatientStudy"
    assert {p["name"] for p in meta["queryParameters"]} >= {"Collection", "PatientID"}


def test_raw_query(client: NbiaClient) -> None:
    rows = client.query("getCollectionValues", {})
    assert isinstance(rows, list) and {"Collection": MR} in rows
    if client.profile.flavour != "v4":
        text = client.query("getCollectionValues", {}, fmt="csv")
        assert isinstance(text, str) and text.splitlines()[0] == "Collection"
    with pytest.raises(BadRequestError, match="SeriesInstanceUID"):
        client.query("getSeriesSize", {})


def test_v4_rejects_unknown_parameters(archive_server: ArchiveServer) -> None:
    with (
        make_client(archive_server, "v4") as c,
        pytest.raises(BadRequestError, match="Invalid query parameter: 'Colection'"),
    ):
        c.query("getSeries", {"Colection": MR})


# --- restricted data -----------------------------------------------------------------------------------


def test_restricted_invisible_to_guest_visible_to_alice(archive_server: ArchiveServer) -> None:
    srv = archive_server
    secret = all_series(srv, RESTRICTED)[0]
    uid = secret.series_instance_uid
    sop = secret.instances[0].sop_instance_uid
    for flavour in FLAVOURS:
        with make_client(srv, flavour) as c:
            assert RESTRICTED not in c.collections(), flavour
            assert c.patients(collection=RESTRICTED) == []
            assert c.studies(RESTRICTED) == []
            assert c.series(collection=RESTRICTED) == [] and c.series(series_instance_uid=uid) == []
            assert c.modalities(collection=RESTRICTED) == []
            assert c.body_parts(collection=RESTRICTED) == [] and c.manufacturers(collection=RESTRICTED) == []
            assert c.patients_by_modality(RESTRICTED, "CT") == []
            assert c.series_metadata(uid) == [] and c.sop_instance_uids(uid) == []
            assert c.new_patients(RESTRICTED, dt.date(2000, 1, 1)) == []
            assert uid not in {s.series_instance_uid for s in c.updated_series(dt.date(2000, 1, 1))}
            if flavour == "v4":  # v1/v2 getSeriesSize checks no access (facts §3): only v4 hides the size
                with pytest.raises(NotFoundError):
                    c.series_size(uid)
            with pytest.raises(AccessDeniedError, match="refused"):  # NBIA's 500, never retried
                c.download_instance(uid, sop, io.BytesIO())
            with pytest.raises(AccessDeniedError):
                c.download_series(uid, io.BytesIO())

    with make_client(srv, "v2", alice=True) as alice:
        assert RESTRICTED in alice.collections()
        assert [p.patient_id for p in alice.patients(collection=RESTRICTED)] == [
            p.patient_id for p in srv.archive.collections[RESTRICTED].patients
        ]
        assert len(alice.studies(RESTRICTED)) == 1
        assert uid in {s.series_instance_uid for s in alice.series(collection=RESTRICTED)}
        assert alice.series_metadata(uid)[0].collection == RESTRICTED
        assert alice.series_size(uid).object_count == secret.image_count
        assert alice.sop_instance_uids(uid)[0] == sop
        out = io.BytesIO()
        alice.download_instance(uid, sop, out)
        assert out.getvalue() == srv.archive.instance_bytes(sop)
        assert alice.new_patients(RESTRICTED, dt.date(2000, 1, 1))


def test_restricted_series_in_a_cart(make_server: object) -> None:
    srv = make_server(carts={"mixed": []})  # type: ignore[operator]
    secret = all_series(srv, RESTRICTED)[0].series_instance_uid
    public = all_series(srv, MR)[0].series_instance_uid
    srv.config.carts = {"mixed": [public, secret]}
    with make_client(srv, "v2") as guest, make_client(srv, "v2", alice=True) as alice:
        assert [s.series_instance_uid for s in guest.contents_by_name("mixed")] == [public]
        assert [s.series_instance_uid for s in alice.contents_by_name("mixed")] == [public, secret]

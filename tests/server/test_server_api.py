"""The archive server's metadata API on every prefix (v1, v2, v3, v4): values, visibility, carts, v3 extras.

Expected values come from the server's own model (``srv.archive``); the shapes are checked in
test_server_shapes.py, authentication in test_server_auth.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from nbiafs.server import ArchiveServer
from tests.server.support import (
    API_KEY,
    CT,
    MR,
    RESTRICTED,
    TIMEOUT,
    login,
    public_series,
)

MakeServer = Callable[..., ArchiveServer]


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


class Api:
    """GET an endpoint on one prefix, as one user (v2) or with the api key (v3)."""

    def __init__(self, srv: ArchiveServer, http: requests.Session, prefix: str, bearer: str | None = None):
        self.srv, self.http, self.prefix, self.bearer = srv, http, prefix, bearer

    def url(self, endpoint: str) -> str:
        if self.prefix == "v3":
            if endpoint == "getContentsByName":
                return f"{self.srv.url}/services/v3/SharedList/query/ContentsByName"
            if endpoint == "getPatientByCollectionAndModality":
                endpoint = "PatientsByModality"
            return f"{self.srv.url}/services/v3/TCIA/query/{endpoint}"
        return f"{self.srv.url}/nbia-api/services/{self.prefix}/{endpoint}"

    def get(self, endpoint: str, **params: str) -> requests.Response:
        headers = {}
        if self.bearer:
            headers["Authorization"] = f"Bearer {self.bearer}"
        if self.prefix == "v3":
            headers["api_key"] = API_KEY
        return self.http.get(self.url(endpoint), params=params, headers=headers, timeout=TIMEOUT)

    def rows(self, endpoint: str, **params: str) -> list[dict[str, Any]]:
        r = self.get(endpoint, **params)
        assert r.status_code == 200, (endpoint, r.status_code, r.text)
        if not r.content:
            return []
        rows: list[dict[str, Any]] = r.json()
        return rows


@pytest.fixture(scope="module")
def guest_token(archive_server: ArchiveServer) -> str:
    return str(login(archive_server, "nbia_guest", "")["access_token"])


@pytest.fixture(params=["v1", "v2", "v3", "v4"])
def api(
    request: pytest.FixtureRequest, archive_server: ArchiveServer, http: requests.Session, guest_token: str
) -> Api:
    return Api(archive_server, http, request.param, guest_token if request.param == "v2" else None)


# -- every metadata endpoint on every prefix ---------------------------------------------------------------


def test_value_lists(api: Api, archive_server: ArchiveServer) -> None:
    public = public_series(archive_server)
    assert [r["Collection"] for r in api.rows("getCollectionValues")] == sorted(
        (c for c in archive_server.archive.collection_names() if c != RESTRICTED), key=str.casefold
    )
    assert {r["Modality"] for r in api.rows("getModalityValues")} == {s.modality for s in public}
    assert {
        r["Modality"] for r in api.rows("getModalityValues", Collection=MR, BodyPartExamined="BRAIN")
    } == {
        "MR",
        "SEG",
    }
    body_parts = api.rows("getBodyPartValues")
    assert body_parts[0] == {}  # the null first
    assert {r["BodyPartExamined"] for r in body_parts[1:]} == {
        s.body_part_examined for s in public if s.body_part_examined
    }
    makers = api.rows("getManufacturerValues")
    assert makers[0] == {}
    assert "https://www.example.org/scanners/mr-9000" in {r["Manufacturer"] for r in makers[1:]}
    assert api.rows("getManufacturerValues", Collection=MR, Modality="SEG") == [{"Manufacturer": "QIICR"}]


def test_patients_studies_series(api: Api, archive_server: ArchiveServer) -> None:
    coll = archive_server.archive.collections[CT]
    patients = api.rows("getPatient", Collection=CT)
    assert [p["PatientId"] for p in patients] == [p.patient_id for p in coll.patients]
    assert all("PatientID" not in p for p in patients)
    by_modality = api.rows("getPatientByCollectionAndModality", Collection=MR, Modality="SEG")
    assert [p["PatientId"] for p in by_modality] == ["BRAIN-001"]
    studies = api.rows("getPatientStudy", Collection=CT.lower(), PatientID="0042")
    assert len(studies) == 1 and studies[0]["PatientID"] == "0042"
    assert not {"StudyDescription", "StudyID", "StudyDate"} & set(studies[0])  # missing, not null
    series = api.rows("getSeries", Collection=CT.upper())
    assert [s["SeriesInstanceUID"] for s in series] == [
        s.series_instance_uid for s in archive_server.archive.iter_series() if s.collection == CT
    ]
    assert len(api.rows("getSeries", Collection=MR, Modality="SEG")) == 2
    assert api.rows("getSeries", Manufacturer="https://www.example.org/scanners/mr-9000")[0]["PatientID"] == (
        "BRAIN-002"
    )


def test_series_level_endpoints(api: Api, archive_server: ArchiveServer) -> None:
    info = next(s for s in archive_server.archive.iter_series() if s.collection == CT)
    uid = info.series_instance_uid
    sops = api.rows("getSOPInstanceUIDs", SeriesInstanceUID=uid)
    assert sorted(r["SOPInstanceUID"] for r in sops) == sorted(i.sop_instance_uid for i in info.instances)
    size = api.rows("getSeriesSize", SeriesInstanceUID=uid)[0]
    assert float(size["TotalSizeInBytes"]) == info.file_size and size["ObjectCount"] == info.image_count
    if api.prefix == "v4":
        r = api.http.post(api.url("getSeriesMetadata"), data={"list": uid, "format": "json"}, timeout=TIMEOUT)
        assert r.json()[0]["SeriesInstanceUID"] == uid and r.json()[0]["ImageCount"] == info.image_count
    else:
        (row,) = api.rows("getSeriesMetaData", SeriesInstanceUID=uid)
        assert row["Series UID"] == uid and row["Subject ID"] == info.patient_id
        assert row["Number of Images"] == str(info.image_count) and row["File Size"] == str(info.file_size)


def test_contents_by_name(api: Api, archive_server: ArchiveServer) -> None:
    (name, uids), *_ = archive_server.archive.default_carts.items()
    if api.prefix == "v4":
        assert api.get("getContentsByName", name=name).status_code == 404  # v1 serves it for v4 clients
        return
    rows = api.rows("getContentsByName", name=name)
    assert [r["SeriesInstanceUID"] for r in rows] == uids
    assert len({r["Collection"] for r in rows}) >= 2
    assert api.rows("getContentsByName", name="no-such-cart") == []


def test_v3_changes_since_a_date(archive_server: ArchiveServer, http: requests.Session) -> None:
    v3 = Api(archive_server, http, "v3")
    recent = v3.rows("NewPatientsInCollection", Collection=MR, Date="2020-01-01")
    assert [p["PatientId"] for p in recent] == ["BRAIN-002"]
    updated = v3.rows("getUpdatedSeries", fromDate="01/01/2021")
    assert {r["SeriesInstanceUID"] for r in updated} == {
        s.series_instance_uid
        for s in public_series(archive_server)
        if s.date_released is not None and s.date_released.year >= 2021
    }
    assert v3.get("getUpdatedSeries", fromDate="not a date").status_code == 400


# -- v3 ----------------------------------------------------------------------------------------------------


def test_v3_needs_an_api_key(archive_server: ArchiveServer, http: requests.Session) -> None:
    url = f"{archive_server.url}/services/v3/TCIA/query/getCollectionValues"
    r = http.get(url, timeout=TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "invalid_api_key"
    assert http.get(url, headers={"api_key": "wrong"}, timeout=TIMEOUT).status_code == 401
    r = http.get(url, params={"api_key": API_KEY}, timeout=TIMEOUT)
    assert r.status_code == 200 and {"Collection": CT} in r.json()
    assert all("api_key" not in rec.path and API_KEY not in rec.path for rec in archive_server.requests)


def test_v3_metadata(archive_server: ArchiveServer, http: requests.Session) -> None:
    url = f"{archive_server.url}/services/v3/TCIA/query/getPatientStudy/metadata"
    meta = http.get(url, headers={"api_key": API_KEY}, timeout=TIMEOUT).json()
    assert meta["name"] == "getPatientStudy" and meta["description"]
    assert [q["name"] for q in meta["queryParameters"]] == ["Collection", "PatientID", "StudyInstanceUID"]
    assert "JSON" in meta["returnFormats"]
    assert {"name": "StudyInstanceUID", "dicomTag": "0020,000D"}.items() <= meta["attributes"][0].items()
    shared = http.get(
        f"{archive_server.url}/services/v3/SharedList/query/ContentsByName/metadata",
        headers={"api_key": API_KEY},
        timeout=TIMEOUT,
    ).json()
    assert shared["queryParameters"] == [
        {"name": "name", "required": True, "description": "name to filter by"}
    ]
    assert http.get(url, timeout=TIMEOUT).status_code == 401
    unknown = f"{archive_server.url}/services/v3/TCIA/query/getContentsByName"
    assert http.get(unknown, headers={"api_key": API_KEY}, timeout=TIMEOUT).status_code == 404


# -- restricted collection ---------------------------------------------------------------------------------


def test_restricted_collection_visibility(
    archive_server: ArchiveServer, http: requests.Session, guest_token: str
) -> None:
    restricted = [s for s in archive_server.archive.iter_series() if s.collection == RESTRICTED]
    series = restricted[0]
    study = series.study_instance_uid
    uid = series.series_instance_uid
    hidden_everywhere = [
        Api(archive_server, http, "v1"),
        Api(archive_server, http, "v4"),
        Api(archive_server, http, "v3"),
        Api(archive_server, http, "v2", guest_token),
    ]
    alice = Api(archive_server, http, "v2", str(login(archive_server)["access_token"]))
    probes: list[tuple[str, dict[str, str]]] = [
        ("getCollectionValues", {}),
        ("getModalityValues", {"Collection": RESTRICTED}),
        ("getBodyPartValues", {"Collection": RESTRICTED}),
        ("getManufacturerValues", {"Collection": RESTRICTED}),
        ("getPatient", {"Collection": RESTRICTED}),
        ("getPatientByCollectionAndModality", {"Collection": RESTRICTED, "Modality": "CT"}),
        ("getPatientStudy", {"Collection": RESTRICTED}),
        ("getPatientStudy", {"Collection": RESTRICTED, "StudyInstanceUID": study}),
        ("getSeries", {}),
        ("getSeries", {"SeriesInstanceUID": uid}),
        ("getSOPInstanceUIDs", {"SeriesInstanceUID": uid}),
        ("NewPatientsInCollection", {"Collection": RESTRICTED, "Date": "2000/01/01"}),
        ("NewStudiesInPatientCollection", {"Collection": RESTRICTED, "Date": "2000/01/01"}),
        ("getUpdatedSeries", {}),
    ]
    for api in hidden_everywhere:
        for endpoint, params in probes:
            if api.prefix == "v4" and "Date" in params:
                params = {"Collection": RESTRICTED, "fromDate": "01-01-2000"}
            text = api.get(endpoint, **params).text
            assert RESTRICTED not in text and uid not in text, (api.prefix, endpoint)
        if api.prefix != "v4":
            assert api.get("getSeriesMetaData", SeriesInstanceUID=uid).status_code == 204
    for endpoint, params in probes:
        assert alice.get(endpoint, **params).content, endpoint
    assert alice.rows("getSeriesMetaData", SeriesInstanceUID=uid)[0]["Collection"] == RESTRICTED


def test_restricted_series_dropped_from_carts(make_server: MakeServer, http: requests.Session) -> None:
    probe = make_server()
    uids = [s.series_instance_uid for s in probe.archive.iter_series() if s.collection in (RESTRICTED, CT)]
    srv = make_server(carts={"mixed": uids})
    anonymous = Api(srv, http, "v1").rows("getContentsByName", name="mixed")
    assert {r["Collection"] for r in anonymous} == {CT}
    alice = Api(srv, http, "v2", str(login(srv)["access_token"])).rows("getContentsByName", name="mixed")
    assert [r["SeriesInstanceUID"] for r in alice] == uids

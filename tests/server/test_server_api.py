"""The archive server's metadata API, driven with plain ``requests``: every endpoint, flavour and quirk.

Expected values come from the server's own model (``srv.archive``) or from the facts file's quirks.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from nbiafs.server import ArchiveServer

ALICE, ALICE_PASSWORD, API_KEY = "alice", "wonderland", "test-api-key"
RESTRICTED = "NBIAFS-RESTRICTED"
CT = "RIDER Synth CT"
MR = "NBIAFS-MR-Brain"
TIMEOUT = 10


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def token(srv: ArchiveServer, user: str = ALICE, password: str = ALICE_PASSWORD) -> dict[str, Any]:
    form = {"username": user, "password": password, "client_id": "NBIA", "grant_type": "password"}
    r = requests.post(f"{srv.url}/nbia-api/oauth/token", data=form, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


class Api:
    """GET an endpoint on one flavour, as one user (v2) or with the api key (v3)."""

    def __init__(self, srv: ArchiveServer, http: requests.Session, flavour: str, bearer: str | None = None):
        self.srv, self.http, self.flavour, self.bearer = srv, http, flavour, bearer

    def url(self, endpoint: str) -> str:
        if self.flavour == "v3":
            if endpoint == "getContentsByName":
                return f"{self.srv.url}/services/v3/SharedList/query/ContentsByName"
            if endpoint == "getPatientByCollectionAndModality":
                endpoint = "PatientsByModality"
            return f"{self.srv.url}/services/v3/TCIA/query/{endpoint}"
        return f"{self.srv.url}/nbia-api/services/{self.flavour}/{endpoint}"

    def get(self, endpoint: str, **params: str) -> requests.Response:
        headers = {}
        if self.bearer:
            headers["Authorization"] = f"Bearer {self.bearer}"
        if self.flavour == "v3":
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
def alice_token(archive_server: ArchiveServer) -> str:
    return str(token(archive_server)["access_token"])


@pytest.fixture(scope="module")
def guest_token(archive_server: ArchiveServer) -> str:
    return str(token(archive_server, "nbia_guest", "")["access_token"])


@pytest.fixture(params=["v1", "v2", "v3", "v4"])
def api(
    request: pytest.FixtureRequest, archive_server: ArchiveServer, http: requests.Session, guest_token: str
) -> Api:
    return Api(archive_server, http, request.param, guest_token if request.param == "v2" else None)


def public_series(srv: ArchiveServer) -> list[Any]:
    return [s for s in srv.archive.iter_series() if s.collection != RESTRICTED]


# -- every metadata endpoint on every flavour ------------------------------------------------------------


def test_value_lists(api: Api, archive_server: ArchiveServer) -> None:
    public = public_series(archive_server)
    assert [r["Collection"] for r in api.rows("getCollectionValues")] == [
        c for c in archive_server.archive.collection_names() if c != RESTRICTED
    ]
    assert {r["Modality"] for r in api.rows("getModalityValues")} == {s.modality for s in public}
    assert {
        r["Modality"] for r in api.rows("getModalityValues", Collection=MR, BodyPartExamined="BRAIN")
    } == {
        "MR",
        "SEG",
    }
    body_parts = api.rows("getBodyPartValues")
    assert body_parts[0] == {}  # the live server's quirk: a null first
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
    assert "0042" in [p["PatientId"] for p in patients]  # numeric ids stay strings
    assert api.rows("getPatient", PatientId="rider-1129164940")[0]["Collection"] == CT
    by_modality = api.rows("getPatientByCollectionAndModality", Collection=MR, Modality="SEG")
    assert by_modality == [{"PatientId": "BRAIN-001"}]
    studies = api.rows("getPatientStudy", Collection=CT.lower(), PatientID="0042")
    assert len(studies) == 1 and studies[0]["PatientID"] == "0042"
    assert not {"StudyDescription", "StudyID", "StudyDate"} & set(studies[0])  # missing, not null
    series = api.rows("getSeries", Collection=CT.upper())
    assert [s["SeriesInstanceUID"] for s in series] == [
        s.series_instance_uid for s in archive_server.archive.iter_series() if s.collection == CT
    ]
    first = series[0]
    assert isinstance(first["SeriesNumber"], int) and isinstance(first["ImageCount"], int)
    assert isinstance(first["FileSize"], int) and first["AnnotationsFlag"] is False
    assert first["SeriesDate"] == "2006-05-22 00:00:00.0"
    if api.flavour == "v4":
        assert "MaxSubmissionTimestamp" in first and "TimeStamp" not in first and "Site" in first
        assert "DataDescriptionURI" in first and "CollectionURI" not in first
    else:
        assert "TimeStamp" in first and "MaxSubmissionTimestamp" not in first
    # Exact filters are exact, Collection/PatientID are not.
    assert api.rows("getSeries", Collection=CT, Modality="ct") == []
    assert len(api.rows("getSeries", Collection=MR, Modality="SEG")) == 2
    assert api.rows("getSeries", Manufacturer="https://www.example.org/scanners/mr-9000")[0]["PatientID"] == (
        "BRAIN-002"
    )


def test_series_level_endpoints(api: Api, archive_server: ArchiveServer) -> None:
    info = next(s for s in archive_server.archive.iter_series() if s.collection == CT)
    uid = info.series_instance_uid
    sops = api.rows("getSOPInstanceUIDs", SeriesInstanceUID=uid)
    assert [r["SOPInstanceUID"] for r in sops] == [i.sop_instance_uid for i in info.instances]
    size = api.get("getSeriesSize", SeriesInstanceUID=uid)
    assert size.json() == [{"TotalSizeInBytes": float(info.file_size), "ObjectCount": info.image_count}]
    assert f'"TotalSizeInBytes":{info.file_size}.0' in size.text
    if api.flavour == "v4":
        r = api.http.post(api.url("getSeriesMetadata"), data={"list": uid}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
        meta = list(csv.DictReader(io.StringIO(r.text)))
    else:
        meta = api.rows("getSeriesMetaData", SeriesInstanceUID=uid)
    assert len(meta) == 1
    row = meta[0]
    assert row["Series UID"] == uid and row["Subject ID"] == info.patient_id
    assert row["Series Number"] == "2.000000" and row["Study Date"] == "05-22-2006"
    assert row["Number of Images"] == str(info.image_count) and row["File Size"] == str(info.file_size)
    assert row["Date Released"] == "Sat Mar 01 09:30:12 UTC 2014"
    assert all(isinstance(v, str) for v in row.values())


def test_changes_since_a_date(api: Api, archive_server: ArchiveServer) -> None:
    date_key = "fromDate" if api.flavour == "v4" else "Date"
    everyone = api.rows("NewPatientsInCollection", Collection=MR, **{date_key: "2000-01-01"})
    assert {p["PatientId"] for p in everyone} == {"BRAIN-001", "BRAIN-002"}
    recent = api.rows("NewPatientsInCollection", Collection=MR, **{date_key: "2020/01/01"})
    assert [p["PatientId"] for p in recent] == ["BRAIN-002"]
    studies = api.rows("NewStudiesInPatientCollection", Collection=CT, Date="2015-01-01", PatientID="0042")
    assert len(studies) == 1 and studies[0]["PatientID"] == "0042"
    assert api.rows("NewStudiesInPatientCollection", Collection=CT, Date="2030-01-01", PatientID="0042") == []
    updated = api.rows("getUpdatedSeries", fromDate="01/01/2021")
    expected = {
        s.series_instance_uid
        for s in public_series(archive_server)
        if s.timestamp is not None and s.timestamp.year >= 2021
    }
    assert {r["SeriesInstanceUID"] for r in updated} == expected
    assert 0 < len(expected) < len(public_series(archive_server))
    assert api.get("getUpdatedSeries", fromDate="not a date").status_code == 400


def test_contents_by_name(api: Api, archive_server: ArchiveServer) -> None:
    (name, uids), *_ = archive_server.archive.default_carts.items()
    rows = api.rows("getContentsByName", name=name)
    assert [r["SeriesInstanceUID"] for r in rows] == uids
    assert len({r["Collection"] for r in rows}) >= 2
    assert api.rows("getContentsByName", name="no-such-cart") == []


def test_empty_answer_is_an_empty_body(api: Api) -> None:
    r = api.get("getSeries", Collection="NO-SUCH-COLLECTION")
    assert r.status_code == 200 and r.content == b""


def test_missing_required_parameter(api: Api) -> None:
    r = api.get("getSeriesSize")
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    assert "SeriesInstanceUID" in r.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)


def test_unknown_format_is_500_and_formats(api: Api) -> None:
    assert api.get("getCollectionValues", format="yaml").status_code == 500
    as_csv = api.get("getCollectionValues", format="csv")
    assert as_csv.headers["Content-Type"].startswith("text/csv")
    assert as_csv.text.splitlines()[:2] == ["Collection", CT]
    if api.flavour != "v4":
        uid = next(iter(api.srv.archive.iter_series())).series_instance_uid
        meta = ET.fromstring(api.get("getSeriesMetaData", SeriesInstanceUID=uid, format="xml").content)
        assert [e.text for e in meta.iter("Series_UID")] == [uid]  # spaced keys become XML names
    xml_rows = ET.fromstring(api.get("getCollectionValues", format="xml").content)
    assert [e.text for e in xml_rows.iter("Collection")][0] == CT
    as_html = api.get("getCollectionValues", format="HTML")
    assert as_html.headers["Content-Type"].startswith("text/html") and f"<td>{CT}</td>" in as_html.text


def test_parameter_names_are_case_sensitive(archive_server: ArchiveServer, http: requests.Session) -> None:
    v1 = Api(archive_server, http, "v1")
    everything = v1.rows("getSeries")
    assert len(v1.rows("getSeries", collection=CT)) == len(everything)  # unknown name: ignored on v1
    v4 = Api(archive_server, http, "v4")
    r = v4.get("getSeries", collection=CT)
    assert r.status_code == 400 and "collection" in r.text
    assert v4.get("NewPatientsInCollection", Collection=MR, Date="2000-01-01").status_code == 400
    assert v4.get("getSeriesMetadata", list="x").status_code == 405  # POST only


# -- authentication --------------------------------------------------------------------------------------


def test_v2_needs_a_valid_token(archive_server: ArchiveServer, http: requests.Session) -> None:
    url = f"{archive_server.url}/nbia-api/services/v2/getCollectionValues"
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic abc"}):
        r = http.get(url, headers=headers, timeout=TIMEOUT)
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_token" and "error_description" in r.json()


def test_token_answer_is_keycloak_shaped(archive_server: ArchiveServer) -> None:
    answer = token(archive_server)
    assert set(answer) == {
        "access_token",
        "expires_in",
        "refresh_expires_in",
        "refresh_token",
        "token_type",
        "id_token",
        "not-before-policy",
        "session_state",
        "scope",
    }
    assert answer["expires_in"] == 7200 and answer["token_type"] == "Bearer"


def test_bad_credentials(archive_server: ArchiveServer) -> None:
    url = f"{archive_server.url}/nbia-api/oauth/token"
    base = {"client_id": "NBIA", "grant_type": "password"}
    for form in (
        {**base, "username": ALICE, "password": "wrong"},
        {**base, "username": "mallory", "password": ""},
        {**base, "username": "nbia_guest", "password": "x"},
        {"grant_type": "password", "username": ALICE, "password": ALICE_PASSWORD, "client_id": "other"},
        {**base, "grant_type": "refresh_token", "refresh_token": "bogus"},
    ):
        r = requests.post(url, data=form, timeout=TIMEOUT)
        assert r.status_code == 401, form
        assert r.json()["error"] in ("invalid_grant", "invalid_client")
    assert requests.get(url, timeout=TIMEOUT).status_code == 405
    r = requests.post(url, data={**base, "grant_type": "client_credentials"}, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_refresh_and_logout(archive_server: ArchiveServer, http: requests.Session) -> None:
    first = token(archive_server)
    url = f"{archive_server.url}/nbia-api/oauth/token"
    form = {"client_id": "nbia", "grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    r = requests.post(url, data=form, timeout=TIMEOUT)
    assert r.status_code == 200
    second = r.json()
    assert second["access_token"] != first["access_token"]
    api = Api(archive_server, http, "v2", second["access_token"])
    assert RESTRICTED in [c["Collection"] for c in api.rows("getCollectionValues")]
    r = http.post(
        f"{archive_server.url}/nbia-api/logout",
        headers={"Authorization": f"Bearer {second['access_token']}"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200 and r.content == b""
    assert api.get("getCollectionValues").status_code == 401
    assert requests.post(url, data=form, timeout=TIMEOUT).status_code == 401  # the session is over
    assert http.get(f"{archive_server.url}/nbia-api/logout", timeout=TIMEOUT).status_code == 401


def test_lifetimes_expire_and_revoke(make_server: Any, http: requests.Session) -> None:
    import time

    srv = make_server(token_lifetime=0.4, refresh_lifetime=1.0)
    answer = token(srv)
    assert answer["expires_in"] == 0 and answer["refresh_expires_in"] == 1
    api = Api(srv, http, "v2", answer["access_token"])
    assert api.get("getCollectionValues").status_code == 200
    time.sleep(0.5)
    assert api.get("getCollectionValues").status_code == 401
    url = f"{srv.url}/nbia-api/oauth/token"
    form = {"client_id": "NBIA", "grant_type": "refresh_token", "refresh_token": answer["refresh_token"]}
    fresh = requests.post(url, data=form, timeout=TIMEOUT)
    assert fresh.status_code == 200
    time.sleep(1.1)
    assert requests.post(url, data=form, timeout=TIMEOUT).status_code == 401
    srv.config.token_lifetime = 60
    long_lived = token(srv)["access_token"]
    api.bearer = long_lived
    assert api.get("getCollectionValues").status_code == 200
    srv.revoke_tokens()
    assert api.get("getCollectionValues").status_code == 401


def test_v3_needs_an_api_key(archive_server: ArchiveServer, http: requests.Session) -> None:
    url = f"{archive_server.url}/services/v3/TCIA/query/getCollectionValues"
    r = http.get(url, timeout=TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "invalid_api_key"
    assert http.get(url, headers={"api_key": "wrong"}, timeout=TIMEOUT).status_code == 401
    r = http.get(url, params={"api_key": API_KEY}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()[0] == {"Collection": CT}
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


def test_unknown_paths(archive_server: ArchiveServer, http: requests.Session) -> None:
    for path in (
        "/nbia-api/services/v1/getNothing",
        "/nbia-api/services/v9/getSeries",
        "/elsewhere",
        "/services/v3/TCIA/query/getContentsByName",
    ):
        assert (
            http.get(archive_server.url + path, headers={"api_key": API_KEY}, timeout=TIMEOUT).status_code
            == 404
        )


# -- restricted collection -------------------------------------------------------------------------------


def test_restricted_collection_visibility(
    archive_server: ArchiveServer, http: requests.Session, alice_token: str, guest_token: str
) -> None:
    restricted = [s for s in archive_server.archive.iter_series() if s.collection == RESTRICTED]
    series = restricted[0]
    study = series.study_instance_uid
    sop = series.instances[0].sop_instance_uid
    hidden_everywhere = [
        Api(archive_server, http, "v1"),
        Api(archive_server, http, "v4"),
        Api(archive_server, http, "v3"),
        Api(archive_server, http, "v2", guest_token),
    ]
    alice = Api(archive_server, http, "v2", alice_token)
    uid = series.series_instance_uid
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
        ("getSeriesSize", {"SeriesInstanceUID": uid}),
        ("getSOPInstanceUIDs", {"SeriesInstanceUID": uid}),
        ("NewPatientsInCollection", {"Collection": RESTRICTED, "Date": "2000-01-01"}),
        (
            "NewStudiesInPatientCollection",
            {"Collection": RESTRICTED, "Date": "2000-01-01", "PatientID": "RESTR-001"},
        ),
        ("getUpdatedSeries", {"fromDate": "2000-01-01"}),
    ]
    for api in hidden_everywhere:
        for endpoint, params in probes:
            if api.flavour == "v4" and endpoint == "NewPatientsInCollection":
                params = {"Collection": RESTRICTED, "fromDate": "2000-01-01"}
            text = api.get(endpoint, **params).text
            assert RESTRICTED not in text and uid not in text, (api.flavour, endpoint)
        if api.flavour != "v4":
            assert api.get("getSeriesMetaData", SeriesInstanceUID=uid).content == b""
        for endpoint in ("getImage", "getImageWithMD5Hash"):
            r = api.get(endpoint, SeriesInstanceUID=uid)
            assert r.status_code == 400 and "not been granted" in r.text
        r = api.get("getSingleImage", SeriesInstanceUID=uid, SOPInstanceUID=sop)
        assert r.status_code == 400 and "not been granted" in r.text
    for endpoint, params in probes:
        assert alice.get(endpoint, **params).content, endpoint
    assert alice.get("getSingleImage", SeriesInstanceUID=uid, SOPInstanceUID=sop).content == (
        archive_server.archive.instance_bytes(sop)
    )


def test_restricted_series_dropped_from_carts(make_server: Any, http: requests.Session) -> None:
    probe = make_server()
    uids = [s.series_instance_uid for s in probe.archive.iter_series() if s.collection in (RESTRICTED, CT)]
    srv = make_server(carts={"mixed": uids})
    anonymous = Api(srv, http, "v1").rows("getContentsByName", name="mixed")
    assert {r["Collection"] for r in anonymous} == {CT}
    alice = Api(srv, http, "v2", token(srv)["access_token"]).rows("getContentsByName", name="mixed")
    assert [r["SeriesInstanceUID"] for r in alice] == uids

"""Parameters (facts §3) and date parameters (facts §4): required texts, names, case, per-version dates."""

from __future__ import annotations

import datetime as dt

import pytest
import requests

from nbiafs.server import ArchiveServer
from tests.server.support import (
    CT,
    MR,
    RESTRICTED,
    get,
    is_empty,
    login,
    post,
    public_series,
    released_after,
    rows,
    series_of,
)

SERIES_TEXT = "A parameter, SeriesInstanceUID is required for this API call."
IMAGE_TEXT = "A parameter, SeriesInstanceUID, is required for this API call."
SINGLE_TEXT = "A parameter, SeriesInstanceUID and SOPInstanceUID, are required for this API call."
MODALITY_TEXT = "A parameter, Collection and Modality, are required for this API call."
DATE_TEXT = "A parameter, Collection and Date are required for this API call."
MIDNIGHT = dt.datetime(2014, 12, 20)  # a synthetic series is released at this very instant


def plain_400(r: requests.Response, sentence: str) -> None:
    assert r.status_code == 400, (r.url, r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/json" and r.text == sentence


@pytest.mark.parametrize("prefix", ["v1", "v2", "v4"])
def test_required_parameters(keycloak: ArchiveServer, prefix: str) -> None:
    token = login(keycloak)["access_token"] if prefix == "v2" else None
    date = {"fromDate" if prefix == "v4" else "Date": "2000/01/01"}
    cases = [
        ("getPatientByCollectionAndModality", {"Collection": CT}, MODALITY_TEXT),
        ("NewPatientsInCollection", {"Collection": CT}, DATE_TEXT),
        ("NewPatientsInCollection", date, DATE_TEXT),
        ("NewStudiesInPatientCollection", {"Collection": CT}, DATE_TEXT),
        ("getSOPInstanceUIDs", {}, SERIES_TEXT),
        ("getSeriesSize", {}, SERIES_TEXT),
        ("getImage", {}, IMAGE_TEXT),
        ("getImageWithMD5Hash", {}, IMAGE_TEXT),
        ("getSingleImage", {"SeriesInstanceUID": "1.2"}, SINGLE_TEXT),
    ]
    if prefix != "v4":
        cases.append(("getSeriesMetaData", {}, SERIES_TEXT))
        name_text = "A parameter, name is required for this API call." if prefix == "v1" else SERIES_TEXT
        cases.append(("getContentsByName", {}, name_text))
    for endpoint, params, sentence in cases:
        plain_400(get(keycloak, prefix, endpoint, token, **params), sentence)
    if prefix == "v4":
        plain_400(
            post(keycloak, "v4", "getSeriesMetadata", {"format": "json"}),
            "A form parameter, list, containing at least one SeriesInstanceUID is required.",
        )
        # v4 New* take fromDate; Date= is the missing-parameter 400.
        plain_400(get(keycloak, "v4", "NewPatientsInCollection", Collection=MR, Date="2000/01/01"), DATE_TEXT)


def test_optional_parameters(spring: ArchiveServer) -> None:
    assert len(rows(get(spring, "v1", "getPatientStudy"))) == sum(
        len(p.studies)
        for c in spring.archive.collections.values()
        if c.name != RESTRICTED
        for p in c.patients
    )
    studies = rows(get(spring, "v1", "NewStudiesInPatientCollection", Collection=MR, Date="2000/01/01"))
    assert {s["PatientID"] for s in studies} == {"BRAIN-001", "BRAIN-002"}
    everything = rows(get(spring, "v1", "getUpdatedSeries"))
    assert len(everything) == len(public_series(spring))
    assert len(rows(get(spring, "v4", "getUpdatedSeries"))) == len(public_series(spring))


def test_v4_parameter_names(keycloak: ArchiveServer) -> None:
    r = get(keycloak, "v4", "getSeries", collection=CT)
    assert r.status_code == 400
    assert r.text.startswith("Invalid query parameter: 'collection'. Allowed parameters are: [")
    assert "Collection" in r.text and r.text.endswith("]")
    r = get(keycloak, "v4", "getModalityValuesAndCounts", format="json")
    assert r.status_code == 400 and "'format'" in r.text
    r = post(keycloak, "v4", "getSeriesMetadata", {"list": "1.2", "Format": "csv"})
    assert r.status_code == 400 and r.text.startswith("Invalid form parameter: 'Format'.")
    r = get(keycloak, "v4", "getSingleImage", SeriesInstanceUID="1", SOPInstanceUID="2", NewFileNames="Yes")
    assert r.status_code == 400 and r.text.startswith("Invalid query parameter: 'NewFileNames'")


def test_v1_v2_ignore_wrong_case_names(spring: ArchiveServer) -> None:
    token = login(spring)["access_token"]
    for prefix, t in (("v1", None), ("v2", token)):
        everything = rows(get(spring, prefix, "getSeries", t))
        assert len(rows(get(spring, prefix, "getSeries", t, collection=CT))) == len(everything)
        assert len(rows(get(spring, prefix, "getSeries", t, Collection=CT))) < len(everything)


@pytest.mark.parametrize("prefix", ["v1", "v4"])
def test_filters_ignore_case(keycloak: ArchiveServer, prefix: str) -> None:
    exact = rows(get(keycloak, prefix, "getSeries", Collection=MR, Modality="SEG", BodyPartExamined="BRAIN"))
    loose = rows(
        get(keycloak, prefix, "getSeries", Collection=MR.lower(), Modality="seg", BodyPartExamined="brain")
    )
    assert len(exact) == 2 and loose == exact
    assert rows(get(keycloak, prefix, "getPatient", PatientId="rider-1129164940"))[0]["Collection"] == CT
    manufacturer = "https://www.example.org/scanners/MR-9000"
    assert rows(get(keycloak, prefix, "getSeries", Manufacturer=manufacturer))[0]["PatientID"] == "BRAIN-002"


# -- dates -------------------------------------------------------------------------------------------------


def test_synthetic_release_dates_make_real_subsets(spring: ArchiveServer) -> None:
    releases = {s.date_released for s in public_series(spring)}
    assert len(releases) >= 5 and MIDNIGHT in releases
    assert 0 < len(released_after(spring, MIDNIGHT)) < len(released_after(spring, MIDNIGHT, inclusive=True))


def patients_since(srv: ArchiveServer, collection: str, since: dt.datetime, inclusive: bool) -> set[str]:
    return {s.patient_id for s in released_after(srv, since, inclusive) if s.collection == collection}


@pytest.mark.parametrize("prefix", ["v1", "v2"])
def test_v1_v2_dates(spring: ArchiveServer, prefix: str) -> None:
    token = login(spring, "nbia_guest", "")["access_token"] if prefix == "v2" else None

    def ask(endpoint: str, **params: str) -> list[dict[str, object]]:
        return rows(get(spring, prefix, endpoint, token, **params))

    new = ask("NewPatientsInCollection", Collection=CT, Date="2014/12/20")
    assert {p["PatientId"] for p in new} == patients_since(spring, CT, MIDNIGHT, False) == {"0042"}
    studies = ask("NewStudiesInPatientCollection", Collection=CT, Date="2014/12/20")
    assert {s["PatientID"] for s in studies} == {"0042"}
    updated = ask("getUpdatedSeries", fromDate="20/12/2014")
    assert {s["SeriesInstanceUID"] for s in updated} == {
        s.series_instance_uid for s in released_after(spring, MIDNIGHT)
    }
    # Lenient SimpleDateFormat: day 12 of month 20 of 2014 is 2015-08-12.
    misread = ask("getUpdatedSeries", fromDate="12/20/2014")
    assert {s["SeriesInstanceUID"] for s in misread} == {
        s.series_instance_uid for s in released_after(spring, dt.datetime(2015, 8, 12))
    }
    assert 0 < len(misread) < len(updated)
    for endpoint, params in (
        ("getUpdatedSeries", {"fromDate": "2014-12-20"}),
        ("getUpdatedSeries", {"fromDate": "yesterday"}),
        ("NewPatientsInCollection", {"Collection": CT, "Date": "12-20-2014"}),
    ):
        assert is_empty(get(spring, prefix, endpoint, token, **params)), (endpoint, params)


def test_v4_dates(spring: ArchiveServer) -> None:
    new = rows(get(spring, "v4", "NewPatientsInCollection", Collection=CT, fromDate="12-20-2014"))
    assert (
        {p["PatientId"] for p in new}
        == patients_since(spring, CT, MIDNIGHT, True)
        == {
            "0042",
            "RIDER-1129164940",
        }
    )
    studies = rows(get(spring, "v4", "NewStudiesInPatientCollection", Collection=CT, fromDate="12-20-2014"))
    assert {s["PatientID"] for s in studies} == {"0042", "RIDER-1129164940"}
    updated = rows(get(spring, "v4", "getUpdatedSeries", fromDate="12-20-2014"))
    assert {s["SeriesInstanceUID"] for s in updated} == {
        s.series_instance_uid for s in released_after(spring, MIDNIGHT)
    }
    for value in ("2014/12/20", "20/12/2014", "2014-12-20", "13-01-2014", "12-20-14"):
        assert is_empty(get(spring, "v4", "getUpdatedSeries", fromDate=value)), value
        assert is_empty(get(spring, "v4", "NewPatientsInCollection", Collection=CT, fromDate=value)), value


def test_dates_compare_with_the_release_date(spring: ArchiveServer) -> None:
    brain = series_of(spring, MR, "MR")
    assert brain.series_date is not None and brain.date_released is not None
    assert brain.series_date < dt.datetime(2012, 1, 1) < brain.date_released
    new = rows(get(spring, "v1", "NewStudiesInPatientCollection", Collection=MR, Date="2012/01/01"))
    assert {s["PatientID"] for s in new} == {"BRAIN-001", "BRAIN-002"}

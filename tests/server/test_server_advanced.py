"""The advanced API (facts §7), unversioned (token, Jackson) and v4 (anonymous, its own shapes)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pydicom
import pytest
import requests

from nbiafs.server import ArchiveServer, SeriesInfo
from tests.server.support import (
    CT,
    MR,
    PETCR,
    RESTRICTED,
    get,
    is_empty,
    login,
    post,
    public_series,
    series_of,
)

SEARCH = {"sortField": "subject", "sortDirection": "ascending", "start": "0", "size": "100"}


@pytest.fixture(scope="module")
def guest(keycloak: ArchiveServer) -> str:
    return str(login(keycloak, "nbia_guest", "")["access_token"])


def patients_by(series: Iterable[SeriesInfo], value: Any) -> dict[Any, int]:
    """Distinct patients per value."""
    found: dict[Any, set[tuple[str, str]]] = {}
    for s in series:
        found.setdefault(value(s), set()).add((s.collection, s.patient_id))
    return {k: len(v) for k, v in found.items()}


def test_counts_unversioned(keycloak: ArchiveServer, guest: str) -> None:
    public = public_series(keycloak)
    modalities = get(keycloak, "adv", "getModalityValuesAndCounts", guest).json()
    assert modalities == [
        {"criteria": k, "count": str(v)} for k, v in sorted(patients_by(public, lambda s: s.modality).items())
    ]
    parts = get(keycloak, "adv", "getBodyPartValuesAndCounts", guest, Collection=PETCR).json()
    assert parts[0] == {"criteria": "NOT SPECIFIED", "count": "1"}
    makers = get(keycloak, "adv", "getManufacturerValuesAndCounts", guest, Collection=CT).json()
    assert makers == [{"criteria": "", "count": "1"}, {"criteria": "GE MEDICAL SYSTEMS", "count": "1"}]
    collections = get(keycloak, "adv", "getCollectionValuesAndCounts", guest).json()
    assert {c["criteria"]: int(c["count"]) for c in collections} == patients_by(
        public, lambda s: s.collection
    )
    mr = get(
        keycloak,
        "adv",
        "getModalityValuesAndCounts",
        guest,
        Collection=MR,
        BodyPartExamined="BRAIN",
        extra="x",
    )
    assert mr.json() == [{"criteria": "MR", "count": "1"}, {"criteria": "SEG", "count": "1"}]
    assert get(keycloak, "adv", "getModalityValuesAndCounts", guest, Collection="nope").text == "[]"


def test_counts_v4(keycloak: ArchiveServer) -> None:
    public = public_series(keycloak)
    modalities = get(keycloak, "v4", "getModalityValuesAndCounts").json()
    assert modalities == [
        {"Modality": k, "Count": v, "Authorized": 1}
        for k, v in sorted(patients_by(public, lambda s: s.modality).items())
    ]
    parts = get(keycloak, "v4", "getBodyPartValuesAndCounts", Collection=PETCR).json()
    assert (
        parts[0] == {"Count": 1, "Authorized": 1}
        and {"BodyPart": "CHEST", "Count": 1, "Authorized": 1} in parts
    )
    makers = get(keycloak, "v4", "getManufacturerValuesAndCounts", Collection=PETCR, Modality="CR").json()
    assert makers == [
        {"Count": 1, "Authorized": 1},
        {"Manufacturer": "Carestream Health", "Count": 1, "Authorized": 1},
    ]
    species = get(keycloak, "v4", "getSpeciesValuesAndCounts", anything="ignored").json()
    assert species == [
        {
            "Species": "337915000",
            "Count": len({(s.collection, s.patient_id) for s in public}),
            "Authorized": 1,
        }
    ]
    assert (
        get(keycloak, "v4", "getCollectionValuesAndCounts", format="xml").status_code == 200
    )  # ignores extras
    assert get(keycloak, "v4", "getModalityValuesAndCounts", format="json").status_code == 400
    assert is_empty(get(keycloak, "v4", "getModalityValuesAndCounts", Collection="nope"))
    alice = login(keycloak)["access_token"]
    with_token = get(keycloak, "v4", "getCollectionValuesAndCounts", alice).json()
    assert {"Collection": RESTRICTED, "Count": 1, "Authorized": 1} in with_token


def test_collection_descriptions(keycloak: ArchiveServer, guest: str) -> None:
    described = [c for c in keycloak.archive.collections.values() if c.description and c.name != RESTRICTED]
    everything = get(keycloak, "adv", "getCollectionDescriptions", guest).json()
    assert [d["collectionName"] for d in everything] == [c.name for c in described]
    first = everything[0]
    assert list(first) == [
        "description",
        "id",
        "collectionDescTimestamp",
        "collectionName",
        "userName",
        "licenseId",
        "descriptionURI",
    ]
    assert first["description"].startswith("<p>") and first["descriptionURI"].startswith("https://doi.org/")
    assert first["collectionDescTimestamp"] == 1393666212000  # 2014-03-01 09:30:12 UTC in epoch ms
    v4 = get(keycloak, "v4", "getCollectionDescriptions", collectionName=CT).json()
    assert v4 == [{k: first[k] for k in ("description", "id", "collectionName", "descriptionURI")}]
    assert get(keycloak, "adv", "getCollectionDescriptions", guest, collectionName=PETCR).json() == [
        dict.fromkeys(first)
    ]
    assert get(keycloak, "v4", "getCollectionDescriptions", collectionName=PETCR).json() == []
    for name in ("nope", RESTRICTED):
        assert get(keycloak, "adv", "getCollectionDescriptions", guest, collectionName=name).json() == []
        assert get(keycloak, "v4", "getCollectionDescriptions", collectionName=name).json() == []


def test_dicom_tags(keycloak: ArchiveServer, guest: str) -> None:
    seg = series_of(keycloak, MR, "SEG")
    tags = get(keycloak, "v4", "getDicomTags", SeriesUID=seg.series_instance_uid).json()
    assert tags == get(keycloak, "adv", "getDicomTags", guest, SeriesUID=seg.series_instance_uid).json()
    assert all(list(t) == ["element", "name", "data"] for t in tags)
    assert all(re.fullmatch(r">*\([0-9A-F]{4},[0-9A-F]{4}\)", t["element"]) for t in tags)
    elements = [t["element"] for t in tags]
    assert elements[0] == "(0002,0000)" and elements.index("(0002,0010)") < elements.index("(0008,0016)")
    assert "(7FE0,0010)" not in elements  # stops before PixelData
    by_element = {t["element"]: t for t in tags}
    assert by_element["(0002,0001)"]["data"] is None  # binary
    assert by_element["(0020,000E)"]["data"] == seg.series_instance_uid
    assert by_element["(0008,0008)"]["data"] == "DERIVED\\PRIMARY"  # multi-values joined by \
    assert by_element["(0013,0010)"]["name"] == "" and by_element["(0013,1010)"]["data"] == MR  # private
    seq = [t for t in tags if t["element"] == "(0062,0002)"]
    assert [t["name"] for t in seq] == ["Segment Sequence", "End Segment Sequence"] and seq[0]["data"] is None
    assert {"element": ">(0062,0004)", "name": "Segment Number", "data": "1"} in tags
    first = pydicom.dcmread(
        pydicom.filebase.DicomBytesIO(keycloak.archive.instance_bytes(seg.instances[0].sop_instance_uid))
    )
    assert by_element["(0008,0018)"]["data"] == first.SOPInstanceUID
    for params in (
        {"SeriesUID": "1.2.3"},
        {"SeriesUID": series_of(keycloak, RESTRICTED, "CT").series_instance_uid},
        {},
    ):
        r = get(keycloak, "v4", "getDicomTags", **params)
        uid = params.get("SeriesUID", "null")
        assert r.status_code == 400 and r.text.startswith(
            f"The user has not been granted the access to image with given SeriesInstanceUID,{uid}."
        )


def test_collection_or_series_for_doi(keycloak: ArchiveServer, guest: str) -> None:
    doi = keycloak.archive.collections[MR].collection_uri
    assert doi is not None
    collections = post(keycloak, "adv", "getCollectionOrSeriesForDOI", {"DOI": doi}, guest).json()
    assert collections == [
        {"collection": MR, "thirdPartyAnanlysis": "NO"},
        {"collection": MR, "thirdPartyAnanlysis": "YES"},
    ]
    series = post(
        keycloak, "v4", "getCollectionOrSeriesForDOI", {"DOI": doi, "CollectionOrSeries": "SERIES"}
    ).json()
    mr_series = [s for s in keycloak.archive.iter_series() if s.collection == MR]
    assert [s["seriesInstanceUID"] for s in series] == [s.series_instance_uid for s in mr_series]
    assert list(series[0]) == ["collection", "seriesInstanceUID", "thirdPartyAnanlysis", "authorized"]
    everything = post(keycloak, "adv", "getCollectionOrSeriesForDOI", {}, guest).json()
    assert {c["collection"] for c in everything} == {
        c for c in keycloak.archive.collections if c != RESTRICTED
    }
    assert (
        post(keycloak, "v4", "getCollectionOrSeriesForDOI", {"DOI": "https://doi.org/nothing"}).text == "[]"
    )
    restricted_doi = keycloak.archive.collections[RESTRICTED].collection_uri
    assert post(keycloak, "v4", "getCollectionOrSeriesForDOI", {"DOI": str(restricted_doi)}).json() == []
    assert get(keycloak, "v4", "getCollectionOrSeriesForDOI").status_code == 405  # POST only


def search(
    srv: ArchiveServer, prefix: str, criteria: list[tuple[str, str]], token: str | None = None, **form: str
) -> requests.Response:
    name = "getSimpleSearch" if prefix == "v4" else "getSimpleSearchWithModalityAndBodyPartPaged"
    return post(srv, prefix, name, criteria + list({**SEARCH, **form}.items()), token)


def test_simple_search(keycloak: ArchiveServer, guest: str) -> None:
    ct = [("criteriaType0", "ImageModalityCriteria"), ("value0", "CT")]
    v4 = search(keycloak, "v4", ct).json()
    assert list(v4) == [
        "resultSet",
        "totalPatients",
        "bodyParts",
        "modalities",
        "collections",
        "species",
        "maxTimepoints",
        "minTimepoints",
        "sort",
    ]
    with_ct = {(s.collection, s.patient_id) for s in keycloak.archive.iter_series() if s.modality == "CT"}
    assert v4["totalPatients"] == len(with_ct) and v4["sort"] == "subject-ascending"
    assert [p["subjectId"] for p in v4["resultSet"]] == sorted(p for _, p in with_ct)
    patient = next(p for p in v4["resultSet"] if p["subjectId"] == "RIDER-1129164940")
    assert list(patient) == [
        "subjectId",
        "project",
        "id",
        "modalities",
        "bodyParts",
        "totalNumberOfStudies",
        "totalNumberOfSeries",
        "authorized",
        "studyIdentifiers",
    ]
    assert (
        patient["modalities"] == ["CT"] and patient["totalNumberOfSeries"] == 2 and patient["authorized"] == 1
    )
    assert isinstance(patient["id"], int) and len(patient["studyIdentifiers"][0]["seriesIdentifiers"]) == 2
    secret = next(p for p in v4["resultSet"] if p["project"] == RESTRICTED)
    assert secret["authorized"] == 0
    assert {"value": "CT", "count": len(with_ct)} in v4["modalities"]
    unversioned = search(keycloak, "adv", ct, guest).json()
    assert RESTRICTED not in {p["project"] for p in unversioned["resultSet"]}
    assert all("authorized" not in p for p in unversioned["resultSet"])
    either = [
        ("criteriaType0", "ImageModalityCriteria"),
        ("value0", "PT"),
        ("criteriaType1", "ImageModalityCriteria"),
        ("value1", "MR"),
        ("criteriaType2", "NoSuchCriteria"),
        ("value2", "x"),
    ]
    assert {p["subjectId"] for p in search(keycloak, "v4", either).json()["resultSet"]} == {
        "PETCR-01",
        "BRAIN-001",
        "BRAIN-002",
        "RESTR-001",  # listed on v4 with authorized 0
    }
    page = search(keycloak, "v4", ct, start="1", size="2", sortDirection="descending").json()
    assert [p["subjectId"] for p in page["resultSet"]] == sorted((p for _, p in with_ct), reverse=True)[1:3]
    assert page["totalPatients"] == len(with_ct)


def test_simple_search_dates_and_failures(keycloak: ArchiveServer, guest: str) -> None:
    v4_dates = [
        ("criteriaType0", "DateRangeCriteria"),
        ("fromDate0", "01-01-2010"),
        ("toDate0", "12-31-2011"),
    ]
    found = search(keycloak, "v4", v4_dates).json()["resultSet"]
    assert {p["subjectId"] for p in found} == {"BRAIN-001", "BRAIN-002"}
    adv_dates = [
        ("criteriaType0", "DateRangeCriteria"),
        ("fromDate0", "01/01/2010"),
        ("toDate0", "31/12/2011"),
    ]
    assert search(keycloak, "adv", adv_dates, guest).json()["totalPatients"] == 2
    by_collection = search(keycloak, "v4", [], sortField="nonsense").json()["resultSet"]
    assert [p["project"] for p in by_collection] == sorted(p["project"] for p in by_collection)
    for criteria, form in (
        ([], {"start": "50"}),
        ([], {"size": "many"}),
        ([("criteriaType0", "DateRangeCriteria"), ("fromDate0", "yesterday"), ("toDate0", "today")], {}),
    ):
        r = search(keycloak, "v4", criteria, **form)
        assert r.status_code == 500 and r.text.startswith("Server was not able to process your request"), form
    missing = post(keycloak, "v4", "getSimpleSearch", {"sortField": "subject", "start": "0", "size": "1"})
    assert missing.status_code == 500


def test_simple_search_patient_criteria(keycloak: ArchiveServer) -> None:
    """MinNumberOfStudiesCriteria and ModalityAndedSearchCriteria (the GUI's and tcia_utils' searches)."""
    studies = {(p.collection, p.patient_id): len(p.studies) for p in keycloak.archive.patients}
    two = search(keycloak, "v4", [("criteriaType0", "MinNumberOfStudiesCriteria"), ("value0", "2")]).json()
    assert {p["subjectId"] for p in two["resultSet"]} == {pid for (_, pid), n in studies.items() if n >= 2}
    assert two["totalPatients"] == sum(n >= 2 for n in studies.values())
    mr_seg = [
        ("criteriaType0", "ImageModalityCriteria"),
        ("value0", "MR"),
        ("criteriaType1", "ImageModalityCriteria"),
        ("value1", "SEG"),
    ]
    modalities: dict[str, set[str]] = {}
    for s in keycloak.archive.iter_series():
        modalities.setdefault(s.patient_id, set()).add(s.modality)
    anded = [*mr_seg, ("criteriaType2", "ModalityAndedSearchCriteria"), ("value2", "all")]
    found = search(keycloak, "v4", anded).json()["resultSet"]
    assert {p["subjectId"] for p in found} == {p for p, m in modalities.items() if {"MR", "SEG"} <= m}
    assert {p["subjectId"] for p in search(keycloak, "v4", mr_seg).json()["resultSet"]} == {
        p for p, m in modalities.items() if m & {"MR", "SEG"}
    }
    bad = search(keycloak, "v4", [("criteriaType0", "MinNumberOfStudiesCriteria"), ("value0", "two")])
    assert bad.status_code == 500  # new Integer("two")


def test_seg_references_its_series(keycloak: ArchiveServer) -> None:
    """A SEG names the series it segments; tcia_utils' getSegRefSeries finds it by these element strings."""
    seg = series_of(keycloak, MR, "SEG")
    tags = get(keycloak, "v4", "getDicomTags", SeriesUID=seg.series_instance_uid).json()
    elements = [t["element"] for t in tags]
    start = elements.index(">(0008,114A)")
    end = elements.index(">(0008,114A)", start + 1)  # End Referenced Instance Sequence
    assert tags[end]["name"] == "End Referenced Instance Sequence" and elements[end + 1] == ">(0020,000E)"
    source = keycloak.archive.series(tags[end + 1]["data"])
    assert source.study_instance_uid == seg.study_instance_uid and source.modality == "MR"
    referenced = [t["data"] for t in tags if t["element"] == ">>(0008,1155)"]
    assert sorted(referenced) == sorted(i.sop_instance_uid for i in source.instances)


def test_manifest_for_simple_search(keycloak: ArchiveServer) -> None:
    ct = [("criteriaType0", "ImageModalityCriteria"), ("value0", "CT")]
    r = post(keycloak, "v4", "getManifestForSimpleSearch", ct + list(SEARCH.items()))
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-nbia-manifest-file"
    lines = r.text.splitlines()
    assert (
        lines[0]
        == "downloadServerUrl=https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet"
    )
    assert lines[1:3] == ["includeAnnotation=false", "noOfrRetry=4"]
    assert re.fullmatch(r"databasketId=manifest-\d+\.tcia", lines[3]) and lines[4:6] == [
        "manifestVersion=3.0",
        "ListOfSeriesToDownload=",
    ]
    expected = {s.series_instance_uid for s in public_series(keycloak) if s.modality == "CT"}
    assert set(lines[6:]) == expected  # authorised patients only

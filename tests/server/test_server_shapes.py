"""Response shapes (facts §3) and value-list order (§5): columns per version, dates, ``Authorized``, empty
answers, getSeriesSize, getSeriesMetaData / getSeriesMetadata, and every ``format=``."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence

import pytest
import requests

from nbiafs.server import ArchiveServer
from nbiafs.server.rows import CONTENTS, V1_METADATA, V1_SERIES, V1_UPDATED, V4_METADATA, V4_SERIES
from tests.server.support import (
    CT,
    MR,
    PETCR,
    PROCESS_ERROR,
    RESTRICTED,
    get,
    is_empty,
    post,
    rows,
    series_of,
)

MakeServer = Callable[..., ArchiveServer]
V1_DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d")
V4_DATE = re.compile(r"\d\d-\d\d-\d{4}")


def in_order(keys: Sequence[str], columns: Sequence[str]) -> bool:
    """Whether ``keys`` are some of ``columns``, in the columns' order."""
    positions = [columns.index(k) for k in keys if k in columns]
    return len(positions) == len(keys) and positions == sorted(positions)


def test_series_columns_and_dates(spring: ArchiveServer) -> None:
    v1 = rows(get(spring, "v1", "getSeries", Collection=CT))
    v4 = rows(get(spring, "v4", "getSeries", Collection=CT))
    assert V1_SERIES[-4:] == ("DateReleased", "StudyDesc", "StudyDate", "ThirdPartyAnalysis")
    for row in v1:
        assert in_order(list(row), V1_SERIES), list(row)
        assert "TimeStamp" in row and "CollectionURI" in row and "Authorized" not in row
        assert all(
            V1_DATE.fullmatch(row[k])
            for k in ("SeriesDate", "TimeStamp", "DateReleased", "StudyDate")
            if k in row
        )
    assert any(row["TimeStamp"].endswith("09:30:12.0") for row in v1)  # timestamps keep the time
    for row in v4:
        assert in_order(list(row), V4_SERIES) and list(row)[-1] == "Authorized" and row["Authorized"] == 1
        assert {"Site", "PatientSex", "PatientAge", "MaxSubmissionTimestamp", "ReleasedStatus"} <= set(row)
        assert (
            "TimeStamp" not in row
            and "CollectionURI" not in row
            and row["DataDescriptionURI"].startswith("https://")
        )
        assert all(
            V4_DATE.fullmatch(row[k])
            for k in ("SeriesDate", "MaxSubmissionTimestamp", "DateReleased")
            if k in row
        )
    flagged = [row for row in v1 if "AnnotationsFlag" in row]
    assert len(flagged) == 1 and flagged[0]["AnnotationsFlag"] is True  # usually absent
    assert isinstance(v1[0]["SeriesNumber"], int) and isinstance(v1[0]["FileSize"], int)


def test_patient_and_study_columns(spring: ArchiveServer) -> None:
    v1 = rows(get(spring, "v1", "getPatient", Collection=CT))
    v4 = rows(get(spring, "v4", "getPatient", Collection=CT))
    assert list(v1[0]) == [
        "PatientId",
        "PatientName",
        "PatientSex",
        "Collection",
        "Phantom",
        "SpeciesCode",
        "SpeciesDescription",
    ]
    assert list(v4[0])[-1] == "Authorized" and "PatientBirthDate" not in v4[0]
    assert v1[0]["Phantom"] == "NO" and v1[0]["SpeciesDescription"] == "Homo sapiens"
    assert {p["PatientId"] for p in v1} >= {"0042"}  # numeric ids stay strings
    by_modality = rows(get(spring, "v4", "getPatientByCollectionAndModality", Collection=MR, Modality="SEG"))
    assert by_modality == [{"PatientId": "BRAIN-001", "Authorized": 1}]
    assert rows(get(spring, "v1", "getPatientByCollectionAndModality", Collection=MR, Modality="SEG")) == [
        {"PatientId": "BRAIN-001"}
    ]
    study = rows(get(spring, "v1", "getPatientStudy", Collection=PETCR))[0]
    assert list(study)[:2] == ["StudyInstanceUID", "StudyDate"] and study["SeriesCount"] == 2
    assert (
        study["LongitudinalTemporalOffsetFromEvent"] == 12.0
        and '"LongitudinalTemporalOffsetFromEvent":12.0'
        in get(spring, "v1", "getPatientStudy", Collection=PETCR).text
    )
    v4_study = rows(get(spring, "v4", "getPatientStudy", Collection=PETCR))[0]
    assert V4_DATE.fullmatch(v4_study["StudyDate"]) and list(v4_study)[-1] == "Authorized"


def test_value_lists_sorted_with_the_null_first(spring: ArchiveServer) -> None:
    for prefix in ("v1", "v4"):
        collections = [r["Collection"] for r in rows(get(spring, prefix, "getCollectionValues"))]
        assert collections == sorted(collections, key=str.casefold)
        parts = rows(get(spring, prefix, "getBodyPartValues"))
        assert parts[0] == {} and all("Authorized" not in r for r in parts)
        names = [r["BodyPartExamined"] for r in parts[1:]]
        assert names == sorted(names, key=str.casefold) and all(n == n.upper() for n in names)
        makers = rows(get(spring, prefix, "getManufacturerValues"))
        assert makers[0] == {}
        names = [r["Manufacturer"] for r in makers[1:]]
        assert names == sorted(names, key=str.casefold)
    sops = rows(
        get(
            spring,
            "v4",
            "getSOPInstanceUIDs",
            SeriesInstanceUID=series_of(spring, CT, "CT").series_instance_uid,
        )
    )
    assert all(list(r) == ["SOPInstanceUID"] for r in sops)


def test_empty_answers(spring: ArchiveServer) -> None:
    for prefix in ("v1", "v4"):
        for fmt in ("json", "csv", "xml", "nonsense"):
            assert is_empty(get(spring, prefix, "getSeries", Collection="NO-SUCH", format=fmt))
        assert is_empty(get(spring, prefix, "getSOPInstanceUIDs", SeriesInstanceUID="1.2.3"))


@pytest.mark.parametrize(
    ("form", "expected"), [("string", '"{size}.0"'), ("integer", "{size}"), ("float", "{size}.0")]
)
def test_series_size_forms(make_server: MakeServer, form: str, expected: str) -> None:
    srv = make_server(series_size_form=form)
    s = series_of(srv, CT, "CT")
    body = get(srv, "v1", "getSeriesSize", SeriesInstanceUID=s.series_instance_uid).text
    assert (
        body == f'[{{"TotalSizeInBytes":{expected.format(size=s.file_size)},"ObjectCount":{s.image_count}}}]'
    )
    v4 = get(srv, "v4", "getSeriesSize", SeriesInstanceUID=s.series_instance_uid).json()
    assert v4 == [{"TotalSizeInBytes": s.file_size, "ObjectCount": s.image_count}]


def test_series_size_of_unknown_and_restricted_series(spring: ArchiveServer) -> None:
    assert get(spring, "v1", "getSeriesSize", SeriesInstanceUID="1.2.3").text == "[{}]"
    assert is_empty(get(spring, "v4", "getSeriesSize", SeriesInstanceUID="1.2.3"))
    secret = series_of(spring, RESTRICTED, "CT")
    # v1/v2 aggregate without an access check; v4 checks.
    assert (
        get(spring, "v1", "getSeriesSize", SeriesInstanceUID=secret.series_instance_uid).json()[0][
            "ObjectCount"
        ]
        == secret.image_count
    )
    assert is_empty(get(spring, "v4", "getSeriesSize", SeriesInstanceUID=secret.series_instance_uid))


def test_v1_series_metadata(spring: ArchiveServer) -> None:
    s = series_of(spring, PETCR, "PT")
    (row,) = rows(get(spring, "v1", "getSeriesMetaData", SeriesInstanceUID=s.series_instance_uid))
    assert in_order(list(row), V1_METADATA) and len(V1_METADATA) == 27
    assert all(isinstance(v, str) for v in row.values())
    assert row["Series Number"] == "601.000000" and row["Study Date"] == "11-04-2019"
    assert row["Series Description"] == "PET WB AC"  # cleaned to [A-Za-z0-9 .-]
    assert row["Date Released"] == "Thu Sep 30 16:20:05 UTC 2021" and row["Annotations Flag"] == "false"
    for uid in ("1.2.3", series_of(spring, RESTRICTED, "CT").series_instance_uid):
        r = get(spring, "v1", "getSeriesMetaData", SeriesInstanceUID=uid)
        assert r.status_code == 204 and r.content == b""


def test_v4_series_metadata(spring: ArchiveServer) -> None:
    ct, mr, pet = (series_of(spring, c, m) for c, m in ((CT, "CT"), (MR, "MR"), (PETCR, "PT")))
    form = [("list", f"{ct.series_instance_uid},{mr.series_instance_uid}"), ("list", pet.series_instance_uid)]
    r = post(spring, "v4", "getSeriesMetadata", form)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv"
    assert r.headers["Content-Disposition"] == 'attachment; filename="SeriesMetaData.csv"'
    assert r.text.startswith('"PatientID","PatientName",') and r.text.count("\n") == 4
    table = list(csv.reader(io.StringIO(r.text)))
    assert tuple(table[0]) == V4_METADATA and len(V4_METADATA) == 40
    assert [line[V4_METADATA.index("SeriesInstanceUID")] for line in table[1:]] == [
        ct.series_instance_uid,
        mr.series_instance_uid,
        pet.series_instance_uid,
    ]
    ct_row = dict(zip(V4_METADATA, table[1], strict=True))
    assert ct_row["PixelSpacing(mm)-Row"] == "0.7" and ct_row["SliceThickness(mm)"] == "2.5"
    assert ct_row["StudyDate"] == "05-22-2006" and ct_row["Authorized"] == "1"
    as_json = post(
        spring, "v4", "getSeriesMetadata", {"list": pet.series_instance_uid, "format": "json"}
    ).json()
    assert as_json[0]["SeriesNumber"] == 601 and as_json[0]["ImageCount"] == pet.image_count
    assert post(
        spring, "v4", "getSeriesMetadata", {"list": pet.series_instance_uid, "format": "xml"}
    ).text.startswith('<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results><Row><PatientID')
    assert (
        "<TABLE BORDER=1>"
        in post(spring, "v4", "getSeriesMetadata", {"list": pet.series_instance_uid, "format": "html"}).text
    )
    secret = series_of(spring, RESTRICTED, "CT").series_instance_uid
    assert is_empty(post(spring, "v4", "getSeriesMetadata", {"list": secret}))
    assert get(spring, "v4", "getSeriesMetadata", list=secret).status_code == 405


def test_updated_series_and_cart_columns(spring: ArchiveServer) -> None:
    v1 = rows(get(spring, "v1", "getUpdatedSeries", fromDate="01/01/2000"))
    assert all(in_order(list(r), V1_UPDATED) and "DateReleased" in r for r in v1)
    v4 = rows(get(spring, "v4", "getUpdatedSeries", fromDate="01-01-2000"))
    assert all(in_order(list(r), V4_SERIES) and list(r)[-1] == "Authorized" for r in v4)
    (name, uids), *_ = spring.archive.default_carts.items()
    for fmt in ("json", "xml", "csv"):
        cart = get(spring, "v1", "getContentsByName", name=name, format=fmt)
        assert cart.headers["Content-Type"] == "application/json"  # always JSON
        assert [r["SeriesInstanceUID"] for r in cart.json()] == uids
        assert all(in_order(list(r), CONTENTS) and "Date Released" in r for r in cart.json())
    assert is_empty(get(spring, "v1", "getContentsByName", name="no-such-cart"))


def test_formats(spring: ArchiveServer) -> None:
    def fetch(endpoint: str, fmt: str, **params: str) -> requests.Response:
        r = get(spring, "v1", endpoint, format=fmt, **params)
        assert r.status_code == 200, (endpoint, fmt, r.status_code)
        return r

    series = fetch("getSeries", "json", Collection=CT)
    assert '"SeriesDescription":"CHEST\\/ABD"' in series.text  # Jettison writes / as \/
    xml = fetch("getSeries", "xml", Collection=CT).text
    assert xml.startswith(
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results><Row><SeriesInstanceUID'
    )
    assert "<ImageCount type='java.lang.Integer'>24</ImageCount>" in xml and "CHEST&#x2f;ABD" in xml
    assert "<SeriesDate type='java.sql.Timestamp'>2006-05-22 00:00:00.0</SeriesDate>" in xml
    html = fetch("getSeries", "html", Collection=CT)
    assert html.headers["Content-Type"] == "text/html" and html.text.startswith(
        "<P ALIGN='center'><TABLE BORDER=1><TR><TH>"
    )
    quoted = fetch("getPatient", "csv", Collection=CT).text
    assert (
        quoted.startswith('"PatientId","PatientName","PatientBirthDate",')
        and '"0042","0042","","F",' in quoted
    )
    assert fetch("getPatient", "csvquoted", Collection=CT).text == quoted
    download = fetch("getPatient", "csv-download", Collection=CT)
    assert (
        download.text == quoted
        and download.headers["Content-Disposition"] == 'attachment; filename="SeriesMetaData.csv"'
    )
    single = fetch("getBodyPartValues", "csv").text
    assert single.startswith("BodyPartExamined\n\n\nBRAIN\n")  # unquoted; the null is a blank line
    single_download = fetch("getBodyPartValues", "csv-download")
    assert (
        single_download.headers["Content-Type"] == "application/force-download"
        and single_download.text == single
    )
    for endpoint, fmt in (
        ("getBodyPartValues", "csvquoted"),
        ("getSeries", "yaml"),
        ("getCollectionValues", "tsv"),
    ):
        r = get(spring, "v1", endpoint, format=fmt)
        assert (
            r.status_code == 500
            and r.text == PROCESS_ERROR
            and r.headers["Content-Type"] == "application/xml"
        )
    assert fetch("getCollectionValues", "JSON").json()[0] == {"Collection": "NBIAFS-Bench"}

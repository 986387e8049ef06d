"""Rows -> records: every quirk of the live servers (no server needed)."""

from __future__ import annotations

import datetime as dt

import pytest

from nbiafs.api.rows import (
    describe_body,
    parse_all,
    parse_csv_rows,
    parse_json_rows,
    parse_patient,
    parse_series,
    parse_series_metadata,
    parse_series_size,
    parse_study,
    to_bool,
    to_datetime,
    to_int,
    values,
)
from nbiafs.errors import BadResponseError


def test_empty_body_is_no_rows() -> None:
    assert parse_json_rows(b"") == []
    assert parse_json_rows(b"  \r\n") == []
    assert parse_csv_rows(b"") == []


def test_object_and_list_bodies() -> None:
    assert parse_json_rows(b'{"a": 1}') == [{"a": 1}]
    assert parse_json_rows(b'[{"a": 1}, {}, null, 5]') == [{"a": 1}, {}, {"value": 5}]


@pytest.mark.parametrize(
    ("body", "ctype", "word"),
    [
        (b"PK\x03\x04rest-of-zip", "application/json", "ZIP"),
        (b"<!DOCTYPE html><html><body>Login</body></html>", "text/html", "HTML"),
        (b"<html><body>x</body></html>", "", "HTML"),
        (b"The user has not been granted", "application/json", "not JSON"),
    ],
)
def test_non_json_bodies_raise_response_format_error(body: bytes, ctype: str, word: str) -> None:
    with pytest.raises(BadResponseError, match=word):
        parse_json_rows(body, ctype, what="getSeries")


def test_describe_body_dicom() -> None:
    assert describe_body(b"\0" * 128 + b"DICM" + b"\0" * 10) == "DICOM data"
    assert describe_body(b'[{"a": 1}]', "application/json") is None


def test_value_lists_skip_empty_rows_and_repeats() -> None:
    rows = [
        {},
        {"BodyPartExamined": "CHEST"},
        {"BodyPartExamined": "CHEST/ABD"},
        {},
        {"BodyPartExamined": "CHEST"},
    ]
    assert values(rows, "BodyPartExamined") == ["CHEST", "CHEST/ABD"]
    assert values([{"PatientId": "0001"}, {"PatientID": "0002"}], "PatientID") == ["0001", "0002"]


def test_patient_id_spellings_and_numeric_ids_stay_strings() -> None:
    a = parse_patient({"PatientId": "0042", "Collection": "C"})
    b = parse_patient({"PatientID": "0042", "Collection": "C"})
    c = parse_patient({"PatientId": 42})
    assert a.patient_id == b.patient_id == "0042"
    assert c.patient_id == "42"
    assert a.raw == {"PatientId": "0042", "Collection": "C"}
    with pytest.raises(BadResponseError):
        parse_patient({"Collection": "C"})


def test_parse_all_skips_empty_and_keyless_rows() -> None:
    rows = [{}, {"PatientId": "1"}, {"Collection": "x"}, {"PatientID": "2"}]
    assert [p.patient_id for p in parse_all(rows, parse_patient)] == ["1", "2"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, 12),
        (12.0, 12),
        ("12", 12),
        ("1.000000", 1),
        ("123456.0", 123456),
        ("1,024", 1024),
        ("98765432109876.0", 98765432109876),
        ("", None),
        ("n/a", None),
        (None, None),
        (True, None),
    ],
)
def test_to_int(value: object, expected: int | None) -> None:
    assert to_int(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2003-12-12 00:00:00.0", dt.datetime(2003, 12, 12)),
        ("2003-12-12 10:11:12", dt.datetime(2003, 12, 12, 10, 11, 12)),
        ("08-29-2017", dt.datetime(2017, 8, 29)),
        ("Mon Nov 04 11:45:52 UTC 2013", dt.datetime(2013, 11, 4, 11, 45, 52)),
        ("Tue Mar 05 01:02:03 EST 2019", dt.datetime(2019, 3, 5, 1, 2, 3)),
        ("2010/08/16", dt.datetime(2010, 8, 16)),
        ("01/02/2020", dt.datetime(2020, 1, 2)),
        ("2017-08-29", dt.datetime(2017, 8, 29)),
        ("2017-08-29T12:30:00", dt.datetime(2017, 8, 29, 12, 30)),
        ("2017-08-29T12:30:00Z", dt.datetime(2017, 8, 29, 12, 30)),
        ("2017-08-29T14:30:00+02:00", dt.datetime(2017, 8, 29, 12, 30)),
        ("20170829", dt.datetime(2017, 8, 29)),
        (1504009800000, dt.datetime(2017, 8, 29, 12, 30)),
        ("", None),
        ("not a date", None),
        (None, None),
    ],
)
def test_to_datetime(value: object, expected: dt.datetime | None) -> None:
    assert to_datetime(value) == expected


def test_to_bool() -> None:
    assert to_bool(True) is True
    assert to_bool("false") is False
    assert to_bool("Yes") is True
    assert to_bool("maybe") is None


def test_study_row() -> None:
    row = {
        "StudyInstanceUID": "1.2.3",
        "StudyDate": "2003-12-12 00:00:00.0",
        "PatientID": "0001",
        "SeriesCount": 3,
        "LongitudinalTemporalOffsetFromEvent": "12.5",
    }
    study = parse_study(row)
    assert study.study_instance_uid == "1.2.3"
    assert study.study_date == dt.datetime(2003, 12, 12)
    assert study.patient_id == "0001"
    assert study.series_count == 3
    assert study.longitudinal_temporal_offset_from_event == 12.5
    assert study.study_description is None
    assert study.raw is not row and study.raw == row


def test_series_row_v2_and_v4_names() -> None:
    v2 = parse_series(
        {
            "SeriesInstanceUID": "1.2.3.4",
            "SeriesNumber": "1000.0",
            "ImageCount": 10,
            "FileSize": 123456.0,
            "AnnotationsFlag": False,
            "TimeStamp": "2019-01-02 03:04:05.0",
            "CollectionURI": "https://doi.org/x",
        }
    )
    v4 = parse_series(
        {
            "SeriesInstanceUID": "1.2.3.4",
            "SeriesNumber": 1000,
            "ImageCount": "10",
            "FileSize": "123456",
            "MaxSubmissionTimestamp": "2019-01-02T03:04:05",
            "DataDescriptionURI": "https://doi.org/x",
            "Site": "X",
            "ReleasedStatus": "Released",
            "Authorized": "Yes",
        }
    )
    for s in (v2, v4):
        assert s.series_number == 1000
        assert s.image_count == 10
        assert s.file_size == 123456
        assert s.timestamp == dt.datetime(2019, 1, 2, 3, 4, 5)
        assert s.collection_uri == "https://doi.org/x"
    assert v2.annotations_flag is False and v4.annotations_flag is None
    assert v4.raw["Site"] == "X"


def test_series_metadata_keys_with_spaces() -> None:
    row = {
        "Series UID": "1.2.3.4",
        "Subject ID": "0001",
        "Study UID": "1.2.3",
        "Study Date": "08-29-2017",
        "Series Number": "1.000000",
        "Number of Images": "42",
        "File Size": "123456.0",
        "Annotation Size": "0",
        "Date Released": "Mon Nov 04 11:45:52 UTC 2013",
        "3rd Party Analysis": "NO",
        "Data Description URI": "https://doi.org/y",
    }
    md = parse_series_metadata(row)
    assert md.series_instance_uid == "1.2.3.4"
    assert md.subject_id == "0001"
    assert md.study_date == dt.datetime(2017, 8, 29)
    assert md.series_number == 1
    assert md.number_of_images == 42
    assert md.file_size == 123456
    assert md.annotation_size == 0
    assert md.date_released == dt.datetime(2013, 11, 4, 11, 45, 52)
    assert md.third_party_analysis == "NO"
    assert md.data_description_uri == "https://doi.org/y"
    assert md.raw == row


def test_series_metadata_from_csv() -> None:
    text = b'Series UID,Collection,Subject ID,Number of Images,File Size\r\n1.2.3,"A, B",0007,3,"1024.0"\r\n'
    rows = parse_csv_rows(text)
    assert rows == [
        {
            "Series UID": "1.2.3",
            "Collection": "A, B",
            "Subject ID": "0007",
            "Number of Images": "3",
            "File Size": "1024.0",
        }
    ]
    md = parse_series_metadata(rows[0])
    assert (md.subject_id, md.number_of_images, md.file_size) == ("0007", 3, 1024)


def test_series_size_with_decimal_point() -> None:
    size = parse_series_size({"TotalSizeInBytes": "5326432.0", "ObjectCount": 10})
    assert (size.total_size_in_bytes, size.object_count) == (5326432, 10)
    with pytest.raises(BadResponseError):
        parse_series_size({"Other": 1})

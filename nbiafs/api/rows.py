"""Rows as the NBIA servers send them -> the typed records of :mod:`nbiafs.api.records`.

Copes with the quirks of the live servers: an empty body means no rows; keys may be missing; value lists
contain ``{}``; ``PatientId`` vs ``PatientID``; numbers sent as strings with decimals (``"1.000000"``,
``"123456.0"``); several date formats; getSeriesMetaData's keys with spaces; the v4 renames
(``MaxSubmissionTimestamp``, ``DataDescriptionURI``); purely numeric PatientIDs stay strings. Every record
keeps the row exactly as sent in ``raw``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from nbiafs.api.records import (
    CollectionDescription,
    DicomTag,
    DoiEntry,
    Patient,
    Row,
    SearchPatient,
    SearchResult,
    Series,
    SeriesMetadata,
    SeriesSize,
    Study,
    ValueCount,
)
from nbiafs.errors import BadResponseError

log = logging.getLogger(__name__)

T = TypeVar("T")

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


# --- bodies -------------------------------------------------------------------------------------------------


def describe_body(content: bytes, content_type: str = "") -> str | None:
    """A name for a body that is clearly not JSON/CSV ("a ZIP archive", "an HTML page", "DICOM data")."""
    head = content[:512].lstrip()
    ctype = content_type.lower()
    if content.startswith(_ZIP_MAGIC) or "zip" in ctype:
        return "a ZIP archive"
    if content[128:132] == b"DICM" or "dicom" in ctype:
        return "DICOM data"
    if "html" in ctype or head[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head.startswith(b"<"):
        return "an XML/HTML document"
    return None


def parse_json_value(content: bytes, content_type: str = "", what: str = "the server") -> Any:
    """The decoded JSON of a non-empty answer.

    Raises BadResponseError (naming ``what``) for a ZIP, HTML or anything else that is not JSON.
    """
    kind = describe_body(content, content_type)
    if kind is not None:
        raise BadResponseError(f"{what} answered with {kind} where JSON was expected")
    try:
        return json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        snippet = content[:80].decode("utf-8", "replace")
        raise BadResponseError(f"{what} answered with something that is not JSON: {snippet!r}") from exc


def parse_json_rows(content: bytes, content_type: str = "", what: str = "the server") -> list[Row]:
    """The rows of a JSON answer: an empty body is no rows, an object one row, bare values ``{"value": v}``.

    Raises BadResponseError (naming ``what``) for a ZIP, HTML or anything else that is not JSON.
    """
    if not content.strip():
        return []
    data = parse_json_value(content, content_type, what)
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        # A bare value (e.g. a number): treat as a one-column row so callers still see it.
        return [{"value": data}]
    rows: list[Row] = []
    for item in data:
        if isinstance(item, dict):
            rows.append(item)
        elif item is not None:
            rows.append({"value": item})
    return rows


def parse_csv_rows(content: bytes | str, what: str = "the server") -> list[Row]:
    """The rows of a CSV answer with a header line; empty cells are left out (as JSON leaves out nulls)."""
    text = content.decode("utf-8-sig", "replace") if isinstance(content, bytes) else content
    if not text.strip():
        return []
    if isinstance(content, bytes):
        kind = describe_body(content)
        if kind is not None:
            raise BadResponseError(f"{what} answered with {kind} where CSV was expected")
    reader = csv.DictReader(io.StringIO(text))
    return [{k.strip(): v for k, v in row.items() if k and v not in (None, "")} for row in reader]


# --- values -------------------------------------------------------------------------------------------------


def get(row: Row, *keys: str) -> Any:
    """The first of ``keys`` present in ``row`` with a non-null, non-empty value, else None."""
    for key in keys:
        value = row.get(key)
        if value is not None and value != "":
            return value
    return None


def to_str(value: Any) -> str | None:
    """A string as sent (numbers, e.g. numeric PatientIDs, become their text; ``1.0`` stays ``"1.0"``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def to_decimal(value: Any) -> Decimal | None:
    """A number from a JSON number or a string such as ``"1.000000"`` / ``"123456.0"`` / ``"1,024"``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    text = str(value).strip().replace(",", "")
    if not text:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def to_int(value: Any) -> int | None:
    """An integer from ``12``, ``12.0``, ``"12"``, ``"12.000000"`` (rounded half-up if fractional)."""
    number = to_decimal(value)
    if number is None:
        return None
    return int(number.to_integral_value(rounding="ROUND_HALF_UP"))


def to_float(value: Any) -> float | None:
    """A float from a JSON number or numeric string, else None."""
    number = to_decimal(value)
    return float(number) if number is not None else None


def to_bool(value: Any) -> bool | None:
    """``true``/``false``, ``Yes``/``No``, ``1``/``0`` (any case), else None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "y", "1"):
        return True
    if text in ("false", "no", "n", "0"):
        return False
    return None


_DATE_FORMATS = (
    "%Y-%m-%d %H:%M:%S.%f",  # 2003-12-12 00:00:00.0
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d",
    "%m-%d-%Y",  # 08-29-2017 (getSeriesMetaData)
    "%m-%d-%Y %H:%M:%S",
    "%Y/%m/%d",  # 2010/08/16
    "%Y/%m/%d %H:%M:%S",
    "%m/%d/%Y",  # 01/01/2020
    "%m/%d/%Y %H:%M:%S",
    "%Y%m%d",  # DICOM DA
    "%d-%b-%Y",  # 12-Dec-2003
)
# Java's Date.toString(): "Mon Nov 04 11:45:52 UTC 2013" (the zone name varies; strptime cannot read most).
_JAVA_DATE = re.compile(
    r"^[A-Za-z]{3} ([A-Za-z]{3} \d{1,2} \d{1,2}:\d{2}:\d{2}) (?:[A-Za-z+\-:0-9]+ )?(\d{4})$"
)


def to_datetime(value: Any) -> dt.datetime | None:
    """A naive datetime from any date form the servers send, else None (never raises).

    Handles ``"2003-12-12 00:00:00.0"``, ``"08-29-2017"``, ``"Mon Nov 04 11:45:52 UTC 2013"``,
    ``"2010/08/16"``, ISO 8601 (with ``T``/``Z``/offset: converted to UTC, then made naive) and epoch
    milliseconds or seconds.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, (int, float)):
        seconds = value / 1000.0 if abs(value) > 1e11 else float(value)
        try:
            return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None
    text = str(value).strip()
    if not text:
        return None
    if text.isdigit() and len(text) >= 10:
        return to_datetime(int(text))
    match = _JAVA_DATE.match(text)
    if match:
        try:
            return dt.datetime.strptime(f"{match.group(1)} {match.group(2)}", "%b %d %H:%M:%S %Y")
        except ValueError:
            return None
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    try:
        iso = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        log.debug("unparsed date %r", text)
        return None
    if iso.tzinfo is not None:
        iso = iso.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return iso


# --- records ------------------------------------------------------------------------------------------------


def values(rows: Iterable[Row], key: str) -> list[str]:
    """The non-empty values of ``key`` in ``rows`` (``{}`` rows skipped), in order, without repeats."""
    seen: dict[str, None] = {}
    for row in rows:
        value = to_str(row.get(key))
        if value is None and len(row) == 1:
            # A single-column list under another spelling of the key (e.g. PatientId/PatientID).
            value = to_str(next(iter(row.values())))
        if value:
            seen.setdefault(value, None)
    return list(seen)


def _required(row: Row, what: str, *keys: str) -> str:
    value = to_str(get(row, *keys))
    if value is None:
        raise BadResponseError(f"a {what} row without {keys[0]}: {sorted(row)}")
    return value


def parse_patient(row: Row) -> Patient:
    """A getPatient, getPatientByCollectionAndModality or NewPatientsInCollection row (PatientId/ID)."""
    return Patient(
        patient_id=_required(row, "patient", "PatientId", "PatientID", "Subject ID"),
        collection=to_str(get(row, "Collection", "Project")),
        patient_name=to_str(get(row, "PatientName")),
        patient_sex=to_str(get(row, "PatientSex")),
        patient_birth_date=to_str(get(row, "PatientBirthDate")),
        ethnic_group=to_str(get(row, "EthnicGroup")),
        phantom=to_str(get(row, "Phantom")),
        species_code=to_str(get(row, "SpeciesCode")),
        species_description=to_str(get(row, "SpeciesDescription")),
        raw=dict(row),
    )


def parse_study(row: Row) -> Study:
    """A getPatientStudy / NewStudiesInPatientCollection row."""
    return Study(
        study_instance_uid=_required(row, "study", "StudyInstanceUID", "Study UID"),
        patient_id=to_str(get(row, "PatientID", "PatientId")),
        collection=to_str(get(row, "Collection", "Project")),
        study_date=to_datetime(get(row, "StudyDate")),
        study_description=to_str(get(row, "StudyDescription")),
        study_id=to_str(get(row, "StudyID", "StudyId")),
        admitting_diagnoses_description=to_str(get(row, "AdmittingDiagnosesDescription")),
        patient_age=to_str(get(row, "PatientAge")),
        patient_name=to_str(get(row, "PatientName")),
        patient_sex=to_str(get(row, "PatientSex")),
        series_count=to_int(get(row, "SeriesCount")),
        longitudinal_temporal_event_type=to_str(get(row, "LongitudinalTemporalEventType")),
        longitudinal_temporal_offset_from_event=to_float(get(row, "LongitudinalTemporalOffsetFromEvent")),
        raw=dict(row),
    )


def parse_series(row: Row) -> Series:
    """A getSeries / getUpdatedSeries / getContentsByName row, v2 or v4 names."""
    return Series(
        series_instance_uid=_required(row, "series", "SeriesInstanceUID", "Series UID"),
        study_instance_uid=to_str(get(row, "StudyInstanceUID")),
        collection=to_str(get(row, "Collection", "Project")),
        patient_id=to_str(get(row, "PatientID", "PatientId")),
        modality=to_str(get(row, "Modality")),
        series_number=to_int(get(row, "SeriesNumber")),
        series_description=to_str(get(row, "SeriesDescription")),
        series_date=to_datetime(get(row, "SeriesDate")),
        body_part_examined=to_str(get(row, "BodyPartExamined")),
        protocol_name=to_str(get(row, "ProtocolName")),
        manufacturer=to_str(get(row, "Manufacturer")),
        manufacturer_model_name=to_str(get(row, "ManufacturerModelName")),
        software_versions=to_str(get(row, "SoftwareVersions")),
        image_count=to_int(get(row, "ImageCount")),
        file_size=to_int(get(row, "FileSize")),
        annotations_flag=to_bool(get(row, "AnnotationsFlag")),
        license_name=to_str(get(row, "LicenseName")),
        license_uri=to_str(get(row, "LicenseURI", "LicenseUri")),
        collection_uri=to_str(get(row, "CollectionURI", "DataDescriptionURI")),
        timestamp=to_datetime(get(row, "TimeStamp", "MaxSubmissionTimestamp")),
        date_released=to_datetime(get(row, "DateReleased", "Date Released")),
        raw=dict(row),
    )


def parse_series_metadata(row: Row) -> SeriesMetadata:
    """A getSeriesMetaData row (keys with spaces, values strings) or a v4 getSeriesMetadata CSV/JSON row."""
    return SeriesMetadata(
        series_instance_uid=_required(row, "series metadata", "Series UID", "SeriesInstanceUID"),
        collection=to_str(get(row, "Collection", "Project")),
        subject_id=to_str(get(row, "Subject ID", "PatientID", "PatientId")),
        study_instance_uid=to_str(get(row, "Study UID", "StudyInstanceUID", "Study Instance UID")),
        study_description=to_str(get(row, "Study Description", "StudyDescription")),
        study_date=to_datetime(get(row, "Study Date", "StudyDate")),
        series_description=to_str(get(row, "Series Description", "SeriesDescription")),
        series_number=to_int(get(row, "Series Number", "SeriesNumber")),
        manufacturer=to_str(get(row, "Manufacturer")),
        modality=to_str(get(row, "Modality")),
        sop_class_uid=to_str(get(row, "SOP Class UID", "SOPClassUID")),
        number_of_images=to_int(get(row, "Number of Images", "NumberOfImages", "ImageCount")),
        file_size=to_int(get(row, "File Size", "FileSize")),
        license_name=to_str(get(row, "License Name", "LicenseName")),
        license_url=to_str(get(row, "License URL", "LicenseURL", "LicenseURI")),
        data_description_uri=to_str(get(row, "Data Description URI", "DataDescriptionURI", "CollectionURI")),
        third_party_analysis=to_str(get(row, "3rd Party Analysis", "ThirdPartyAnalysis")),
        annotation_size=to_int(get(row, "Annotation Size", "AnnotationSize")),
        date_released=to_datetime(get(row, "Date Released", "DateReleased")),
        raw=dict(row),
    )


def parse_series_size(row: Row) -> SeriesSize:
    """A getSeriesSize row; ``TotalSizeInBytes`` may carry a decimal point. Missing numbers count as 0."""
    total = to_int(get(row, "TotalSizeInBytes", "totalSizeInBytes"))
    count = to_int(get(row, "ObjectCount", "objectCount"))
    if total is None and count is None:
        raise BadResponseError(f"a getSeriesSize row without TotalSizeInBytes/ObjectCount: {sorted(row)}")
    return SeriesSize(total_size_in_bytes=total or 0, object_count=count or 0, raw=dict(row))


_MISSING_VALUES = ("", "NOT SPECIFIED")


def parse_value_count(row: Row) -> ValueCount:
    """A ``get*ValuesAndCounts`` row of either prefix: ``criteria``/``count`` (unversioned, strings) or
    ``<Key>``/``Count``/``Authorized`` (v4)."""
    count = to_int(get(row, "count", "Count"))
    if count is None:
        raise BadResponseError(f"a ValuesAndCounts row without a count: {sorted(row)}")
    if "criteria" in row:
        value = to_str(row.get("criteria"))
        value = None if value is None or value.strip() in _MISSING_VALUES else value
    else:
        keys = [k for k in row if k not in ("Count", "count", "Authorized", "authorized")]
        value = to_str(row[keys[0]]) if keys else None
    return ValueCount(
        value=value, count=count, authorized=to_bool(get(row, "Authorized", "authorized")), raw=row
    )


def parse_collection_description(row: Row) -> CollectionDescription:
    """A getCollectionDescriptions row (Jackson: lower-case keys, nulls kept)."""
    return CollectionDescription(
        collection=to_str(get(row, "collectionName")),
        description=to_str(get(row, "description")),
        description_uri=to_str(get(row, "descriptionURI")),
        raw=row,
    )


def parse_dicom_tag(row: Row) -> DicomTag:
    """A getDicomTags row."""
    return DicomTag(
        element=_required(row, "getDicomTags", "element"),
        name=to_str(get(row, "name")) or "",
        data=to_str(get(row, "data")),
        raw=row,
    )


def parse_doi_entry(row: Row) -> DoiEntry:
    """A getCollectionOrSeriesForDOI row (the server spells it ``thirdPartyAnanlysis``)."""
    return DoiEntry(
        collection=to_str(get(row, "collection")),
        series_instance_uid=to_str(get(row, "seriesInstanceUID")),
        third_party_analysis=to_str(get(row, "thirdPartyAnanlysis", "thirdPartyAnalysis")),
        raw=row,
    )


def parse_search_result(answer: Row) -> SearchResult:
    """A getSimpleSearch answer object (``resultSet``, ``totalPatients``, facets)."""
    patients = []
    for row in answer.get("resultSet") or []:
        if not isinstance(row, dict):
            continue
        patients.append(
            SearchPatient(
                subject_id=_required(row, "getSimpleSearch", "subjectId"),
                project=to_str(row.get("project")),
                modalities=tuple(str(m) for m in row.get("modalities") or ()),
                body_parts=tuple(str(b) for b in row.get("bodyParts") or ()),
                total_studies=to_int(row.get("totalNumberOfStudies")),
                total_series=to_int(row.get("totalNumberOfSeries")),
                authorized=to_bool(row.get("authorized")),
                raw=row,
            )
        )
    total = to_int(answer.get("totalPatients"))
    return SearchResult(
        patients=tuple(patients), total_patients=len(patients) if total is None else total, raw=answer
    )


def parse_all(rows: Iterable[Row], parse: Callable[[Row], T]) -> list[T]:
    """``parse`` applied to every row; ``{}`` rows and rows without the key field are skipped (logged)."""
    out: list[T] = []
    for row in rows:
        if not row:
            continue
        try:
            out.append(parse(row))
        except BadResponseError as exc:
            log.debug("skipping row: %s", exc)
    return out

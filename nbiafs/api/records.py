"""Typed records for the rows the NBIA metadata endpoints return.

Every record keeps the row as the server sent it in ``raw`` (keys exactly as sent, null keys absent),
which the filesystem exposes as extended attributes. The typed fields are parsed from it by
:mod:`nbiafs.api.rows`, which copes with every quirk of the live servers (``PatientId``/``PatientID``,
numbers sent as strings with decimals, several date formats, missing keys). A field the server left
out is ``None``.

Dates are naive :class:`datetime.datetime` values (the servers give no time zone).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any

Row = dict[str, Any]


class Record:
    """What every record can do besides holding its fields (a mixin of the dataclasses below)."""

    raw: Row

    def to_dict(self, *, raw: bool = False) -> dict[str, Any]:
        """The typed fields as a dict (field name -> value; dates stay ``datetime``), or with ``raw`` the row
        exactly as the server sent it."""
        if raw:
            return dict(self.raw)
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "raw"}  # type: ignore[arg-type]


@dataclass(frozen=True)
class Patient(Record):
    """A patient row (getPatient, getPatientByCollectionAndModality, NewPatientsInCollection)."""

    patient_id: str
    collection: str | None = None
    patient_name: str | None = None
    patient_sex: str | None = None
    patient_birth_date: str | None = None
    ethnic_group: str | None = None
    phantom: str | None = None
    species_code: str | None = None
    species_description: str | None = None
    raw: Row = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Study(Record):
    """A row of getPatientStudy or NewStudiesInPatientCollection."""

    study_instance_uid: str
    patient_id: str | None = None
    collection: str | None = None
    study_date: dt.datetime | None = None
    study_description: str | None = None
    study_id: str | None = None
    admitting_diagnoses_description: str | None = None
    patient_age: str | None = None
    patient_name: str | None = None
    patient_sex: str | None = None
    series_count: int | None = None
    longitudinal_temporal_event_type: str | None = None
    longitudinal_temporal_offset_from_event: float | None = None
    raw: Row = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Series(Record):
    """A row of getSeries, getUpdatedSeries or getContentsByName (v4 names mapped to the same fields)."""

    series_instance_uid: str
    study_instance_uid: str | None = None
    collection: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    series_date: dt.datetime | None = None
    body_part_examined: str | None = None
    protocol_name: str | None = None
    manufacturer: str | None = None
    manufacturer_model_name: str | None = None
    software_versions: str | None = None
    image_count: int | None = None
    file_size: int | None = None
    annotations_flag: bool | None = None
    license_name: str | None = None
    license_uri: str | None = None
    collection_uri: str | None = None
    timestamp: dt.datetime | None = None
    date_released: dt.datetime | None = None
    raw: Row = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class SeriesSize(Record):
    """getSeriesSize: total bytes (sent as a number, sometimes with a decimal point) and object count."""

    total_size_in_bytes: int
    object_count: int
    raw: Row = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class SeriesMetadata(Record):
    """A row of getSeriesMetaData (keys with spaces, every value a string, on the live server)."""

    series_instance_uid: str
    collection: str | None = None
    subject_id: str | None = None
    study_instance_uid: str | None = None
    study_description: str | None = None
    study_date: dt.datetime | None = None
    series_description: str | None = None
    series_number: int | None = None
    manufacturer: str | None = None
    modality: str | None = None
    sop_class_uid: str | None = None
    number_of_images: int | None = None
    file_size: int | None = None
    license_name: str | None = None
    license_url: str | None = None
    data_description_uri: str | None = None
    third_party_analysis: str | None = None
    annotation_size: int | None = None
    date_released: dt.datetime | None = None
    raw: Row = field(default_factory=dict, compare=False, repr=False)


# --- the advanced API ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueCount(Record):
    """A row of a ``get*ValuesAndCounts`` answer: a value and its count of distinct patients.

    ``value`` is None for rows counting a missing value (the unversioned API writes it ``""`` or
    ``NOT SPECIFIED``; v4 leaves the key out). ``authorized`` is v4's flag (always true there).
    """

    value: str | None
    count: int
    authorized: bool | None = None
    raw: Row = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class CollectionDescription(Record):
    """A row of getCollectionDescriptions: ``description`` is HTML; ``description_uri`` usually a DOI URL."""

    collection: str | None
    description: str | None = None
    description_uri: str | None = None
    raw: Row = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class DicomTag(Record):
    """A row of getDicomTags: ``element`` like ``(0020,000E)`` with one ``>`` per sequence level; ``data``
    None for sequences and binary values."""

    element: str
    name: str
    data: str | None = None
    raw: Row = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class DoiEntry(Record):
    """A row of getCollectionOrSeriesForDOI: a collection, or with ``series`` one of its series."""

    collection: str | None
    series_instance_uid: str | None = None
    third_party_analysis: str | None = None
    raw: Row = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class SearchPatient(Record):
    """A patient of a simple search (``subject_id`` is the PatientID; ``project`` the collection).

    ``authorized`` (v4 only) is False for patients the caller may see but not download.
    """

    subject_id: str
    project: str | None = None
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    total_studies: int | None = None
    total_series: int | None = None
    authorized: bool | None = None
    raw: Row = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class SearchResult(Record):
    """One page of a simple search: its patients, the total count of patients, and the answer as sent."""

    patients: tuple[SearchPatient, ...]
    total_patients: int
    raw: Row = field(default_factory=dict, compare=False, repr=False)

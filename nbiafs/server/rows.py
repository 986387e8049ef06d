"""Answer rows of the metadata endpoints, column by column as each API version writes them (facts §3).

v1/v2 write dates as ``java.sql.Timestamp`` (``2003-12-12 00:00:00.0``), v4 as ``MM-dd-yyyy`` and end most
rows with ``Authorized`` = 1. Filled defaults (Phantom ``NO``, Homo sapiens) come from the archive model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from nbiafs.server.archive import PatientInfo, SeriesInfo, StudyInfo
from nbiafs.server.dates import java_date, v1_datetime, v4_date
from nbiafs.server.formats import Stamp, java_double
from nbiafs.server.view import View

V1_PATIENT = (
    "PatientId",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "EthnicGroup",
    "Collection",
    "Phantom",
    "SpeciesCode",
    "SpeciesDescription",
)
V4_PATIENT = tuple(c for c in V1_PATIENT if c != "PatientBirthDate") + ("Authorized",)
V1_STUDY = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "AdmittingDiagnosesDescription",
    "StudyID",
    "PatientAge",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "EthnicGroup",
    "Collection",
    "SeriesCount",
    "LongitudinalTemporalEventType",
    "LongitudinalTemporalOffsetFromEvent",
)
V4_STUDY = tuple(c for c in V1_STUDY if c != "PatientBirthDate") + ("Authorized",)
V1_SERIES = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "ProtocolName",
    "SeriesDate",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesNumber",
    "AnnotationsFlag",
    "Collection",
    "PatientID",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ImageCount",
    "TimeStamp",
    "LicenseName",
    "LicenseURI",
    "CollectionURI",
    "FileSize",
    "DateReleased",
    "StudyDesc",
    "StudyDate",
    "ThirdPartyAnalysis",
)
V4_SERIES = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "ProtocolName",
    "SeriesDate",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesNumber",
    "AnnotationsFlag",
    "Collection",
    "Site",
    "PatientID",
    "PatientSex",
    "PatientAge",
    "AdmittingDiagnosisDescription",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ImageCount",
    "MaxSubmissionTimestamp",
    "LicenseName",
    "LicenseURI",
    "DataDescriptionURI",
    "FileSize",
    "ReleasedStatus",
    "DateReleased",
    "StudyDesc",
    "StudyDate",
    "ThirdPartyAnalysis",
    "Authorized",
)
V1_UPDATED = V1_SERIES[:15] + ("DateReleased",)
CONTENTS = V1_SERIES[:15] + ("Date Released",)
V1_METADATA = (
    "Series UID",
    "Collection",
    "3rd Party Analysis",
    "Data Description URI",
    "Subject ID",
    "Study UID",
    "Study Description",
    "Study Date",
    "Series Description",
    "Manufacturer",
    "Modality",
    "SOP Class UID",
    "Number of Images",
    "File Size",
    "File Location",
    "Series Number",
    "License Name",
    "License URL",
    "Annotation Size",
    "Date Released",
    "Series Date",
    "Protocol Name",
    "Body Part Examined",
    "Annotations Flag",
    "Manufacturer Model Name",
    "Software Versions",
    "TimeStamp",
)
V4_METADATA = (
    "PatientID",
    "PatientName",
    "PatientSex",
    "EthnicGroup",
    "Phantom",
    "SpeciesCode",
    "SpeciesDescription",
    "StudyInstanceUID",
    "StudyDate",
    "StudyDesc",
    "AdmittingDiagnosisDescription",
    "StudyID",
    "PatientAge",
    "LongitudinalTemporalEventType",
    "LongitudinalTemporalOffsetFromEvent",
    "SeriesInstanceUID",
    "Collection",
    "Site",
    "Modality",
    "ProtocolName",
    "SeriesDate",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesNumber",
    "AnnotationsFlag",
    "Manufacturer",
    "ManufacturerModelName",
    "PixelSpacing(mm)-Row",
    "SliceThickness(mm)",
    "SoftwareVersions",
    "ImageCount",
    "MaxSubmissionTimestamp",
    "LicenseName",
    "LicenseURI",
    "DataDescriptionURI",
    "FileSize",
    "ReleasedStatus",
    "DateReleased",
    "ThirdPartyAnalysis",
    "Authorized",
)


def pick(fields: dict[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    """The values of ``columns`` (None where absent)."""
    return tuple(fields.get(c) for c in columns)


def upper(value: str | None) -> str | None:
    """Body parts come back upper-case."""
    return None if value is None else value.upper()


def date_of(value: Any, flavour: str) -> str | None:
    """A date or timestamp as ``flavour`` writes it."""
    if flavour == "v4":
        return v4_date(value)
    stamp = v1_datetime(value)
    return None if stamp is None else Stamp(stamp)


def patient_fields(p: PatientInfo) -> dict[str, Any]:
    return {
        "PatientId": p.patient_id,
        "PatientName": p.patient_name,
        "PatientBirthDate": p.patient_birth_date,
        "PatientSex": p.patient_sex,
        "EthnicGroup": p.ethnic_group,
        "Collection": p.collection,
        "Phantom": p.phantom,
        "SpeciesCode": p.species_code,
        "SpeciesDescription": p.species_description,
        "Authorized": 1,
    }


def study_fields(view: View, st: StudyInfo, flavour: str) -> dict[str, Any]:
    p = view.archive.patient_of(st)
    return {
        "StudyInstanceUID": st.study_instance_uid,
        "StudyDate": date_of(st.study_date, flavour),
        "StudyDescription": st.study_description,
        "AdmittingDiagnosesDescription": st.admitting_diagnoses_description,
        "StudyID": st.study_id,
        "PatientAge": st.patient_age,
        "PatientID": st.patient_id,
        "PatientName": p.patient_name,
        "PatientBirthDate": p.patient_birth_date,
        "PatientSex": p.patient_sex,
        "EthnicGroup": p.ethnic_group,
        "Collection": st.collection,
        "SeriesCount": len(st.series),
        "LongitudinalTemporalEventType": st.longitudinal_temporal_event_type,
        "LongitudinalTemporalOffsetFromEvent": st.longitudinal_temporal_offset_from_event,
        "Authorized": 1,
    }


def series_fields(view: View, s: SeriesInfo, flavour: str) -> dict[str, Any]:
    """Every column any series answer may carry, for ``flavour``'s date style."""
    coll = view.archive.collections[s.collection]
    st = view.archive.studies[s.study_instance_uid]
    p = view.archive.patient_of(st)
    released = date_of(s.date_released, flavour)
    return {
        "SeriesInstanceUID": s.series_instance_uid,
        "StudyInstanceUID": s.study_instance_uid,
        "Modality": s.modality,
        "ProtocolName": s.protocol_name,
        "SeriesDate": date_of(s.series_date, flavour),
        "SeriesDescription": s.series_description,
        "BodyPartExamined": upper(s.body_part_examined),
        "SeriesNumber": s.series_number,
        "AnnotationsFlag": s.annotations_flag,
        "Collection": s.collection,
        "Site": coll.site,
        "PatientID": s.patient_id,
        "PatientName": p.patient_name,
        "PatientSex": p.patient_sex,
        "PatientAge": st.patient_age,
        "EthnicGroup": p.ethnic_group,
        "Phantom": p.phantom,
        "SpeciesCode": p.species_code,
        "SpeciesDescription": p.species_description,
        "AdmittingDiagnosisDescription": st.admitting_diagnoses_description,
        "Manufacturer": s.manufacturer,
        "ManufacturerModelName": s.manufacturer_model_name,
        "SoftwareVersions": s.software_versions,
        "ImageCount": s.image_count,
        "TimeStamp": date_of(s.timestamp, flavour),
        "MaxSubmissionTimestamp": date_of(s.timestamp, flavour),
        "LicenseName": coll.license_name,
        "LicenseURI": coll.license_uri,
        "CollectionURI": coll.collection_uri,
        "DataDescriptionURI": coll.collection_uri,
        "FileSize": s.file_size,
        "ReleasedStatus": "Released",
        "DateReleased": released,
        "Date Released": released,
        "StudyDesc": st.study_description,
        "StudyDate": date_of(st.study_date, flavour),
        "StudyID": st.study_id,
        "LongitudinalTemporalEventType": st.longitudinal_temporal_event_type,
        "LongitudinalTemporalOffsetFromEvent": st.longitudinal_temporal_offset_from_event,
        "ThirdPartyAnalysis": s.third_party_analysis,
        "PixelSpacing(mm)-Row": _joined(s.pixel_spacing),
        "SliceThickness(mm)": _joined(s.slice_thickness),
        "Authorized": 1,
    }


def _joined(values: tuple[float, ...]) -> str | None:
    return ", ".join(java_double(v) for v in values) if values else None


def _cleaned(value: str | None) -> str | None:
    return None if value is None else re.sub(r"[^a-zA-Z0-9 .-]", "", value)


def series_metadata_fields(view: View, s: SeriesInfo) -> dict[str, Any]:
    """A v1/v2 getSeriesMetaData row: spaced keys, every value a string, descriptions cleaned."""
    coll = view.archive.collections[s.collection]
    st = view.archive.studies[s.study_instance_uid]
    sop_class = s.instances[0].sop_class_uid if s.instances else None
    return {
        "Series UID": s.series_instance_uid,
        "Collection": s.collection,
        "3rd Party Analysis": s.third_party_analysis,
        "Data Description URI": coll.collection_uri,
        "Subject ID": s.patient_id,
        "Study UID": s.study_instance_uid,
        "Study Description": _cleaned(st.study_description),
        "Study Date": v4_date(st.study_date),
        "Series Description": _cleaned(s.series_description),
        "Manufacturer": None if s.manufacturer is None else s.manufacturer.replace(",", " "),
        "Modality": s.modality,
        "SOP Class UID": sop_class,
        "Number of Images": str(s.image_count),
        "File Size": str(s.file_size),
        "File Location": f"./{s.collection}/{s.patient_id}/{s.study_instance_uid}/{s.series_instance_uid}",
        "Series Number": None if s.series_number is None else f"{s.series_number:.6f}",
        "License Name": coll.license_name,
        "License URL": coll.license_uri,
        "Annotation Size": "0",
        "Date Released": java_date(s.date_released),
        "Series Date": v4_date(s.series_date),
        "Protocol Name": s.protocol_name,
        "Body Part Examined": upper(s.body_part_examined),
        "Annotations Flag": "true" if s.annotations_flag else "false",
        "Manufacturer Model Name": s.manufacturer_model_name,
        "Software Versions": s.software_versions,
        "TimeStamp": java_date(s.timestamp),
    }

"""Metadata queries: the archive, seen by one user, filtered by request parameters, as answer rows.

Rows are shaped like the live server's (see the facts file): null keys left out, ``PatientId`` on patient
endpoints and ``PatientID`` elsewhere, numbers as numbers, ``AnnotationsFlag`` a boolean, dates as
``"2003-12-12 00:00:00.0"``, getSeriesMetaData with spaced keys and every value a string, ``{}`` for a null
in single-column value lists. ``Collection`` and ``PatientID`` filters ignore case; other filters are exact.
Restricted collections the user may not see do not exist for these functions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from nbiafs.errors import BadRequestError
from nbiafs.server.archive import Archive, CollectionInfo, PatientInfo, SeriesInfo, StudyInfo
from nbiafs.server.config import ServerConfig

Row = dict[str, Any]
Params = dict[str, str]

SOP_CLASS_NAMES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}

_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y", "%m-%d-%Y", "%Y%m%d")


def nbia_datetime(value: dt.datetime | None) -> str | None:
    """``2003-12-12 00:00:00.0``, the live server's date format."""
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S") + ".0"


def parse_date(value: str, name: str) -> dt.datetime:
    """A request date in any form the live servers take; raises BadRequestError."""
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(value.strip(), fmt)
        except ValueError:
            continue
    raise BadRequestError(f"Invalid date format for {name}: {value}", status=400)


def _compact(row: Row) -> Row:
    return {k: v for k, v in row.items() if v is not None}


class View:
    """The archive as one user sees it (``user`` None = anonymous: public collections only)."""

    def __init__(self, archive: Archive, config: ServerConfig, user: str | None) -> None:
        self.archive = archive
        self.config = config
        self.user = user

    def visible(self, collection: str) -> bool:
        """Whether this user may see ``collection`` at all."""
        for name, users in self.config.restricted.items():
            if name.casefold() == collection.casefold():
                return self.user is not None and self.user in users
        return True

    def collections(self, name: str | None = None) -> Iterator[CollectionInfo]:
        """Visible collections, optionally only the one named (case-insensitive)."""
        for coll in self.archive.collections.values():
            if self.visible(coll.name) and (name is None or coll.name.casefold() == name.casefold()):
                yield coll

    def patients(self, collection: str | None = None, patient_id: str | None = None) -> Iterator[PatientInfo]:
        for coll in self.collections(collection):
            for p in coll.patients:
                if patient_id is None or p.patient_id.casefold() == patient_id.casefold():
                    yield p

    def studies(
        self, collection: str | None = None, patient_id: str | None = None, study_uid: str | None = None
    ) -> Iterator[StudyInfo]:
        for p in self.patients(collection, patient_id):
            for st in p.studies:
                if study_uid is None or st.study_instance_uid == study_uid:
                    yield st

    def series(self, params: Params) -> Iterator[SeriesInfo]:
        """Visible series matching getSeries-style filters (absent filters match everything)."""
        exact = {
            "StudyInstanceUID": "study_instance_uid",
            "Modality": "modality",
            "SeriesInstanceUID": "series_instance_uid",
            "BodyPartExamined": "body_part_examined",
            "ManufacturerModelName": "manufacturer_model_name",
            "Manufacturer": "manufacturer",
        }
        for st in self.studies(params.get("Collection"), params.get("PatientID")):
            for s in st.series:
                if all(getattr(s, attr) == params[key] for key, attr in exact.items() if key in params):
                    yield s

    def one_series(self, series_uid: str) -> SeriesInfo | None:
        """The series if it exists and is visible, else None."""
        s = self.archive.series_by_uid.get(series_uid)
        return s if s is not None and self.visible(s.collection) else None


# -- row builders ----------------------------------------------------------------------------------------


def patient_row(p: PatientInfo) -> Row:
    return _compact(
        {
            "PatientId": p.patient_id,
            "PatientName": p.patient_name,
            "PatientBirthDate": p.patient_birth_date,
            "PatientSex": p.patient_sex,
            "EthnicGroup": p.ethnic_group,
            "Collection": p.collection,
            "Phantom": p.phantom,
            "SpeciesCode": p.species_code,
            "SpeciesDescription": p.species_description,
        }
    )


def study_row(view: View, st: StudyInfo) -> Row:
    p = next(x for x in view.archive.collections[st.collection].patients if x.patient_id == st.patient_id)
    return _compact(
        {
            "StudyInstanceUID": st.study_instance_uid,
            "StudyDate": nbia_datetime(st.study_date),
            "StudyDescription": st.study_description,
            "AdmittingDiagnosesDescription": st.admitting_diagnoses_description,
            "StudyID": st.study_id,
            "PatientAge": st.patient_age,
            "PatientID": st.patient_id,
            "PatientName": p.patient_name,
            "PatientSex": p.patient_sex,
            "EthnicGroup": p.ethnic_group,
            "Collection": st.collection,
            "SeriesCount": len(st.series),
            "LongitudinalTemporalEventType": st.longitudinal_temporal_event_type,
            "LongitudinalTemporalOffsetFromEvent": st.longitudinal_temporal_offset_from_event,
        }
    )


def series_row(view: View, s: SeriesInfo, flavour: str = "v1", short: bool = False) -> Row:
    """A getSeries row; ``short`` gives the getUpdatedSeries/getContentsByName subset; v4 renames columns."""
    coll = view.archive.collections[s.collection]
    row: Row = {
        "SeriesInstanceUID": s.series_instance_uid,
        "StudyInstanceUID": s.study_instance_uid,
        "Modality": s.modality,
        "ProtocolName": s.protocol_name,
        "SeriesDate": nbia_datetime(s.series_date),
        "SeriesDescription": s.series_description,
        "BodyPartExamined": s.body_part_examined,
        "SeriesNumber": s.series_number,
        "AnnotationsFlag": s.annotations_flag,
        "Collection": s.collection,
        "PatientID": s.patient_id,
        "Manufacturer": s.manufacturer,
        "ManufacturerModelName": s.manufacturer_model_name,
        "SoftwareVersions": s.software_versions,
        "ImageCount": s.image_count,
    }
    if short:
        return _compact(row)
    if flavour == "v4":
        row["MaxSubmissionTimestamp"] = nbia_datetime(s.timestamp)
    else:
        row["TimeStamp"] = nbia_datetime(s.timestamp)
    row["LicenseName"] = coll.license_name
    row["LicenseURI"] = coll.license_uri
    row["DataDescriptionURI" if flavour == "v4" else "CollectionURI"] = coll.collection_uri
    row["FileSize"] = s.file_size
    row["DateReleased"] = nbia_datetime(s.date_released)
    if flavour == "v4":
        row["Site"] = coll.site
        row["ReleasedStatus"] = "Released"
        row["Authorized"] = True
    return _compact(row)


def series_metadata_row(view: View, s: SeriesInfo) -> Row:
    """A getSeriesMetaData row: spaced keys, every value a string."""
    coll = view.archive.collections[s.collection]
    st = view.archive.studies[s.study_instance_uid]
    sop_class = s.instances[0].sop_class_uid if s.instances else None
    released = s.date_released.strftime("%a %b %d %H:%M:%S UTC %Y") if s.date_released else None
    row = {
        "Series UID": s.series_instance_uid,
        "Collection": s.collection,
        "3rd Party Analysis": s.third_party_analysis,
        "Data Description URI": coll.collection_uri,
        "Subject ID": s.patient_id,
        "Study UID": s.study_instance_uid,
        "Study Description": st.study_description,
        "Study Date": st.study_date.strftime("%m-%d-%Y") if st.study_date else None,
        "Series Description": s.series_description,
        "Manufacturer": s.manufacturer,
        "Modality": s.modality,
        "SOP Class Name": SOP_CLASS_NAMES.get(sop_class or ""),
        "SOP Class UID": sop_class,
        "Number of Images": str(s.image_count),
        "File Size": str(s.file_size),
        "Series Number": f"{s.series_number:.6f}" if s.series_number is not None else None,
        "License Name": coll.license_name,
        "License URL": coll.license_uri,
        "Annotation Size": "0",
        "Date Released": released,
    }
    return _compact(row)


def _values(values: Iterable[str | None], key: str) -> list[Row]:
    """Distinct values as rows, ``{}`` first for a null (as the live server does), then sorted."""
    distinct = set(values)
    rows: list[Row] = [{}] if None in distinct else []
    rows.extend({key: v} for v in sorted(v for v in distinct if v is not None))
    return rows


# -- endpoints -------------------------------------------------------------------------------------------


def _series_where(view: View, params: Params, keys: tuple[str, ...]) -> Iterator[SeriesInfo]:
    return view.series({k: params[k] for k in keys if k in params})


def query(view: View, name: str, params: Params, flavour: str) -> list[Row]:
    """Rows of metadata endpoint ``name`` (canonical name, canonical parameter names).

    Raises BadRequestError for a malformed parameter value (dates).
    """
    handler = _HANDLERS[name]
    return handler(view, params, flavour)


def _collections(view: View, params: Params, flavour: str) -> list[Row]:
    return [{"Collection": c.name} for c in view.collections()]


def _modalities(view: View, params: Params, flavour: str) -> list[Row]:
    rows = _series_where(view, params, ("Collection", "BodyPartExamined"))
    return _values((s.modality for s in rows), "Modality")


def _body_parts(view: View, params: Params, flavour: str) -> list[Row]:
    rows = _series_where(view, params, ("Collection", "Modality"))
    return _values((s.body_part_examined for s in rows), "BodyPartExamined")


def _manufacturers(view: View, params: Params, flavour: str) -> list[Row]:
    rows = _series_where(view, params, ("Collection", "Modality", "BodyPartExamined"))
    return _values((s.manufacturer for s in rows), "Manufacturer")


def _patients(view: View, params: Params, flavour: str) -> list[Row]:
    return [patient_row(p) for p in view.patients(params.get("Collection"), params.get("PatientId"))]


def _patients_by_modality(view: View, params: Params, flavour: str) -> list[Row]:
    rows: list[Row] = []
    for p in view.patients(params["Collection"]):
        if any(s.modality == params["Modality"] for st in p.studies for s in st.series):
            rows.append({"PatientId": p.patient_id})
    return rows


def _patient_studies(view: View, params: Params, flavour: str) -> list[Row]:
    studies = view.studies(params.get("Collection"), params.get("PatientID"), params.get("StudyInstanceUID"))
    return [study_row(view, st) for st in studies]


def _series(view: View, params: Params, flavour: str) -> list[Row]:
    return [series_row(view, s, flavour) for s in view.series(params)]


def _series_metadata(view: View, params: Params, flavour: str) -> list[Row]:
    uids = params.get("list", params.get("SeriesInstanceUID", ""))
    rows: list[Row] = []
    for uid in uids.split(","):
        s = view.one_series(uid.strip())
        if s is not None:
            rows.append(series_metadata_row(view, s))
    return rows


def _series_size(view: View, params: Params, flavour: str) -> list[Row]:
    s = view.one_series(params["SeriesInstanceUID"])
    if s is None:
        return []
    # The live server sends this number with a decimal point.
    return [{"TotalSizeInBytes": float(s.file_size), "ObjectCount": s.image_count}]


def _sop_uids(view: View, params: Params, flavour: str) -> list[Row]:
    s = view.one_series(params["SeriesInstanceUID"])
    return [] if s is None else [{"SOPInstanceUID": i.sop_instance_uid} for i in s.instances]


def _contents(view: View, params: Params, flavour: str) -> list[Row]:
    carts = view.config.carts if view.config.carts is not None else view.archive.default_carts
    rows: list[Row] = []
    for uid in carts.get(params["name"], []):
        s = view.one_series(uid)
        if s is not None:
            rows.append(series_row(view, s, flavour, short=True))
    return rows


def _added(p: PatientInfo | StudyInfo) -> dt.datetime | None:
    studies = p.studies if isinstance(p, PatientInfo) else [p]
    stamps = [s.timestamp for st in studies for s in st.series if s.timestamp is not None]
    return min(stamps) if stamps else None


def _new_patients(view: View, params: Params, flavour: str) -> list[Row]:
    since = parse_date(params["Date"], "Date")
    return [
        patient_row(p)
        for p in view.patients(params["Collection"])
        if (added := _added(p)) is not None and added >= since
    ]


def _new_studies(view: View, params: Params, flavour: str) -> list[Row]:
    since = parse_date(params["Date"], "Date")
    return [
        study_row(view, st)
        for st in view.studies(params["Collection"], params.get("PatientID"))
        if (added := _added(st)) is not None and added >= since
    ]


def _updated_series(view: View, params: Params, flavour: str) -> list[Row]:
    since = parse_date(params["fromDate"], "fromDate")
    return [
        series_row(view, s, flavour, short=True)
        for s in view.series({})
        if s.timestamp is not None and s.timestamp >= since
    ]


_HANDLERS: dict[str, Callable[[View, Params, str], list[Row]]] = {
    "getCollectionValues": _collections,
    "getModalityValues": _modalities,
    "getBodyPartValues": _body_parts,
    "getManufacturerValues": _manufacturers,
    "getPatient": _patients,
    "getPatientByCollectionAndModality": _patients_by_modality,
    "getPatientStudy": _patient_studies,
    "getSeries": _series,
    "getSeriesMetaData": _series_metadata,
    "getSeriesSize": _series_size,
    "getSOPInstanceUIDs": _sop_uids,
    "getContentsByName": _contents,
    "NewPatientsInCollection": _new_patients,
    "NewStudiesInPatientCollection": _new_studies,
    "getUpdatedSeries": _updated_series,
}

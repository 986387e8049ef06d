"""Answers of the metadata (``rows``) endpoints: the archive seen by one caller, filtered, as tables.

Date queries compare with each series' release date, as each version reads its date (facts §4): v1/v2
``Date=yyyy/MM/dd`` and getUpdatedSeries ``fromDate=dd/MM/yyyy``, leniently, strictly after; v4
``fromDate=MM-dd-yyyy``, on or after for New*, strictly after for getUpdatedSeries; an unreadable date
finds nothing. The retired v3 API reads several date forms and answers 400 for others.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from nbiafs.server import rows
from nbiafs.server.archive import PatientInfo, SeriesInfo, StudyInfo
from nbiafs.server.dates import V1_V2_NEW, V1_V2_UPDATED, parse_lenient, parse_v4
from nbiafs.server.endpoints import Endpoint
from nbiafs.server.formats import Table, render
from nbiafs.server.ordering import database_order, value_order
from nbiafs.server.replies import Reply, bad_request
from nbiafs.server.view import View

Params = Mapping[str, list[str]]
_V3_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y", "%m-%d-%Y", "%Y%m%d")


@dataclass(frozen=True)
class Query:
    """One metadata request: who sees what, which prefix answers, and its parameters."""

    view: View
    prefix: str
    params: Params

    def get(self, name: str) -> str | None:
        """The (first) value of parameter ``name``, None if absent."""
        values = self.params.get(name)
        return values[0] if values else None

    @property
    def v4(self) -> bool:
        return self.prefix == "v4"


def answer(view: View, endpoint: Endpoint, params: Params) -> Reply:
    """The reply of metadata endpoint ``endpoint`` to ``params``."""
    query = Query(view, endpoint.prefix, params)
    result = _HANDLERS[endpoint.name](query)
    if isinstance(result, Reply):
        return result
    if endpoint.name == "getContentsByName":
        return render(result, None)  # always JSON
    fmt = query.get("format")
    if endpoint.name == "getSeriesMetaData" and query.v4 and (fmt is None or fmt.lower() == "csv"):
        fmt = "csv-download"
    return render(result, fmt)


# -- value lists -----------------------------------------------------------------------------------------


def _values(column: str, values: Iterable[str | None]) -> Table:
    return Table((column,), [(v,) for v in value_order(values)], single=True)


def _collections(q: Query) -> Table:
    return _values("Collection", (c.name for c in q.view.collections()))


def _modalities(q: Query) -> Table:
    found = q.view.series({"Collection": q.get("Collection"), "BodyPartExamined": q.get("BodyPartExamined")})
    return _values("Modality", (s.modality for s in found))


def _body_parts(q: Query) -> Table:
    found = q.view.series({"Collection": q.get("Collection"), "Modality": q.get("Modality")})
    return _values("BodyPartExamined", (rows.upper(s.body_part_examined) for s in found))


def _manufacturers(q: Query) -> Table:
    keys = ("Collection", "Modality", "BodyPartExamined")
    found = q.view.series({k: q.get(k) for k in keys})
    return _values("Manufacturer", (s.manufacturer for s in found))


# -- patients, studies, series ---------------------------------------------------------------------------


def _patient_table(q: Query, patients: Iterable[PatientInfo]) -> Table:
    columns = rows.V4_PATIENT if q.v4 else rows.V1_PATIENT
    return Table(columns, [rows.pick(rows.patient_fields(p), columns) for p in patients])


def _study_table(q: Query, studies: Iterable[StudyInfo]) -> Table:
    columns = rows.V4_STUDY if q.v4 else rows.V1_STUDY
    flavour = "v4" if q.v4 else "v1"
    return Table(columns, [rows.pick(rows.study_fields(q.view, st, flavour), columns) for st in studies])


def _series_table(q: Query, series: Iterable[SeriesInfo], columns: tuple[str, ...]) -> Table:
    flavour = "v4" if q.v4 else "v1"
    return Table(columns, [rows.pick(rows.series_fields(q.view, s, flavour), columns) for s in series])


def _patients(q: Query) -> Table:
    return _patient_table(q, q.view.patients(q.get("Collection"), q.get("PatientId")))


def _patients_by_modality(q: Query) -> Table:
    modality = (q.get("Modality") or "").casefold()
    found = [
        p
        for p in q.view.patients(q.get("Collection"))
        if any(s.modality.casefold() == modality for st in p.studies for s in st.series)
    ]
    columns = ("PatientId", "Authorized") if q.v4 else ("PatientId",)
    return Table(columns, [rows.pick(rows.patient_fields(p), columns) for p in found])


def _patient_studies(q: Query) -> Table:
    return _study_table(q, q.view.studies(q.get("Collection"), q.get("PatientID"), q.get("StudyInstanceUID")))


def _series(q: Query) -> Table:
    found = q.view.series({name: q.get(name) for name in q.params})
    return _series_table(q, found, rows.V4_SERIES if q.v4 else rows.V1_SERIES)


# -- one series ------------------------------------------------------------------------------------------


def _series_metadata(q: Query) -> Table | Reply:
    if q.v4:  # POST getSeriesMetadata: ``list`` repeated and/or comma-joined
        uids = [uid.strip() for value in q.params.get("list", []) for uid in value.split(",")]
        found = [s for s in (q.view.one_series(uid) for uid in uids if uid) if s is not None]
        return _series_table(q, found, rows.V4_METADATA)
    s = q.view.one_series(q.get("SeriesInstanceUID"))
    if s is None:
        return Reply(204)
    return Table(rows.V1_METADATA, [rows.pick(rows.series_metadata_fields(q.view, s), rows.V1_METADATA)])


def _series_size(q: Query) -> Table:
    columns = ("TotalSizeInBytes", "ObjectCount")
    uid = q.get("SeriesInstanceUID")
    if q.v4:
        found = q.view.one_series(uid)
        return Table(columns, [] if found is None else [(found.file_size, found.image_count)])
    # v1/v2 aggregate without an access check: an unknown series is one row of nulls, ``[{}]``.
    s = q.view.archive.series_by_uid.get(uid or "")
    if s is None:
        return Table(columns, [(None, None)])
    total: object = {"string": f"{s.file_size}.0", "float": float(s.file_size)}.get(
        q.view.config.series_size_form, s.file_size
    )
    return Table(columns, [(total, s.image_count)])


def _sop_uids(q: Query) -> Table:
    s = q.view.one_series(q.get("SeriesInstanceUID"))
    found = [] if s is None else database_order(s.instances)
    return Table(("SOPInstanceUID",), [(i.sop_instance_uid,) for i in found], single=True)


def _contents(q: Query) -> Table:
    carts = q.view.config.carts if q.view.config.carts is not None else q.view.archive.default_carts
    found = [
        s for s in (q.view.one_series(uid) for uid in carts.get(q.get("name") or "", [])) if s is not None
    ]
    return _series_table(q, found, rows.CONTENTS)


# -- changes since a date --------------------------------------------------------------------------------


def _since(q: Query, name: str, pattern: str) -> tuple[dt.datetime | None, bool] | Reply:
    """The date parameter ``name`` and whether a release on that very instant counts; Reply for v3's 400."""
    value = q.get(name)
    if value is None:
        return None, True
    if q.prefix == "v3":
        for fmt in _V3_DATE_FORMATS:
            try:
                return dt.datetime.strptime(value.strip(), fmt), True
            except ValueError:
                continue
        return bad_request(f"Invalid date format for {name}: {value}")
    if q.v4:
        return parse_v4(value) or dt.datetime.max, False
    return parse_lenient(value, pattern) or dt.datetime.max, False


def _released_since(series: Iterable[SeriesInfo], since: dt.datetime | None, inclusive: bool) -> bool:
    for s in series:
        released = s.date_released
        if since is None or (
            released is not None and (released > since or (inclusive and released == since))
        ):
            return True
    return False


def _new_patients(q: Query) -> Table | Reply:
    got = _since(q, "fromDate" if q.v4 else "Date", V1_V2_NEW)
    if isinstance(got, Reply):
        return got
    since, inclusive = got
    inclusive = inclusive or q.v4
    found = [
        p
        for p in q.view.patients(q.get("Collection"))
        if _released_since((s for st in p.studies for s in st.series), since, inclusive)
    ]
    return _patient_table(q, found)


def _new_studies(q: Query) -> Table | Reply:
    got = _since(q, "fromDate" if q.v4 else "Date", V1_V2_NEW)
    if isinstance(got, Reply):
        return got
    since, inclusive = got
    inclusive = inclusive or q.v4
    found = [
        st
        for st in q.view.studies(q.get("Collection"), q.get("PatientID"))
        if _released_since(st.series, since, inclusive)
    ]
    return _study_table(q, found)


def _updated_series(q: Query) -> Table | Reply:
    got = _since(q, "fromDate", V1_V2_UPDATED)
    if isinstance(got, Reply):
        return got
    since, inclusive = got
    found = [s for s in q.view.series({}) if _released_since([s], since, inclusive)]
    return _series_table(q, found, rows.V4_SERIES if q.v4 else rows.V1_UPDATED)


_HANDLERS: dict[str, Callable[[Query], Table | Reply]] = {
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

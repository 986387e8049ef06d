"""The advanced API (facts §7) on both prefixes: unversioned (Jackson: lower-case keys, nulls kept, dates
in epoch milliseconds, ``[]`` for nothing) and v4 (its counts in Jettison with capitalised keys and
``Authorized``; the rest Jackson). Counts are distinct patients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nbiafs.server import search
from nbiafs.server.archive import CollectionInfo, SeriesInfo
from nbiafs.server.dates import epoch_ms
from nbiafs.server.dicomtags import dicom_tags
from nbiafs.server.endpoints import Endpoint
from nbiafs.server.formats import Table, render
from nbiafs.server.ordering import database_order, value_order
from nbiafs.server.replies import Reply, bad_request, empty, jackson, not_granted, null_500
from nbiafs.server.view import View

Params = Mapping[str, list[str]]

# endpoint -> (v4 key, value of a series (and its patient's species), filters)
_COUNTS: dict[str, tuple[str, Callable[[View, SeriesInfo], str | None], tuple[str, ...]]] = {
    "getModalityValuesAndCounts": ("Modality", lambda v, s: s.modality, ("Collection", "BodyPartExamined")),
    "getBodyPartValuesAndCounts": (
        "BodyPart",
        lambda v, s: None if s.body_part_examined is None else s.body_part_examined.upper(),
        ("Collection", "Modality"),
    ),
    "getCollectionValuesAndCounts": ("Collection", lambda v, s: s.collection, ()),
    "getManufacturerValuesAndCounts": (
        "Manufacturer",
        lambda v, s: s.manufacturer,
        ("Collection", "Modality", "BodyPartExamined"),
    ),
    "getSpeciesValuesAndCounts": (
        "Species",
        lambda v, s: v.archive.patient_by_key[(s.collection, s.patient_id)].species_code,
        (),
    ),
}
# What the unversioned API writes for a null value (None: it fails).
_NULL_CRITERIA = {
    "getModalityValuesAndCounts": None,
    "getBodyPartValuesAndCounts": "NOT SPECIFIED",
    "getCollectionValuesAndCounts": None,
    "getManufacturerValuesAndCounts": "",
}


def _get(params: Params, name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def answer(view: View, endpoint: Endpoint, params: Params) -> Reply:
    """The reply of advanced endpoint ``endpoint`` (prefix ``adv`` or ``v4``)."""
    v4 = endpoint.prefix == "v4"
    name = endpoint.name
    if name in _COUNTS:
        return _counts(view, name, params, v4)
    if name == "getCollectionDescriptions":
        return _descriptions(view, _get(params, "collectionName"), v4)
    if name == "getDicomTags":
        return _tags(view, _get(params, "SeriesUID"))
    if name == "getCollectionOrSeriesForDOI":
        return _doi(view, _get(params, "DOI"), _get(params, "CollectionOrSeries"), v4)
    if name == "getSimpleSearch":
        return search.simple_search(view, params, v4)
    return search.manifest(view, params, v4)


def _counts(view: View, name: str, params: Params, v4: bool) -> Reply:
    key, value_of, filters = _COUNTS[name]
    patients: dict[str | None, set[tuple[str, str]]] = {}
    for s in view.series({f: _get(params, f) for f in filters}):
        patients.setdefault(value_of(view, s), set()).add((s.collection, s.patient_id))
    values = value_order(patients)
    if v4:
        table = Table((key, "Count", "Authorized"), [(v, len(patients[v]), 1) for v in values])
        return render(table, None)
    null = _NULL_CRITERIA.get(name)
    if None in patients and null is None:
        return null_500()
    return jackson([{"criteria": null if v is None else v, "count": str(len(patients[v]))} for v in values])


def _description_row(coll: CollectionInfo | None, v4: bool) -> dict[str, Any]:
    desc = coll.description if coll is not None else None
    row: dict[str, Any] = {
        "description": desc.description if desc else None,
        "id": desc.description_id if desc else None,
        "collectionDescTimestamp": epoch_ms(desc.timestamp) if desc else None,
        "collectionName": coll.name if coll is not None and desc else None,
        "userName": desc.user_name if desc else None,
        "licenseId": desc.license_id if desc else None,
        "descriptionURI": coll.collection_uri if coll is not None and desc else None,
    }
    if v4:
        for dropped in ("collectionDescTimestamp", "userName", "licenseId"):
            del row[dropped]
    return row


def _descriptions(view: View, name: str | None, v4: bool) -> Reply:
    if name is None:
        return jackson([_description_row(c, v4) for c in view.collections() if c.description is not None])
    found = next(view.collections(name), None)
    if found is None or (v4 and found.description is None):
        return jackson([])
    return jackson([_description_row(found, v4)])


def _tags(view: View, series_uid: str | None) -> Reply:
    series = view.one_series(series_uid)
    if series is None:
        return bad_request(not_granted(series_uid))
    if not series.instances:
        return empty()
    first = database_order(series.instances)[0]
    try:
        data = view.archive.instance_bytes(first.sop_instance_uid)
    except OSError:
        return empty()  # the file is missing
    return jackson(dicom_tags(data))


def _doi(view: View, doi: str | None, collection_or_series: str | None, v4: bool) -> Reply:
    by_series = collection_or_series is not None and collection_or_series.lower() == "series"
    rows: list[dict[str, Any]] = []
    for coll in view.collections():
        if doi is not None and coll.collection_uri != doi:
            continue
        series = [s for p in coll.patients for st in p.studies for s in st.series]
        if by_series:
            for s in series:
                rows.append(_doi_row(coll.name, s.series_instance_uid, s.third_party_analysis, v4))
        else:
            for third in dict.fromkeys(s.third_party_analysis for s in series):
                rows.append(_doi_row(coll.name, None, third, v4))
    return jackson(rows)


def _doi_row(collection: str, series_uid: str | None, third: str | None, v4: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "collection": collection,
        "seriesInstanceUID": series_uid,
        "thirdPartyAnanlysis": third,
    }
    if v4:
        row["authorized"] = 1
    return {k: v for k, v in row.items() if v is not None}

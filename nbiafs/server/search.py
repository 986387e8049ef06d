"""The simple search of the advanced API (``getSimpleSearch``, unversioned
``getSimpleSearchWithModalityAndBodyPartPaged``) and the manifest of its result (facts §7).

The form holds criteria ``criteriaType<i>`` with ``value<i>`` (or ``fromDate<i>``/``toDate<i>``,
``from<i>``/``to<i>``), i = 0, 1, ... without gaps; repeats of one type are alternatives; unknown types are
ignored. ``MinNumberOfStudiesCriteria`` (a number) and ``ModalityAndedSearchCriteria`` (``all``: every
requested modality, not any) act on the patient, as the GUI's and tcia_utils' searches use them.
``sortField``, ``sortDirection``, ``start`` and ``size`` are required (missing: 500). Counts are
patients. The unversioned API searches what the caller may see; v4 searches everything and marks what the
caller may not download ``authorized: 0``.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nbiafs.server.archive import PatientInfo, SeriesInfo, StudyInfo
from nbiafs.server.dates import parse_lenient
from nbiafs.server.ordering import java_hashmap_order
from nbiafs.server.replies import MANIFEST, NULL_500, PROCESS_ERROR, Reply, jackson, text
from nbiafs.server.view import View, same

Form = Mapping[str, list[str]]
DOWNLOAD_SERVER = "https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet"

# criteria type (lower case) -> what it compares: series, study or patient attribute getter.
_SERIES_CRITERIA: dict[str, Callable[[SeriesInfo], str | None]] = {
    "imagemodalitycriteria": lambda s: s.modality,
    "anatomicalsitecriteria": lambda s: s.body_part_examined,
    "bodypartexaminedcriteria": lambda s: s.body_part_examined,
    "manufacturercriteria": lambda s: s.manufacturer,
    "modelcriteria": lambda s: s.manufacturer_model_name,
    "softwareversioncriteria": lambda s: s.software_versions,
    "seriescriteria": lambda s: s.series_instance_uid,
    "collectioncriteria": lambda s: s.collection,
    "patientcriteria": lambda s: s.patient_id,
    "studycriteria": lambda s: s.study_instance_uid,
}


class SearchError(Exception):
    """The live server's 500 for a malformed search; ``detail`` is the exception message."""

    def __init__(self, detail: str | None) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass
class Hit:
    """One patient of the result and its matching series."""

    patient: PatientInfo
    authorized: int
    series: list[SeriesInfo] = field(default_factory=list)


def _one(form: Form, name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _int(value: str | None) -> int:
    if value is None:
        raise SearchError(None)
    try:
        return int(value.strip())
    except ValueError:
        raise SearchError(f'For input string: "{value}"') from None


def _date(value: str | None, pattern: str) -> dt.datetime:
    parsed = parse_lenient(value or "", pattern) if value is not None else None
    if parsed is None:
        raise SearchError(f'Unparseable date: "{value}"' if value is not None else None)
    return parsed


def _age(value: str | None) -> int | None:
    match = re.match(r"\d+", value or "")
    return int(match.group()) if match else None


class Criteria:
    """The criteria of one search form."""

    def __init__(self, form: Form, date_pattern: str) -> None:
        self.values: dict[str, list[str]] = {}
        self.sexes: list[str] = []
        self.species: list[str] = []
        self.dates: list[tuple[dt.datetime, dt.datetime]] = []
        self.ages: list[tuple[int, int]] = []
        self.min_studies: int | None = None
        self.modalities_anded = False
        i = 0
        while (kind := _one(form, f"criteriaType{i}")) is not None:
            key = kind.lower()
            value = _one(form, f"value{i}")
            if key in _SERIES_CRITERIA and value is not None:
                self.values.setdefault(key, []).append(value)
            elif key == "patientsexcriteria" and value is not None:
                self.sexes.append(value)
            elif key == "speciescriteria" and value is not None:
                self.species.append(value)
            elif key == "daterangecriteria":
                start = _date(_one(form, f"fromDate{i}"), date_pattern)
                end = _date(_one(form, f"toDate{i}"), date_pattern)
                self.dates.append((start, end))
            elif key == "patientagerangecriteria":
                self.ages.append((_int(_one(form, f"from{i}")), _int(_one(form, f"to{i}"))))
            elif key == "minnumberofstudiescriteria":
                self.min_studies = _int(value)  # new Integer(value): a non-number is a 500
            elif key == "modalityandedsearchcriteria":
                self.modalities_anded = (value or "").strip().lower() == "all"
            i += 1

    def patient_ok(self, p: PatientInfo, study: StudyInfo) -> bool:
        if self.sexes and not any(same(p.patient_sex, v) for v in self.sexes):
            return False
        if self.species and not any(same(p.species_code, v) for v in self.species):
            return False
        age = _age(study.patient_age)
        if self.ages and (age is None or not any(lo <= age <= hi for lo, hi in self.ages)):
            return False
        day = study.study_date
        return not self.dates or (day is not None and any(lo <= day <= hi for lo, hi in self.dates))

    def series_ok(self, s: SeriesInfo) -> bool:
        return all(any(same(_SERIES_CRITERIA[k](s), v) for v in values) for k, values in self.values.items())

    def hit_ok(self, p: PatientInfo, series: list[SeriesInfo]) -> bool:
        """The patient-level criteria: at least ``min_studies`` studies (probably all the patient's, as
        NBIA's ``MinNumberOfStudiesCriteria`` compares a per-patient study count), and with
        ``ModalityAndedSearchCriteria=all`` a series of every requested modality, not just of one."""
        if self.min_studies is not None and len(p.studies) < self.min_studies:
            return False
        if self.modalities_anded:
            wanted = {v.casefold() for v in self.values.get("imagemodalitycriteria", [])}
            if not wanted <= {s.modality.casefold() for s in series}:
                return False
        return bool(series)


def _hits(view: View, criteria: Criteria, v4: bool) -> list[Hit]:
    hits: list[Hit] = []
    for coll in view.archive.collections.values():
        allowed = view.visible(coll.name)
        if not allowed and not v4:
            continue
        for p in coll.patients:
            hit = Hit(p, 1 if allowed else 0)
            for st in p.studies:
                if criteria.patient_ok(p, st):
                    hit.series.extend(s for s in st.series if criteria.series_ok(s))
            if criteria.hit_ok(p, hit.series):
                hits.append(hit)
    return hits


def _sort(hits: list[Hit], field_name: str, direction: str) -> list[Hit]:
    def studies(h: Hit) -> int:
        return len({s.study_instance_uid for s in h.series})

    keys: dict[str, Callable[[Hit], Any]] = {
        "subject": lambda h: h.patient.patient_id,
        "study": studies,
        "series": lambda h: len(h.series),
        "totalnumberofseries": lambda h: len(h.series),
        "totalnumberofstudies": studies,
    }
    key = keys.get(field_name.lower(), lambda h: (h.patient.collection, h.patient.patient_id))
    return sorted(hits, key=key, reverse=direction.lower() != "ascending")


def _facet(counts: dict[str, set[tuple[str, str]]]) -> list[dict[str, Any]]:
    return [{"value": v, "count": len(counts[v])} for v in java_hashmap_order(counts)]


def _patient_entry(view: View, hit: Hit, v4: bool) -> dict[str, Any]:
    p = hit.patient
    by_study: dict[str, list[int]] = {}
    for s in hit.series:
        by_study.setdefault(s.study_instance_uid, []).append(view.archive.pk[s.series_instance_uid])
    entry: dict[str, Any] = {
        "subjectId": p.patient_id,
        "project": p.collection,
        "id": view.archive.pk[(p.collection, p.patient_id)],
        "modalities": sorted({s.modality for s in hit.series}),
        "bodyParts": sorted({s.body_part_examined.upper() for s in hit.series if s.body_part_examined}),
        "totalNumberOfStudies": len(by_study),
        "totalNumberOfSeries": len(hit.series),
    }
    if v4:
        entry["authorized"] = hit.authorized
    entry["studyIdentifiers"] = [
        {"studyIdentifier": view.archive.pk[uid], "seriesIdentifiers": ids} for uid, ids in by_study.items()
    ]
    return entry


def run(view: View, form: Form, v4: bool) -> tuple[list[Hit], dict[str, Any]]:
    """The page of hits and the answer object; raises SearchError."""
    criteria = Criteria(form, "MM-dd-yyyy" if v4 else "dd/MM/yyyy")
    sort_field, direction = _one(form, "sortField"), _one(form, "sortDirection")
    start, size = _int(_one(form, "start")), _int(_one(form, "size"))
    if sort_field is None or direction is None:
        raise SearchError(None)
    hits = _sort(_hits(view, criteria, v4), sort_field, direction)
    end = min(start + size, len(hits))
    if start > end or start < 0:
        raise SearchError(f"fromIndex({start}) > toIndex({end})")
    facets: dict[str, dict[str, set[tuple[str, str]]]] = {
        k: {} for k in ("bodyParts", "modalities", "collections")
    }
    facets["species"] = {}
    for hit in hits:
        who = (hit.patient.collection, hit.patient.patient_id)
        facets["collections"].setdefault(hit.patient.collection, set()).add(who)
        if hit.patient.species_code:
            facets["species"].setdefault(hit.patient.species_code, set()).add(who)
        for s in hit.series:
            facets["modalities"].setdefault(s.modality, set()).add(who)
            if s.body_part_examined:
                facets["bodyParts"].setdefault(s.body_part_examined.upper(), set()).add(who)
    page = hits[start:end]
    answer = {
        "resultSet": [_patient_entry(view, h, v4) for h in page],
        "totalPatients": len(hits),
        "bodyParts": _facet(facets["bodyParts"]),
        "modalities": _facet(facets["modalities"]),
        "collections": _facet(facets["collections"]),
        "species": _facet(facets["species"]),
        "maxTimepoints": {},
        "minTimepoints": {},
        "sort": f"{sort_field}-{direction}",
    }
    return page, answer


def _failure(exc: SearchError) -> Reply:
    return text(500, NULL_500 if exc.detail is None else f"{PROCESS_ERROR}\n{exc.detail}")


def simple_search(view: View, form: Form, v4: bool) -> Reply:
    """getSimpleSearch's answer."""
    try:
        return jackson(run(view, form, v4)[1])
    except SearchError as exc:
        return _failure(exc)


def manifest(view: View, form: Form, v4: bool) -> Reply:
    """getManifestForSimpleSearch: a ``.tcia`` manifest of the page's (authorised) patients' series."""
    try:
        page, _ = run(view, form, v4)
    except SearchError as exc:
        return _failure(exc)
    uids = [s.series_instance_uid for hit in page if hit.authorized for s in hit.series]
    name = f"manifest-{int(time.time() * 1000)}.tcia"
    head = [
        f"downloadServerUrl={DOWNLOAD_SERVER}",
        "includeAnnotation=false",
        "noOfrRetry=4",
        f"databasketId={name}",
        "manifestVersion=3.0",
        "ListOfSeriesToDownload=",
    ]
    return text(200, "".join(line + "\n" for line in head + uids), MANIFEST)

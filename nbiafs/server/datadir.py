"""``--data DIR``: index a folder of real DICOM files by their headers into an :class:`Archive`.

Every regular file under DIR is read with pydicom (``stop_before_pixels``); files that are not DICOM, or lack
a Study/Series/SOP Instance UID, are skipped. The collection is TCIA's private tag (0013,1010) when present,
else the first folder level under DIR (DIR's own name for files directly in it). Bytes are read from disk on
each request, so the folder must stay in place; the series' TimeStamp is the newest file modification time.

Publishing: :func:`index_data_dir` with ``known`` (the release dates of a previous index) gives a series that
was not there before the release date ``now``, the time it appeared, so a running server can pick up series
added to the folder (``ArchiveServer.rescan``, ``nbiafs serve --rescan S``) and a client's getUpdatedSeries
sees them as published.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from nbiafs.server.archive import (
    Archive,
    CollectionInfo,
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    read_files,
)
from nbiafs.server.errors import ServerConfigError
from nbiafs.server.ordering import database_order

log = logging.getLogger(__name__)

COLLECTION_TAG = (0x0013, 0x1010)


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)


def _int(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d")
    except ValueError:
        return None


def _floats(ds: Any, keyword: str, first_only: bool) -> tuple[float, ...]:
    """The numbers of a (multi-valued) numeric element; ``()`` if absent or not numbers."""
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    values = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return ()
    return numbers[:1] if first_only else numbers


def _add(values: tuple[float, ...], new: tuple[float, ...]) -> tuple[float, ...]:
    return values + tuple(v for v in new if v not in values)


def _collection_of(ds: Any, path: Path, root: Path) -> str:
    elem = ds.get(COLLECTION_TAG)
    if elem is not None and str(elem.value).strip():
        return str(elem.value).strip()
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else root.name


def index_data_dir(
    directory: str | os.PathLike[str],
    known: dict[str, dt.datetime | None] | None = None,
    now: dt.datetime | None = None,
) -> Archive:
    """The archive of every DICOM file under ``directory``; raises ServerConfigError if there is none.

    With ``known`` (series UID -> release date of a previous index), a series already known keeps its
    release date and a new one is released at ``now`` (naive UTC; default: the current time).
    """
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ServerConfigError(f"data directory {root} does not exist")
    collections: dict[str, CollectionInfo] = {}
    patients: dict[tuple[str, str], PatientInfo] = {}
    studies: dict[str, StudyInfo] = {}
    series_map: dict[str, SeriesInfo] = {}
    paths: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
                log.debug("skipping %s: %s", path, exc)
                continue
            sop_uid = _text(ds, "SOPInstanceUID")
            series_uid = _text(ds, "SeriesInstanceUID")
            study_uid = _text(ds, "StudyInstanceUID")
            if not (sop_uid and series_uid and study_uid) or sop_uid in paths:
                continue
            stat = path.stat()
            mtime = dt.datetime.fromtimestamp(int(stat.st_mtime), dt.timezone.utc).replace(tzinfo=None)
            coll_name = _collection_of(ds, path, root)
            patient_id = _text(ds, "PatientID") or "UNKNOWN"
            coll = collections.setdefault(coll_name, CollectionInfo(name=coll_name))
            patient = patients.get((coll_name, patient_id))
            if patient is None:
                patient = PatientInfo(
                    patient_id=patient_id,
                    collection=coll_name,
                    patient_name=_text(ds, "PatientName"),
                    patient_sex=_text(ds, "PatientSex"),
                    patient_birth_date=_text(ds, "PatientBirthDate"),
                    ethnic_group=_text(ds, "EthnicGroup"),
                )
                patients[(coll_name, patient_id)] = patient
                coll.patients.append(patient)
            study = studies.get(study_uid)
            if study is None:
                study = StudyInfo(
                    study_instance_uid=study_uid,
                    collection=coll_name,
                    patient_id=patient_id,
                    study_date=_date(_text(ds, "StudyDate")),
                    study_description=_text(ds, "StudyDescription"),
                    study_id=_text(ds, "StudyID"),
                    patient_age=_text(ds, "PatientAge"),
                )
                studies[study_uid] = study
                patient.studies.append(study)
            series = series_map.get(series_uid)
            if series is None:
                series = SeriesInfo(
                    series_instance_uid=series_uid,
                    study_instance_uid=study_uid,
                    collection=coll_name,
                    patient_id=patient_id,
                    modality=_text(ds, "Modality") or "OT",
                    series_number=_int(ds, "SeriesNumber"),
                    series_description=_text(ds, "SeriesDescription"),
                    series_date=_date(_text(ds, "SeriesDate")),
                    body_part_examined=_text(ds, "BodyPartExamined"),
                    protocol_name=_text(ds, "ProtocolName"),
                    manufacturer=_text(ds, "Manufacturer"),
                    manufacturer_model_name=_text(ds, "ManufacturerModelName"),
                    software_versions=_text(ds, "SoftwareVersions"),
                    timestamp=mtime,
                    date_released=mtime,
                )
                series_map[series_uid] = series
                study.series.append(series)
            elif series.timestamp is None or mtime > series.timestamp:
                series.timestamp = series.date_released = mtime
            series.pixel_spacing = _add(series.pixel_spacing, _floats(ds, "PixelSpacing", True))
            series.slice_thickness = _add(series.slice_thickness, _floats(ds, "SliceThickness", False))
            series.instances.append(
                InstanceInfo(
                    sop_instance_uid=sop_uid,
                    sop_class_uid=_text(ds, "SOPClassUID") or "",
                    instance_number=_int(ds, "InstanceNumber") or 0,
                    acquisition_number=_int(ds, "AcquisitionNumber"),
                    size=stat.st_size,
                )
            )
            paths[sop_uid] = path
    if not paths:
        raise ServerConfigError(f"no DICOM files found under {root}")
    if known is not None:
        appeared = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
        for uid, series in series_map.items():
            series.date_released = known.get(uid, appeared)
    for series in series_map.values():
        series.instances = database_order(series.instances)
    log.info("indexed %d instances in %d series under %s", len(paths), len(series_map), root)
    return Archive(list(collections.values()), read_files(paths))

"""The in-memory archive model the server answers from: collections, patients, studies, series, instances.

Built either by :mod:`nbiafs.server.synthetic` (deterministic synthetic data, bytes in memory) or by
:mod:`nbiafs.server.datadir` (a folder of real DICOM, bytes read from disk on demand). The model knows nothing
about users: visibility is applied by :mod:`nbiafs.server.view`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nbiafs.server.errors import UnknownObjectError


@dataclass(frozen=True)
class InstanceInfo:
    """One DICOM instance; ``size`` is its exact length in bytes."""

    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int
    acquisition_number: int | None
    size: int


@dataclass
class SeriesInfo:
    """One series and its instances, in database order (not InstanceNumber order, see ``ordering``).

    ``None`` fields are absent in answers.
    """

    series_instance_uid: str
    study_instance_uid: str
    collection: str
    patient_id: str
    modality: str
    series_number: int | None = None
    series_description: str | None = None
    series_date: dt.datetime | None = None
    body_part_examined: str | None = None
    protocol_name: str | None = None
    manufacturer: str | None = None
    manufacturer_model_name: str | None = None
    software_versions: str | None = None
    annotations_flag: bool | None = None  # usually null on the live servers
    # MaxSubmissionTimestamp / TimeStamp: when the series was last submitted.
    timestamp: dt.datetime | None = None
    # DateReleased: every date query (New*, getUpdatedSeries) compares with it.
    date_released: dt.datetime | None = None
    third_party_analysis: str | None = "NO"
    pixel_spacing: tuple[float, ...] = ()  # distinct row spacings (mm) of its instances
    slice_thickness: tuple[float, ...] = ()  # distinct slice thicknesses (mm)
    instances: list[InstanceInfo] = field(default_factory=list)

    @property
    def file_size(self) -> int:
        """Total bytes of all instances."""
        return sum(i.size for i in self.instances)

    @property
    def image_count(self) -> int:
        return len(self.instances)


@dataclass
class StudyInfo:
    """One study; ``series`` in archive order."""

    study_instance_uid: str
    collection: str
    patient_id: str
    study_date: dt.datetime | None = None
    study_description: str | None = None
    study_id: str | None = None
    admitting_diagnoses_description: str | None = None
    patient_age: str | None = None
    longitudinal_temporal_event_type: str | None = None
    longitudinal_temporal_offset_from_event: float | None = None
    series: list[SeriesInfo] = field(default_factory=list)


@dataclass
class PatientInfo:
    """One patient of one collection."""

    patient_id: str
    collection: str
    patient_name: str | None = None
    patient_sex: str | None = None
    patient_birth_date: str | None = None
    ethnic_group: str | None = None
    phantom: str | None = "NO"
    species_code: str | None = "337915000"
    species_description: str | None = "Homo sapiens"
    studies: list[StudyInfo] = field(default_factory=list)


@dataclass(frozen=True)
class CollectionDescription:
    """The advanced API's collection description (HTML) and its bookkeeping."""

    description: str
    description_id: int
    timestamp: dt.datetime
    user_name: str
    license_id: int


@dataclass
class CollectionInfo:
    """One collection with its license, DOI (``collection_uri``), site and optional description."""

    name: str
    license_name: str = "Creative Commons Attribution 4.0 International License"
    license_uri: str = "https://creativecommons.org/licenses/by/4.0/"
    collection_uri: str | None = None
    site: str | None = None
    description: CollectionDescription | None = None
    patients: list[PatientInfo] = field(default_factory=list)


class Archive:
    """Every collection and a way to find any object by its UID.

    ``instance_bytes(sop_uid)`` gives an instance's exact bytes, ``instance_md5`` its MD5 (hex); ``default_carts``
    are the shared lists served when the config names none; ``pk`` holds the internal database ids (patients by
    ``(collection, patient_id)``, studies and series by UID) the advanced API exposes. Treat an Archive as
    read-only once built (it is shared between servers).
    """

    def __init__(
        self,
        collections: list[CollectionInfo],
        read_instance: Callable[[str], bytes],
        default_carts: dict[str, list[str]] | None = None,
    ) -> None:
        self.collections: dict[str, CollectionInfo] = {c.name: c for c in collections}
        self.default_carts: dict[str, list[str]] = dict(default_carts or {})
        self._read_instance = read_instance
        self.patients: list[PatientInfo] = []
        self.studies: dict[str, StudyInfo] = {}
        self.series_by_uid: dict[str, SeriesInfo] = {}
        self.instance_index: dict[str, tuple[SeriesInfo, InstanceInfo]] = {}
        self.patient_by_key: dict[tuple[str, str], PatientInfo] = {}
        self.pk: dict[object, int] = {}
        self._md5: dict[str, str] = {}
        self._md5_lock = threading.Lock()
        for coll in collections:
            for patient in coll.patients:
                self.patients.append(patient)
                key = (coll.name, patient.patient_id)
                self.patient_by_key[key] = patient
                self.pk[key] = 40000 + len(self.patient_by_key)
                for study in patient.studies:
                    self.studies[study.study_instance_uid] = study
                    self.pk[study.study_instance_uid] = 88000 + len(self.studies)
                    for series in study.series:
                        self.series_by_uid[series.series_instance_uid] = series
                        self.pk[series.series_instance_uid] = 900 + len(self.series_by_uid)
                        for inst in series.instances:
                            self.instance_index[inst.sop_instance_uid] = (series, inst)

    def collection_names(self) -> list[str]:
        return list(self.collections)

    def iter_series(self) -> Iterator[SeriesInfo]:
        """Every series of every collection, in archive order."""
        yield from self.series_by_uid.values()

    def iter_instances(self) -> Iterator[tuple[SeriesInfo, InstanceInfo]]:
        """Every (series, instance) pair, in archive order."""
        for series in self.series_by_uid.values():
            for inst in series.instances:
                yield series, inst

    def series(self, series_uid: str) -> SeriesInfo:
        """The series with this UID; raises UnknownObjectError."""
        try:
            return self.series_by_uid[series_uid]
        except KeyError:
            raise UnknownObjectError(f"no series {series_uid}") from None

    def study(self, study_uid: str) -> StudyInfo:
        """The study with this UID; raises UnknownObjectError."""
        try:
            return self.studies[study_uid]
        except KeyError:
            raise UnknownObjectError(f"no study {study_uid}") from None

    def patient_of(self, study: StudyInfo) -> PatientInfo:
        """The patient a study belongs to."""
        return self.patient_by_key[(study.collection, study.patient_id)]

    def instance(self, sop_uid: str) -> tuple[SeriesInfo, InstanceInfo]:
        """The series and instance of this SOPInstanceUID; raises UnknownObjectError."""
        try:
            return self.instance_index[sop_uid]
        except KeyError:
            raise UnknownObjectError(f"no instance {sop_uid}") from None

    def instance_bytes(self, sop_uid: str) -> bytes:
        """The exact bytes of one instance (raises UnknownObjectError; OSError if a data-dir file vanished)."""
        self.instance(sop_uid)
        return self._read_instance(sop_uid)

    def instance_md5(self, sop_uid: str) -> str:
        """The MD5 (32 lowercase hex digits) of one instance's bytes, computed once."""
        digest = self._md5.get(sop_uid)
        if digest is None:
            digest = hashlib.md5(self.instance_bytes(sop_uid)).hexdigest()
            with self._md5_lock:
                self._md5[sop_uid] = digest
        return digest

    def total_bytes(self) -> int:
        return sum(inst.size for _, inst in self.iter_instances())


def read_files(paths: dict[str, Path]) -> Callable[[str], bytes]:
    """An instance reader for files on disk, keyed by SOPInstanceUID."""

    def read(sop_uid: str) -> bytes:
        return paths[sop_uid].read_bytes()

    return read

"""The in-memory archive model the server answers from: collections, patients, studies, series, instances.

Built either by :mod:`nbiafs.server.synthetic` (deterministic synthetic data, bytes in memory) or by
:mod:`nbiafs.server.datadir` (a folder of real DICOM, bytes read from disk on demand). The model knows nothing
about users: visibility is applied by :mod:`nbiafs.server.queries`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nbiafs.errors import NotFoundError


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
    """One series and its instances (ordered by InstanceNumber). ``None`` fields are absent in answers."""

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
    annotations_flag: bool = False
    # When the series was (last) submitted: getUpdatedSeries and the "new since" queries use it.
    timestamp: dt.datetime | None = None
    date_released: dt.datetime | None = None
    third_party_analysis: str = "NO"
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


@dataclass
class CollectionInfo:
    """One collection with its license and description URI."""

    name: str
    license_name: str = "Creative Commons Attribution 4.0 International License"
    license_uri: str = "https://creativecommons.org/licenses/by/4.0/"
    collection_uri: str | None = None
    site: str | None = None
    patients: list[PatientInfo] = field(default_factory=list)


class Archive:
    """Every collection and a way to find any object by its UID.

    ``instance_bytes(sop_uid)`` gives an instance's exact bytes; ``default_carts`` are the shared lists served
    when the config names none. Treat an Archive as read-only once built (it is shared between servers).
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
        for coll in collections:
            for patient in coll.patients:
                self.patients.append(patient)
                for study in patient.studies:
                    self.studies[study.study_instance_uid] = study
                    for series in study.series:
                        self.series_by_uid[series.series_instance_uid] = series
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
        """The series with this UID; raises NotFoundError."""
        try:
            return self.series_by_uid[series_uid]
        except KeyError:
            raise NotFoundError(f"no series {series_uid}", status=404) from None

    def study(self, study_uid: str) -> StudyInfo:
        """The study with this UID; raises NotFoundError."""
        try:
            return self.studies[study_uid]
        except KeyError:
            raise NotFoundError(f"no study {study_uid}", status=404) from None

    def instance(self, sop_uid: str) -> tuple[SeriesInfo, InstanceInfo]:
        """The series and instance of this SOPInstanceUID; raises NotFoundError."""
        try:
            return self.instance_index[sop_uid]
        except KeyError:
            raise NotFoundError(f"no instance {sop_uid}", status=404) from None

    def instance_bytes(self, sop_uid: str) -> bytes:
        """The exact bytes of one instance (raises NotFoundError; OSError if a data-dir file vanished)."""
        self.instance(sop_uid)
        return self._read_instance(sop_uid)

    def total_bytes(self) -> int:
        return sum(inst.size for _, inst in self.iter_instances())


def read_files(paths: dict[str, Path]) -> Callable[[str], bytes]:
    """An instance reader for files on disk, keyed by SOPInstanceUID."""

    def read(sop_uid: str) -> bytes:
        return paths[sop_uid].read_bytes()

    return read

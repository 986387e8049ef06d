"""The archive as one user sees it: visibility of restricted collections and the live servers' filters.

Every filter ignores case (v1/v2 upper-case Collection and PatientID and compare the rest under MySQL's
case-insensitive collation; v4 upper-cases every filter). ``user`` None or the guest sees public data only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from nbiafs.server.archive import Archive, CollectionInfo, PatientInfo, SeriesInfo, StudyInfo
from nbiafs.server.config import ServerConfig

# getSeries-style filter name -> SeriesInfo attribute.
SERIES_FILTERS = {
    "StudyInstanceUID": "study_instance_uid",
    "Modality": "modality",
    "SeriesInstanceUID": "series_instance_uid",
    "BodyPartExamined": "body_part_examined",
    "ManufacturerModelName": "manufacturer_model_name",
    "Manufacturer": "manufacturer",
}


def same(value: str | None, wanted: str | None) -> bool:
    """Whether a stored value matches a filter (None filter: anything), ignoring case."""
    if wanted is None:
        return True
    return value is not None and value.casefold() == wanted.casefold()


class View:
    """The archive as ``user`` sees it (None: anonymous, public collections only)."""

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
        """Visible collections, optionally only the one named."""
        for coll in self.archive.collections.values():
            if self.visible(coll.name) and same(coll.name, name):
                yield coll

    def patients(self, collection: str | None = None, patient_id: str | None = None) -> Iterator[PatientInfo]:
        for coll in self.collections(collection):
            for p in coll.patients:
                if same(p.patient_id, patient_id):
                    yield p

    def studies(
        self, collection: str | None = None, patient_id: str | None = None, study_uid: str | None = None
    ) -> Iterator[StudyInfo]:
        for p in self.patients(collection, patient_id):
            for st in p.studies:
                if same(st.study_instance_uid, study_uid):
                    yield st

    def series(self, filters: Mapping[str, str | None]) -> Iterator[SeriesInfo]:
        """Visible series matching getSeries-style filters (absent or None filters match everything)."""
        wanted = {
            attr: filters.get(key) for key, attr in SERIES_FILTERS.items() if filters.get(key) is not None
        }
        for st in self.studies(filters.get("Collection"), filters.get("PatientID")):
            for s in st.series:
                if all(same(getattr(s, attr), value) for attr, value in wanted.items()):
                    yield s

    def one_series(self, series_uid: str | None) -> SeriesInfo | None:
        """The series if it exists and is visible, else None."""
        s = self.archive.series_by_uid.get(series_uid or "")
        return s if s is not None and self.visible(s.collection) else None

    def one_study(self, study_uid: str | None) -> StudyInfo | None:
        """The study if it exists and is visible, else None."""
        st = self.archive.studies.get(study_uid or "")
        return st if st is not None and self.visible(st.collection) else None

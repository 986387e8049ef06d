"""How each NBIA API version spells the same requests: one table, one row per version.

The client (:mod:`nbiafs.api.client`) asks its :class:`Dialect` instead of branching on the version, so every
per-version difference the client knows of is here. What the versions answer (columns, date formats of the
rows) is read by :mod:`nbiafs.api.rows`, which accepts every form.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class DateParam:
    """A date query parameter: its name and its ``strftime`` format."""

    name: str
    format: str

    def param(self, since: dt.date) -> dict[str, str]:
        """``{name: since formatted}``."""
        return {self.name: since.strftime(self.format)}


@dataclass(frozen=True)
class Dialect:
    """One API version's spelling of the requests nbiafs makes.

    ``extra_params`` go with every metadata request (v3 needs ``format=json``); ``patients_by_modality`` and
    ``contents_by_name`` are endpoint names; ``series_metadata_post`` says that series metadata is v4's
    ``POST getSeriesMetadata`` (form field ``list``, CSV by default) rather than ``GET getSeriesMetaData``;
    ``new_since`` is the date parameter of NewPatientsInCollection and NewStudiesInPatientCollection,
    ``updated_since`` that of getUpdatedSeries; ``endpoint_metadata`` says whether ``<endpoint>/metadata``
    exists; ``new_studies_by_patient`` says that a NewStudiesInPatientCollection refused for want of a
    ``PatientID`` may be asked patient by patient. ``advanced`` says where the advanced API (counts,
    descriptions, DICOM tags, DOIs, simple search) lives: ``unversioned`` (``/nbia-api/services/<name>``, a
    token required), ``here`` (beside the other endpoints: v4), ``v4`` (v4's, beside the profile's version) or
    ``none``; ``simple_search`` is that
    endpoint's name there. ``series_md5`` says how a series ZIP brings its members' MD5s (an
    ``md5hashes.csv`` member, last): ``include`` (getImage with ``IncludeMD5=Yes``: v4), ``endpoint``
    (getImageWithMD5Hash: v1/v2) or ``none``; ``instance_md5`` is the endpoint and parameter that give one
    instance's MD5 (None: there is none).
    """

    version: str
    new_since: DateParam
    updated_since: DateParam
    extra_params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    patients_by_modality: str = "getPatientByCollectionAndModality"
    contents_by_name: str = "getContentsByName"
    series_metadata_post: bool = False
    endpoint_metadata: bool = False
    new_studies_by_patient: bool = True
    advanced: str = "unversioned"
    simple_search: str = "getSimpleSearchWithModalityAndBodyPartPaged"
    series_md5: str = "endpoint"
    instance_md5: tuple[str, str] | None = ("getM5HashForImage", "SOPInstanceUid")


# Each version parses its own format and answers any other silently wrong (facts §4): v1/v2 leniently
# (Java SimpleDateFormat: a misread date or no rows), v4 with STR_TO_DATE (no rows).
_V1_V2_NEW = DateParam("Date", "%Y/%m/%d")
_V1_V2_UPDATED = DateParam("fromDate", "%d/%m/%Y")
_V4_DATE = DateParam("fromDate", "%m-%d-%Y")

DIALECTS: Mapping[str, Dialect] = MappingProxyType(
    {
        # v1 is anonymous, and the unversioned advanced API wants a token: use v4's anonymous one.
        "v1": Dialect(
            "v1",
            new_since=_V1_V2_NEW,
            updated_since=_V1_V2_UPDATED,
            advanced="v4",
            simple_search="getSimpleSearch",
        ),
        "v2": Dialect("v2", new_since=_V1_V2_NEW, updated_since=_V1_V2_UPDATED),
        "v3": Dialect(
            "v3",
            # The v3 guide documents YYYY-MM-DD.
            new_since=DateParam("Date", "%Y-%m-%d"),
            updated_since=DateParam("fromDate", "%m/%d/%Y"),
            extra_params=MappingProxyType({"format": "json"}),
            patients_by_modality="PatientsByModality",
            contents_by_name="ContentsByName",
            endpoint_metadata=True,
            new_studies_by_patient=False,
            advanced="none",
            series_md5="none",
            instance_md5=None,
        ),
        "v4": Dialect(
            "v4",
            new_since=_V4_DATE,
            updated_since=_V4_DATE,
            series_metadata_post=True,
            advanced="here",
            simple_search="getSimpleSearch",
            series_md5="include",
            instance_md5=("getMD5HashForImage", "SOPInstanceUID"),
        ),
    }
)
"""The dialect of each API version (``ServerProfile.flavour``)."""


ADVANCED_ENDPOINTS: Mapping[str, str] = MappingProxyType(
    {
        "getModalityValuesAndCounts": "GET",
        "getBodyPartValuesAndCounts": "GET",
        "getCollectionValuesAndCounts": "GET",
        "getManufacturerValuesAndCounts": "GET",
        "getSpeciesValuesAndCounts": "GET",
        "getCollectionDescriptions": "GET",
        "getDicomTags": "GET",
        "getCollectionOrSeriesForDOI": "POST",
        "getSimpleSearch": "POST",
        "getSimpleSearchWithModalityAndBodyPartPaged": "POST",
        "getManifestForSimpleSearch": "POST",
    }
)
"""The advanced API's endpoints (where :attr:`Dialect.advanced` says) and their methods; both names of the
simple search are accepted and sent as the dialect's :attr:`Dialect.simple_search`."""

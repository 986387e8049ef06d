"""``NbiaClient``: every NBIA endpoint as a method, one API over the v1/v2/v3/v4 versions. Knows only HTTP.

HTTP itself (pool, retries, deadlines, errors) is :class:`~nbiafs.api.transport.Transport`'s; how each version
spells a request is its :class:`~nbiafs.api.dialects.Dialect`'s. Every failure is raised as a
:mod:`nbiafs.errors` type. Thread-safe.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Iterator, Sequence
from typing import IO, Any

from nbiafs.api.auth import TokenManager
from nbiafs.api.credentials import Credentials
from nbiafs.api.dialects import ADVANCED_ENDPOINTS, DIALECTS, Dialect
from nbiafs.api.manifest import Manifest, parse_manifest
from nbiafs.api.profiles import ServerProfile
from nbiafs.api.records import (
    CollectionDescription,
    DicomTag,
    DoiEntry,
    Patient,
    Row,
    SearchResult,
    Series,
    SeriesMetadata,
    SeriesSize,
    Study,
    ValueCount,
)
from nbiafs.api.rows import (
    describe_body,
    parse_all,
    parse_collection_description,
    parse_csv_rows,
    parse_dicom_tag,
    parse_doi_entry,
    parse_json_rows,
    parse_json_value,
    parse_patient,
    parse_search_result,
    parse_series,
    parse_series_metadata,
    parse_series_size,
    parse_study,
    parse_value_count,
    values,
)
from nbiafs.api.transport import Check, Transport
from nbiafs.errors import (
    AccessDeniedError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    NotFoundError,
    ServerError,
)
from nbiafs.settings import ClientSettings

log = logging.getLogger(__name__)

MANIFEST_SEARCH_SIZE = 1_000_000
"""Patients a simple-search manifest asks for (the server pages the search; the manifest wants them all)."""


_MD5_RE = re.compile(r"[0-9a-f]{32}")


def _refused_image(path: str, status: int) -> bool:
    """getSingleImage's HTTP 500 means "unknown or refused instance" (facts: retrying will not help)."""
    return status == 500 and "/getSingleImage?" in path


def _looks_json(content: bytes, content_type: str) -> bool:
    return content_type.startswith("application/json") or content.lstrip()[:1] in (b"[", b"{")


class NbiaClient:
    """A client for one NBIA server profile (see ``docs/architecture.md`` for the method list).

    ``credentials``: None uses the profile's guest account (v2) or anonymous access (v1/v4); v3 needs
    ``credentials.api_key``. ``settings``: timeouts, retries, pool size (defaults in
    :class:`~nbiafs.settings.ClientSettings`). The client logs in lazily; :meth:`close` stops the token
    refresher and logs out.
    """

    def __init__(
        self,
        profile: ServerProfile,
        credentials: Credentials | None = None,
        settings: ClientSettings | None = None,
    ) -> None:
        self.profile = profile
        self.settings = settings or ClientSettings()
        self.dialect: Dialect = DIALECTS[profile.flavour]
        headers: dict[str, str] = {}
        if profile.auth == "api_key":
            if credentials is None or not credentials.api_key:
                raise ConfigError(f"profile {profile.name!r} (the v3 API) needs an API key: set NBIA_API_KEY")
            headers["api_key"] = credentials.api_key
        elif profile.auth != "oauth" and credentials is not None and credentials.user:
            log.warning("profile %s is anonymous: credentials of %s not used", profile.name, credentials.user)
        self._http = Transport(self.settings, headers=headers, final=_refused_image)
        if profile.auth == "oauth":
            assert profile.token_url is not None
            if credentials is not None and credentials.user:
                user, password = credentials.user, credentials.password
            elif profile.guest_user:
                user, password = profile.guest_user, ""
            else:
                raise ConfigError(f"profile {profile.name!r} needs a user name")
            self._http.tokens = TokenManager(
                self._http.session,
                profile.token_url,
                user,
                password,
                logout_url=profile.logout_url,
                timeout=self._http.timeouts,
            )

    def __repr__(self) -> str:
        return f"NbiaClient({self.profile.name!r}, {self.profile.api_url!r})"

    def __enter__(self) -> NbiaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tokens(self) -> TokenManager | None:
        """The token manager of an OAuth profile (None when anonymous or API-key based)."""
        return self._http.tokens

    @property
    def user(self) -> str | None:
        """The account in use (None when anonymous or API-key based)."""
        tokens = self._http.tokens
        return tokens.user if tokens else None

    @property
    def scope(self) -> str:
        """What separates this client's view of the archive from others': its API URL and account."""
        return f"{self.profile.api_url}|{self.user or ''}"

    def login(self) -> None:
        """Obtain the first token now (OAuth profiles; a no-op for anonymous and API-key ones).

        Otherwise the first request logs in. Raises AuthenticationError for refused credentials,
        UnavailableError / ServerError when the token endpoint cannot be reached.
        """
        if self._http.tokens is not None:
            self._http.tokens.token()

    def renew_token(self) -> bool:
        """Get a new token now, because an answer looked like a dead token's (production answers most list
        requests made with an expired or invalid token with 200 and no rows). Returns False when the profile
        has no token (anonymous or API key), True once a new one is in use. Raises AuthenticationError,
        UnavailableError, ServerError."""
        tokens = self._http.tokens
        if tokens is None:
            return False
        tokens.renew(tokens.token())
        return True

    def close(self) -> None:
        """Stop the token refresher, log out and close the connection pool. Idempotent."""
        self._http.close()

    # --- requests ---------------------------------------------------------------------------------------------

    def _endpoint_url(self, endpoint: str) -> str:
        return self.profile.endpoint_url(endpoint)

    def _fetch(
        self,
        endpoint: str,
        params: dict[str, str] | None = None,
        *,
        method: str = "GET",
        data: dict[str, str] | None = None,
        url: str | None = None,
    ) -> tuple[bytes, str]:
        """The whole body of ``endpoint``'s answer and its Content-Type."""
        return self._http.fetch(
            url or self._endpoint_url(endpoint), endpoint, params, method=method, data=data
        )

    def _params(self, **named: str | None) -> dict[str, str]:
        params = {key: value for key, value in named.items() if value is not None}
        params.update(self.dialect.extra_params)
        return params

    def _rows(
        self,
        endpoint: str,
        params: dict[str, str] | None = None,
        *,
        method: str = "GET",
        data: dict[str, str] | None = None,
        url: str | None = None,
    ) -> list[Row]:
        content, ctype = self._fetch(endpoint, params, method=method, data=data, url=url)
        rows = parse_json_rows(content, ctype, what=endpoint)
        log.debug("%s: %d rows", endpoint, len(rows))
        return rows

    # --- value lists ----------------------------------------------------------------------------------------

    def collections(self) -> list[str]:
        """Every collection name the account may see."""
        return values(self._rows("getCollectionValues", self._params()), "Collection")

    def modalities(self, collection: str | None = None, body_part: str | None = None) -> list[str]:
        """Modality values, optionally filtered."""
        params = self._params(Collection=collection, BodyPartExamined=body_part)
        return values(self._rows("getModalityValues", params), "Modality")

    def body_parts(self, collection: str | None = None, modality: str | None = None) -> list[str]:
        """BodyPartExamined values (the ``{}`` rows of the live server are skipped)."""
        params = self._params(Collection=collection, Modality=modality)
        return values(self._rows("getBodyPartValues", params), "BodyPartExamined")

    def manufacturers(
        self, collection: str | None = None, modality: str | None = None, body_part: str | None = None
    ) -> list[str]:
        """Manufacturer values, optionally filtered."""
        params = self._params(Collection=collection, Modality=modality, BodyPartExamined=body_part)
        return values(self._rows("getManufacturerValues", params), "Manufacturer")

    # --- patients, studies, series --------------------------------------------------------------------------

    def patients(self, collection: str | None = None) -> list[Patient]:
        """getPatient rows (all collections when ``collection`` is None)."""
        return parse_all(self._rows("getPatient", self._params(Collection=collection)), parse_patient)

    def patients_by_modality(self, collection: str, modality: str) -> list[Patient]:
        """Patients of ``collection`` having ``modality`` (``collection`` filled in when the row lacks it)."""
        endpoint = self.dialect.patients_by_modality
        rows = self._rows(endpoint, self._params(Collection=collection, Modality=modality))
        patients = parse_all(rows, parse_patient)
        return [p if p.collection else dataclasses.replace(p, collection=collection) for p in patients]

    def studies(
        self, collection: str, patient_id: str | None = None, study_instance_uid: str | None = None
    ) -> list[Study]:
        """getPatientStudy rows."""
        params = self._params(
            Collection=collection, PatientID=patient_id, StudyInstanceUID=study_instance_uid
        )
        return parse_all(self._rows("getPatientStudy", params), parse_study)

    def series(
        self,
        collection: str | None = None,
        patient_id: str | None = None,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        modality: str | None = None,
        body_part: str | None = None,
        manufacturer: str | None = None,
        manufacturer_model_name: str | None = None,
    ) -> list[Series]:
        """getSeries rows (v4's renamed fields mapped to the same record fields)."""
        params = self._params(
            Collection=collection,
            PatientID=patient_id,
            StudyInstanceUID=study_instance_uid,
            SeriesInstanceUID=series_instance_uid,
            Modality=modality,
            BodyPartExamined=body_part,
            Manufacturer=manufacturer,
            ManufacturerModelName=manufacturer_model_name,
        )
        return parse_all(self._rows("getSeries", params), parse_series)

    def series_metadata(self, series_instance_uid: str) -> list[SeriesMetadata]:
        """getSeriesMetaData rows for one series (v4: POST getSeriesMetadata, CSV); [] when unknown."""
        if self.dialect.series_metadata_post:
            form = {"list": series_instance_uid}
            content, ctype = self._fetch("getSeriesMetadata", method="POST", data=form)
            if _looks_json(content, ctype):
                rows = parse_json_rows(content, ctype, what="getSeriesMetadata")
            else:
                rows = parse_csv_rows(content, what="getSeriesMetadata")
        else:
            rows = self._rows("getSeriesMetaData", self._params(SeriesInstanceUID=series_instance_uid))
        return parse_all(rows, parse_series_metadata)

    def series_size(self, series_instance_uid: str) -> SeriesSize:
        """getSeriesSize. Raises NotFoundError when the series is unknown (or invisible to this account)."""
        params = self._params(SeriesInstanceUID=series_instance_uid)
        sizes = parse_all(self._rows("getSeriesSize", params), parse_series_size)
        if not sizes:
            raise NotFoundError(f"no series {series_instance_uid}", status=200)
        size = sizes[0]
        if size.object_count == 0 and size.total_size_in_bytes == 0:
            raise NotFoundError(f"no series {series_instance_uid}", status=200)
        return size

    def sop_instance_uids(self, series_instance_uid: str) -> list[str]:
        """The SOPInstanceUIDs of one series ([] when unknown or invisible)."""
        rows = self._rows("getSOPInstanceUIDs", self._params(SeriesInstanceUID=series_instance_uid))
        return values(rows, "SOPInstanceUID")

    def contents_by_name(self, name: str) -> list[Series]:
        """The series of a shared cart (getContentsByName; v1 for the v4 profile, SharedList on v3)."""
        url = self.profile.contents_by_name_url or self._endpoint_url("getContentsByName")
        endpoint = self.dialect.contents_by_name
        return parse_all(self._rows(endpoint, self._params(name=name), url=url), parse_series)

    # --- changes since a date -------------------------------------------------------------------------------

    def new_patients(self, collection: str, since: dt.date) -> list[Patient]:
        """Patients of ``collection`` with series released since ``since`` (NewPatientsInCollection; v1/v2:
        released after the start of that day, v4: on or after it)."""
        params = self._params(Collection=collection, **self.dialect.new_since.param(since))
        return parse_all(self._rows("NewPatientsInCollection", params), parse_patient)

    def new_studies(self, collection: str, since: dt.date, patient_id: str | None = None) -> list[Study]:
        """Studies of ``collection`` (optionally one patient) with series released since ``since``.

        Where the server insists on a ``PatientID``, the collection's patients are asked one by one (one
        request per patient).
        """
        params = self._params(
            Collection=collection, PatientID=patient_id, **self.dialect.new_since.param(since)
        )
        try:
            return parse_all(self._rows("NewStudiesInPatientCollection", params), parse_study)
        except BadRequestError:
            if patient_id is not None or not self.dialect.new_studies_by_patient:
                raise
        log.info("NewStudiesInPatientCollection needs a PatientID here: asking patient by patient")
        studies: list[Study] = []
        for patient in self.patients(collection):
            studies.extend(self.new_studies(collection, since, patient.patient_id))
        return studies

    def updated_series(self, since: dt.date) -> list[Series]:
        """Series released after ``since`` (getUpdatedSeries; compared with the release date).

        Raises BadResponseError when a row was released before ``since``: the server misread the date.
        """
        params = self._params(**self.dialect.updated_since.param(since))
        found = parse_all(self._rows("getUpdatedSeries", params), parse_series)
        start = dt.datetime.combine(since, dt.time())
        for series in found:
            released = series.date_released
            if released is not None and released.replace(tzinfo=None) < start:
                raise BadResponseError(
                    f"getUpdatedSeries since {since} answered with series {series.series_instance_uid} released "
                    f"{released:%Y-%m-%d}: the server misread the date"
                )
        return found

    def endpoint_metadata(self, endpoint: str) -> dict[str, Any]:
        """The v3 ``<endpoint>/metadata`` description. Raises ConfigError on other versions."""
        if not self.dialect.endpoint_metadata:
            raise ConfigError(f"endpoint metadata exists only on the v3 API, not on {self.dialect.version}")
        name = f"{endpoint.strip('/')}/metadata"
        rows = self._rows(name, {})
        if len(rows) != 1:
            raise BadResponseError(f"{name}: expected one JSON object, got {len(rows)} rows")
        return rows[0]

    # --- the advanced API ---------------------------------------------------------------------------------------

    def _advanced_url(self, endpoint: str) -> str:
        """Where ``endpoint`` of the advanced API lives for this profile; ConfigError where it does not."""
        where = self.dialect.advanced
        if where == "none":
            raise ConfigError(f"the {self.dialect.version} API has no {endpoint}")
        if where == "here":
            return self._endpoint_url(endpoint)
        base = re.sub(r"/v[0-9]+/?$", "", self.profile.api_url.rstrip("/"))
        return f"{base}/v4/{endpoint}" if where == "v4" else f"{base}/{endpoint}"

    def _advanced(
        self,
        endpoint: str,
        params: dict[str, str | None] | None = None,
        *,
        form: dict[str, str] | None = None,
    ) -> Any:
        """The decoded JSON of an advanced endpoint (GET with ``params``, or POST with ``form``); None for an
        empty answer."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        method = "POST" if form is not None else "GET"
        url = self._advanced_url(endpoint)
        content, ctype = self._fetch(endpoint, query or None, method=method, data=form, url=url)
        if not content.strip():
            return None
        return parse_json_value(content, ctype, what=endpoint)

    def _counts(self, endpoint: str, **params: str | None) -> list[ValueCount]:
        rows = self._advanced(endpoint, params) or []
        if not isinstance(rows, list):
            raise BadResponseError(
                f"{endpoint} answered with {type(rows).__name__} where a list was expected"
            )
        return parse_all([r for r in rows if isinstance(r, dict)], parse_value_count)

    def modality_counts(
        self, collection: str | None = None, body_part: str | None = None
    ) -> list[ValueCount]:
        """Modalities with their counts of distinct patients (getModalityValuesAndCounts)."""
        return self._counts("getModalityValuesAndCounts", Collection=collection, BodyPartExamined=body_part)

    def body_part_counts(
        self, collection: str | None = None, modality: str | None = None
    ) -> list[ValueCount]:
        """Body parts with their counts of distinct patients (getBodyPartValuesAndCounts)."""
        return self._counts("getBodyPartValuesAndCounts", Collection=collection, Modality=modality)

    def collection_counts(self) -> list[ValueCount]:
        """Collections with their counts of distinct patients (getCollectionValuesAndCounts)."""
        return self._counts("getCollectionValuesAndCounts")

    def manufacturer_counts(
        self, collection: str | None = None, modality: str | None = None, body_part: str | None = None
    ) -> list[ValueCount]:
        """Manufacturers with their counts of distinct patients (getManufacturerValuesAndCounts)."""
        return self._counts(
            "getManufacturerValuesAndCounts",
            Collection=collection,
            Modality=modality,
            BodyPartExamined=body_part,
        )

    def collection_descriptions(self, collection: str | None = None) -> list[CollectionDescription]:
        """Descriptions (HTML) of one or every described collection ([] for an unknown or refused one)."""
        rows = self._advanced("getCollectionDescriptions", {"collectionName": collection}) or []
        return parse_all([r for r in rows if isinstance(r, dict)], parse_collection_description)

    def dicom_tags(self, series_instance_uid: str) -> list[DicomTag]:
        """The DICOM header of a series' first instance as NBIA lists it (getDicomTags).

        AccessDeniedError for an unknown or refused series (NBIA answers both with its access text).
        """
        rows = self._advanced("getDicomTags", {"SeriesUID": series_instance_uid}) or []
        return parse_all([r for r in rows if isinstance(r, dict)], parse_dicom_tag)

    def doi_entries(self, doi: str | None = None, *, series: bool = False) -> list[DoiEntry]:
        """The collections (or with ``series`` the series) published under ``doi`` (a ``https://doi.org/…``
        URL; None: every DOI) (getCollectionOrSeriesForDOI)."""
        form = {"CollectionOrSeries": "series" if series else "collection"}
        if doi is not None:
            form["DOI"] = doi
        rows = self._advanced("getCollectionOrSeriesForDOI", form=form) or []
        return parse_all([r for r in rows if isinstance(r, dict)], parse_doi_entry)

    @staticmethod
    def _search_form(
        criteria: Sequence[tuple[str, str]], sort_field: str, ascending: bool, start: int, size: int
    ) -> dict[str, str]:
        form = {
            "sortField": sort_field,
            "sortDirection": "ascending" if ascending else "descending",
            "start": str(start),
            "size": str(size),
        }
        for i, (kind, value) in enumerate(criteria):
            form[f"criteriaType{i}"] = kind
            form[f"value{i}"] = value
        return form

    def simple_search(
        self,
        criteria: Sequence[tuple[str, str]] = (),
        *,
        sort_field: str = "subject",
        ascending: bool = True,
        start: int = 0,
        size: int = 100,
    ) -> SearchResult:
        """One page of patients matching ``criteria``: ``(criteria type, value)`` pairs such as
        ``("CollectionCriteria", "TCGA-GBM")`` or ``("ImageModalityCriteria", "MR")``; repeats of one type OR.
        """
        form = self._search_form(criteria, sort_field, ascending, start, size)
        answer = self._advanced(self.dialect.simple_search, form=form)
        if answer is None:
            return SearchResult(patients=(), total_patients=0)
        if not isinstance(answer, dict):
            raise BadResponseError(f"the simple search answered with {type(answer).__name__}, not an object")
        return parse_search_result(answer)

    def simple_search_manifest(
        self, criteria: Sequence[tuple[str, str]] = (), *, sort_field: str = "subject", ascending: bool = True
    ) -> Manifest:
        """The Data Retriever manifest of every series a simple search finds (getManifestForSimpleSearch)."""
        form = self._search_form(criteria, sort_field, ascending, 0, MANIFEST_SEARCH_SIZE)
        url = self._advanced_url("getManifestForSimpleSearch")
        content, ctype = self._fetch("getManifestForSimpleSearch", method="POST", data=form, url=url)
        if not content.strip():
            return Manifest(series_instance_uids=())
        if describe_body(content, ctype):
            raise BadResponseError(
                f"getManifestForSimpleSearch answered with {describe_body(content, ctype)}"
            )
        text = content.decode("utf-8", "replace")
        try:
            return parse_manifest(text, source="getManifestForSimpleSearch", allow_empty=True)
        except ConfigError as exc:  # the server's answer, not the user's file
            raise BadResponseError(str(exc)) from None

    # --- raw queries ----------------------------------------------------------------------------------------

    def query(self, endpoint: str, params: dict[str, str], fmt: str = "json") -> list[dict[str, Any]] | str:
        """Any metadata endpoint, raw: JSON rows as sent (``fmt="json"``; an object answer is one row), or the
        server's own text otherwise (and for a manifest).

        v3 gets ``format=<fmt>``; v4 getSeriesMetadata is sent as the POST it must be (``list`` form field);
        the advanced API's endpoints go where the dialect says, POSTs with ``params`` as the form.
        """
        params = dict(params)
        method, data, url = "GET", None, None
        if endpoint in ADVANCED_ENDPOINTS:
            if endpoint.startswith("getSimpleSearch"):
                endpoint = self.dialect.simple_search
            url = self._advanced_url(endpoint)
            if ADVANCED_ENDPOINTS[endpoint] == "POST":
                method, data, params = "POST", params, {}
        elif self.dialect.series_metadata_post and endpoint.lower() == "getseriesmetadata":
            method, data, params = "POST", params, {}
            if "list" not in data and "SeriesInstanceUID" in data:
                data["list"] = data.pop("SeriesInstanceUID")
            data.setdefault("format", fmt)  # JSON keeps numbers numbers (the default is quoted CSV)
        elif "format" in self.dialect.extra_params or fmt != "json":
            params.setdefault("format", fmt)
        if endpoint in ("getContentsByName", "ContentsByName"):
            url = self.profile.contents_by_name_url
        content, ctype = self._fetch(endpoint, params, method=method, data=data, url=url)
        if fmt != "json" or endpoint == "getManifestForSimpleSearch":
            kind = describe_body(content, ctype)
            if kind is not None and "html" not in fmt:
                raise BadResponseError(f"{endpoint} answered with {kind} where {fmt} was expected")
            return content.decode("utf-8", "replace")
        if method == "POST" and content.strip() and not _looks_json(content, ctype):
            return parse_csv_rows(content, what=endpoint)
        return parse_json_rows(content, ctype, what=endpoint)

    # --- downloads ------------------------------------------------------------------------------------------

    def _download(self, endpoint: str, params: dict[str, str], out: IO[bytes], check: Check) -> int:
        return self._http.download(self._endpoint_url(endpoint), endpoint, params, out, check)

    def download_instance(self, series_instance_uid: str, sop_instance_uid: str, out: IO[bytes]) -> int:
        """getSingleImage into ``out`` (a seekable binary file); returns bytes written.

        Raises NotFoundError for an empty answer, AccessDeniedError for a refused one (NBIA's HTTP 500 for an
        unknown, restricted or other-host instance: not retried).
        """
        params = self._params(SeriesInstanceUID=series_instance_uid, SOPInstanceUID=sop_instance_uid)
        params.pop("format", None)

        def check(head: bytes, ctype: str) -> None:
            if not head:
                text = f"no instance {sop_instance_uid} in series {series_instance_uid}"
                raise NotFoundError(text, status=200)
            kind = describe_body(head, ctype)
            if kind is not None and kind != "DICOM data":
                raise BadResponseError(f"getSingleImage answered with {kind} where DICOM was expected")
            if ctype.startswith(("application/json", "text/")) and not head[128:132] == b"DICM":
                raise BadResponseError(f"getSingleImage answered with {ctype} where DICOM was expected")

        try:
            return self._download("getSingleImage", params, out, check)
        except ServerError as exc:
            if exc.status != 500:
                raise
            # NBIA's answer to an unknown, restricted or other-host instance (retrying does not help).
            raise AccessDeniedError(
                f"the server refused instance {sop_instance_uid} of series {series_instance_uid}: unknown, "
                f"restricted, or not on this server ({exc})",
                status=500,
            ) from None

    def _series_request(
        self, series_instance_uid: str, md5: bool, new_file_names: bool
    ) -> tuple[str, dict[str, str], Check]:
        endpoint = "getImageWithMD5Hash" if md5 else "getImage"
        params = self._params(SeriesInstanceUID=series_instance_uid)
        params.pop("format", None)
        if new_file_names and not md5:
            params["NewFileNames"] = "Yes"

        def check(head: bytes, ctype: str) -> None:
            if not head:
                raise NotFoundError(f"no series {series_instance_uid}", status=200)
            if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                kind = describe_body(head, ctype) or f"{ctype or 'something'} data"
                raise BadResponseError(f"{endpoint} answered with {kind} where a ZIP archive was expected")

        return endpoint, params, check

    def download_series(
        self, series_instance_uid: str, out: IO[bytes], *, md5: bool = False, new_file_names: bool = False
    ) -> int:
        """getImage (or getImageWithMD5Hash) ZIP into ``out`` (seekable binary file); returns bytes written.

        Raises NotFoundError for an empty answer, BadResponseError when the answer is not a ZIP.
        """
        endpoint, params, check = self._series_request(series_instance_uid, md5, new_file_names)
        return self._download(endpoint, params, out, check)

    @property
    def series_md5(self) -> bool:
        """Whether :meth:`stream_series` asks for the members' MD5s (an ``md5hashes.csv`` member, last)."""
        return self.dialect.series_md5 != "none"

    def stream_series(self, series_instance_uid: str, *, md5: bool = True) -> Iterator[bytes]:
        """The series ZIP's body in pieces as they arrive (the request goes out on the first ``next()``).

        ``md5``: ask for the members' MD5s where the version can (:attr:`Dialect.series_md5
        <nbiafs.api.dialects.Dialect.series_md5>`: v4 getImage ``IncludeMD5=Yes``, v1/v2
        getImageWithMD5Hash, which has no LICENSE member; v3 plain getImage): ``md5hashes.csv``
        (``Filename,MD5Hash``) then comes last. Not fetched again once started: a cut or stalled body raises
        UnavailableError or RequestTimeoutError midway. NotFoundError for an empty answer, BadResponseError
        when the answer is not a ZIP; other errors as :meth:`download_series`. Close the iterator to abandon
        the download.
        """
        how = self.dialect.series_md5 if md5 else "none"
        endpoint, params, check = self._series_request(series_instance_uid, how == "endpoint", False)
        if how == "include":
            params["IncludeMD5"] = "Yes"
        return self._http.stream(self._endpoint_url(endpoint), endpoint, params, check)

    def instance_md5(self, sop_instance_uid: str) -> str | None:
        """One instance's MD5 (32 lowercase hex digits): v4 getMD5HashForImage, v1/v2 getM5HashForImage.

        None when the server knows none (its empty answer for an unknown or refused instance) or the version
        has no such endpoint (v3: no request). BadResponseError when the answer is not an MD5.
        """
        spelling = self.dialect.instance_md5
        if spelling is None:
            return None
        endpoint, name = spelling
        params = self._params(**{name: sop_instance_uid})
        params.pop("format", None)
        content, ctype = self._fetch(endpoint, params)
        text = content.decode("ascii", "replace").strip().strip('"').lower()
        if not text:
            return None
        if not _MD5_RE.fullmatch(text):
            kind = describe_body(content, ctype) or f"{len(content)} bytes of {ctype or 'something'}"
            raise BadResponseError(f"{endpoint} answered with {kind} where an MD5 was expected")
        return text

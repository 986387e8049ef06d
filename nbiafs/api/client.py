"""``NbiaClient``: every NBIA endpoint as a method, one API over the v1/v2/v3/v4 flavours. Knows only HTTP.

One ``requests.Session`` with a bounded urllib3 pool (``pool_block=True``: at most ``pool_size`` connections,
extra threads wait) and urllib3 ``Retry`` (429/500/502/503/504 and connection errors, exponential back-off,
``Retry-After`` respected). Every request has a (connect, read) timeout. Bodies cut mid-way are fetched again
within the same retry budget. Every failure is raised as a :mod:`nbiafs.errors` type. Thread-safe.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any, TypeVar

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from nbiafs.api.auth import TokenManager
from nbiafs.api.credentials import Credentials
from nbiafs.api.profiles import ServerProfile
from nbiafs.api.records import Patient, Row, Series, SeriesMetadata, SeriesSize, Study
from nbiafs.api.rows import (
    describe_body,
    parse_all,
    parse_csv_rows,
    parse_json_rows,
    parse_patient,
    parse_series,
    parse_series_metadata,
    parse_series_size,
    parse_study,
    values,
)
from nbiafs.errors import (
    AccessDeniedError,
    BadRequestError,
    ConfigError,
    NbiaError,
    NetworkError,
    NotFoundError,
    RequestError,
    RequestTimeoutError,
    ResponseFormatError,
    ServerError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK = 256 * 1024  # bytes per read of a streamed body
RETRY_STATUSES = (429, 500, 502, 503, 504)
RETRY_AFTER_MAX = 60  # seconds; a Retry-After longer than this is cut short
USER_AGENT = "nbiafs"

# Every POST nbiafs sends (token grants, v4 getSeriesMetadata) is idempotent, so POSTs are retried like GETs.
_RETRY_METHODS = frozenset({"GET", "HEAD", "POST"})
_ACCESS_DENIED_WORDS = ("not been granted", "not authorized", "access denied", "forbidden")

# urllib3 >= 2.5 caps Retry-After itself; on older versions the cap is simply not applied.
_RETRY_EXTRA: dict[str, Any] = {}
if "retry_after_max" in inspect.signature(Retry.__init__).parameters:
    _RETRY_EXTRA["retry_after_max"] = RETRY_AFTER_MAX


def _is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (a requests or urllib3 error, possibly wrapping others) is a timeout."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
            return True
        if isinstance(err, urllib3.exceptions.MaxRetryError):
            stack.append(err.reason)
        stack.extend(arg for arg in err.args if isinstance(arg, BaseException))
        stack.append(err.__cause__)
        stack.append(err.__context__)
    return False


def _message(resp: requests.Response) -> str:
    """The server's own sentence from an error answer (plain text, or a JSON ``error``/``message``)."""
    text = resp.text.strip()
    if text.startswith("{"):
        try:
            data = resp.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("error_description", "message", "error"):
                if data.get(key):
                    return str(data[key])[:300]
    if describe_body(resp.content[:512], resp.headers.get("Content-Type", "")):
        return resp.reason or f"HTTP {resp.status_code}"
    return text[:300] or (resp.reason or f"HTTP {resp.status_code}")


def _looks_json(content: bytes, content_type: str) -> bool:
    return content_type.startswith("application/json") or content.lstrip()[:1] in (b"[", b"{")


def _date(since: dt.date, fmt: str) -> str:
    return since.strftime(fmt)


class _BodyCutError(Exception):
    """A body ended early, stalled, or did not match its Content-Length; worth fetching again."""


class NbiaClient:
    """A client for one NBIA server profile (see ``docs/architecture.md`` for the method list).

    ``credentials``: None uses the profile's guest account (v2) or anonymous access (v1/v4); v3 needs
    ``credentials.api_key``. ``timeout`` is seconds for connecting and for each read. ``retries`` bounds the
    retries of one request (status, connection and cut bodies; a read timeout is retried only once).
    ``backoff`` is urllib3's back-off factor in seconds. The client logs in lazily; :meth:`close` stops the
    token refresher and logs out.
    """

    def __init__(
        self,
        profile: ServerProfile,
        credentials: Credentials | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        pool_size: int = 16,
        backoff: float = 0.5,
    ) -> None:
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, not {timeout}")
        self.profile = profile
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self._timeouts = (self.timeout, self.timeout)
        self._closed = False
        self._close_lock = threading.Lock()
        retry = Retry(
            total=self.retries,
            connect=self.retries,
            # A read timeout is retried once only: a stalled server must fail within ~2 x timeout, not 6 x.
            read=min(self.retries, 1),
            status=self.retries,
            other=0,
            redirect=5,
            allowed_methods=_RETRY_METHODS,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff,
            backoff_max=30.0,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last 5xx/429 answer comes back and becomes a ServerError
            **_RETRY_EXTRA,
        )
        adapter = HTTPAdapter(
            pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=retry, pool_block=True
        )
        session = requests.Session()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        session.trust_env = True
        self._session = session

        self._headers: dict[str, str] = {}
        self._tokens: TokenManager | None = None
        if profile.auth == "oauth":
            assert profile.token_url is not None
            if credentials is not None and credentials.user:
                user, password = credentials.user, credentials.password
            elif profile.guest_user:
                user, password = profile.guest_user, ""
            else:
                raise ConfigError(f"profile {profile.name!r} needs a user name")
            self._tokens = TokenManager(
                session,
                profile.token_url,
                user,
                password,
                logout_url=profile.logout_url,
                timeout=self._timeouts,
            )
        elif profile.auth == "api_key":
            if credentials is None or not credentials.api_key:
                raise ConfigError(f"profile {profile.name!r} (the v3 API) needs an API key: set NBIA_API_KEY")
            self._headers["api_key"] = credentials.api_key
        elif credentials is not None and credentials.user:
            log.warning("profile %s is anonymous: credentials of %s not used", profile.name, credentials.user)

    def __repr__(self) -> str:
        return f"NbiaClient({self.profile.name!r}, {self.profile.api_url!r})"

    def __enter__(self) -> NbiaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def user(self) -> str | None:
        """The account in use (None when anonymous or API-key based)."""
        return self._tokens.user if self._tokens else None

    def login(self) -> None:
        """Obtain the first token now (OAuth profiles; a no-op for anonymous and API-key ones).

        Otherwise the first request logs in. Raises AuthenticationError for refused credentials,
        NetworkError / ServerError when the token endpoint cannot be reached.
        """
        if self._tokens is not None:
            self._tokens.token()

    def close(self) -> None:
        """Stop the token refresher, log out and close the connection pool. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._tokens is not None:
            self._tokens.close()
        self._session.close()

    # --- HTTP core ------------------------------------------------------------------------------------------

    def _endpoint_url(self, endpoint: str) -> str:
        return self.profile.endpoint_url(endpoint)

    def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        stream: bool = True,
    ) -> requests.Response:
        """One request (urllib3 retries included) with auth; a 401 is answered by one token refresh.

        Returns a 2xx response (streamed: the caller reads and closes it); raises the mapped NbiaError
        otherwise.
        """
        if self._closed:
            raise NetworkError(f"{what}: the client has been closed")
        token: str | None = None
        for attempt in (1, 2):
            headers = dict(self._headers)
            if self._tokens is not None:
                token = self._tokens.token() if token is None else token
                headers["Authorization"] = f"Bearer {token}"
            try:
                resp = self._session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=self._timeouts,
                    stream=stream,
                )
            except requests.RequestException as exc:
                raise self._transport_error(exc, what) from exc
            if resp.status_code == 401 and self._tokens is not None and token is not None and attempt == 1:
                self._discard(resp)
                token = self._tokens.refresh_after_401(token)
                continue
            if resp.status_code >= 400:
                try:
                    raise self._status_error(resp, what)
                finally:
                    resp.close()
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _discard(resp: requests.Response) -> None:
        """Read a (small) unwanted answer to its end so its connection goes back to the pool, then close."""
        with suppress(requests.RequestException):
            _ = resp.content
        resp.close()

    def _transport_error(self, exc: BaseException, what: str) -> NbiaError:
        if _is_timeout(exc):
            return RequestTimeoutError(f"{what}: no answer within {self.timeout:g} s")
        return NetworkError(f"{what}: {self._describe(exc)}")

    @staticmethod
    def _describe(exc: BaseException) -> str:
        reason: BaseException = exc
        while isinstance(reason.args[0] if reason.args else None, BaseException):
            reason = reason.args[0]
            if isinstance(reason, urllib3.exceptions.MaxRetryError) and reason.reason is not None:
                reason = reason.reason
        text = str(reason)
        return f"{type(reason).__name__}: {text}"[:300] if text else type(reason).__name__

    def _status_error(self, resp: requests.Response, what: str) -> NbiaError:
        status = resp.status_code
        url = resp.url
        message = _message(resp)
        if status in RETRY_STATUSES:
            text = f"{what}: HTTP {status} after {self.retries} retries: {message}"
            return ServerError(text, status=status)
        if status >= 500:
            return ServerError(f"{what}: HTTP {status}: {message}", status=status)
        if status in (401, 403) or any(word in message.lower() for word in _ACCESS_DENIED_WORDS):
            return AccessDeniedError(message, status=status, url=url)
        if status == 400:
            return BadRequestError(message, status=status, url=url)
        if status == 404:
            return NotFoundError(message, status=status, url=url)
        return RequestError(message, status=status, url=url)

    def _with_body_retries(self, what: str, fetch: Callable[[], T]) -> T:
        """``fetch()``, again (within the retry budget) while it raises _BodyCutError."""
        for attempt in range(self.retries + 1):
            try:
                return fetch()
            except _BodyCutError as exc:
                if attempt >= self.retries:
                    cause = exc.__cause__
                    if cause is not None and _is_timeout(cause):
                        raise RequestTimeoutError(f"{what}: body stalled for {self.timeout:g} s") from exc
                    raise NetworkError(f"{what}: {exc}") from exc
                log.info("%s: %s; fetching again (try %d of %d)", what, exc, attempt + 2, self.retries + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    @contextmanager
    def _reading(resp: requests.Response) -> Iterator[requests.Response]:
        """Close ``resp`` afterwards; turn a body cut/stall while reading into _BodyCutError."""
        try:
            yield resp
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        ) as exc:
            # Errors of the connection only: an OSError of ``out`` itself (disk full) is the caller's.
            raise _BodyCutError(f"body cut off ({type(exc).__name__})") from exc
        finally:
            resp.close()

    def _fetch(
        self,
        endpoint: str,
        params: dict[str, str] | None = None,
        *,
        method: str = "GET",
        data: dict[str, str] | None = None,
        url: str | None = None,
    ) -> tuple[bytes, str]:
        """The whole body of a (small) answer and its Content-Type, cut bodies fetched again."""
        url = url or self._endpoint_url(endpoint)

        def fetch() -> tuple[bytes, str]:
            resp = self._send(method, url, endpoint, params=params, data=data)
            with self._reading(resp):
                content = resp.content
                expected = resp.headers.get("Content-Length")
                plain = not resp.headers.get("Content-Encoding")
                if plain and expected and expected.isdigit() and int(expected) != len(content):
                    raise _BodyCutError(f"got {len(content)} of {expected} bytes")
                return content, resp.headers.get("Content-Type", "")

        return self._with_body_retries(endpoint, fetch)

    def _params(self, **named: str | None) -> dict[str, str]:
        params = {key: value for key, value in named.items() if value is not None}
        if self.profile.flavour == "v3":
            params["format"] = "json"
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
        v3 = self.profile.flavour == "v3"
        endpoint = "PatientsByModality" if v3 else "getPatientByCollectionAndModality"
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
        flavour = self.profile.flavour
        if flavour == "v4":
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
        endpoint = "ContentsByName" if self.profile.flavour == "v3" else "getContentsByName"
        return parse_all(self._rows(endpoint, self._params(name=name), url=url), parse_series)

    # --- changes since a date -------------------------------------------------------------------------------

    def _since(self, since: dt.date) -> str:
        # v3 documents YYYY-MM-DD; the v1/v2/v4 guides use 2010/08/16.
        return _date(since, "%Y-%m-%d" if self.profile.flavour == "v3" else "%Y/%m/%d")

    def new_patients(self, collection: str, since: dt.date) -> list[Patient]:
        """Patients added to ``collection`` since ``since`` (v4 takes ``fromDate`` instead of ``Date``)."""
        date_key = "fromDate" if self.profile.flavour == "v4" else "Date"
        params = self._params(Collection=collection, **{date_key: self._since(since)})
        return parse_all(self._rows("NewPatientsInCollection", params), parse_patient)

    def new_studies(self, collection: str, since: dt.date, patient_id: str | None = None) -> list[Study]:
        """Studies added to ``collection`` (optionally one patient) since ``since``.

        v1/v2/v4 require ``PatientID``: without one, the whole collection is asked first and, if the server
        insists, each patient of the collection in turn (one request per patient).
        """
        params = self._params(Collection=collection, Date=self._since(since), PatientID=patient_id)
        try:
            return parse_all(self._rows("NewStudiesInPatientCollection", params), parse_study)
        except BadRequestError:
            if patient_id is not None or self.profile.flavour == "v3":
                raise
        log.info("NewStudiesInPatientCollection needs a PatientID here: asking patient by patient")
        studies: list[Study] = []
        for patient in self.patients(collection):
            studies.extend(self.new_studies(collection, since, patient.patient_id))
        return studies

    def updated_series(self, since: dt.date) -> list[Series]:
        """Series updated since ``since`` (getUpdatedSeries ``fromDate``, MM/DD/YYYY as in the guide)."""
        params = self._params(fromDate=_date(since, "%m/%d/%Y"))
        return parse_all(self._rows("getUpdatedSeries", params), parse_series)

    def endpoint_metadata(self, endpoint: str) -> dict[str, Any]:
        """The v3 ``<endpoint>/metadata`` description. Raises ConfigError on other flavours."""
        if self.profile.flavour != "v3":
            raise ConfigError(f"endpoint metadata exists only on the v3 API, not on {self.profile.flavour}")
        name = f"{endpoint.strip('/')}/metadata"
        rows = self._rows(name, {})
        if len(rows) != 1:
            raise ResponseFormatError(f"{name}: expected one JSON object, got {len(rows)} rows")
        return rows[0]

    # --- raw queries ----------------------------------------------------------------------------------------

    def query(self, endpoint: str, params: dict[str, str], fmt: str = "json") -> list[dict[str, Any]] | str:
        """Any metadata endpoint, raw: JSON rows as sent (``fmt="json"``), or the server's own text otherwise.

        v3 gets ``format=<fmt>``; v4 getSeriesMetadata is sent as the POST it must be (``list`` form field).
        """
        params = dict(params)
        flavour = self.profile.flavour
        method, data = "GET", None
        if flavour == "v4" and endpoint.lower() == "getseriesmetadata":
            method, data, params = "POST", params, {}
            if "list" not in data and "SeriesInstanceUID" in data:
                data["list"] = data.pop("SeriesInstanceUID")
        if flavour == "v3" or fmt != "json":
            params.setdefault("format", fmt)
        url = None
        if endpoint in ("getContentsByName", "ContentsByName"):
            url = self.profile.contents_by_name_url
        content, ctype = self._fetch(endpoint, params, method=method, data=data, url=url)
        if fmt != "json":
            kind = describe_body(content, ctype)
            if kind is not None and "html" not in fmt:
                raise ResponseFormatError(f"{endpoint} answered with {kind} where {fmt} was expected")
            return content.decode("utf-8", "replace")
        if method == "POST" and not _looks_json(content, ctype):
            return parse_csv_rows(content, what=endpoint)
        return parse_json_rows(content, ctype, what=endpoint)

    # --- downloads ------------------------------------------------------------------------------------------

    def _download(
        self, endpoint: str, params: dict[str, str], out: IO[bytes], check: Callable[[bytes, str], None]
    ) -> int:
        """Stream an answer into ``out`` from its current position; a cut body rewinds ``out``, tries again.

        ``check(first_chunk, content_type)`` raises for an answer of the wrong kind. Returns bytes written.
        An unseekable ``out`` (a pipe) cannot be rewound: a cut body then raises NetworkError at once.
        """
        seekable = out.seekable()
        start = out.tell() if seekable else 0
        url = self._endpoint_url(endpoint)
        tries = [0]

        def fetch() -> int:
            tries[0] += 1
            if seekable:
                out.seek(start)
                out.truncate()
            elif tries[0] > 1:
                raise NetworkError(f"{endpoint}: body cut off and the output cannot be rewound")
            resp = self._send("GET", url, endpoint, params=params, stream=True)
            written = 0
            with self._reading(resp):
                ctype = resp.headers.get("Content-Type", "")
                expected = resp.headers.get("Content-Length")
                first = True
                for chunk in resp.iter_content(CHUNK):
                    if first:
                        check(chunk, ctype)
                        first = False
                    out.write(chunk)
                    written += len(chunk)
                if first:
                    check(b"", ctype)
                plain = not resp.headers.get("Content-Encoding")
                if plain and expected and expected.isdigit() and int(expected) != written:
                    raise _BodyCutError(f"got {written} of {expected} bytes")
            return written

        written = self._with_body_retries(endpoint, fetch)
        out.flush()
        log.debug("%s: %d bytes", endpoint, written)
        return written

    def download_instance(self, series_instance_uid: str, sop_instance_uid: str, out: IO[bytes]) -> int:
        """getSingleImage into ``out`` (a seekable binary file); returns bytes written.

        Raises NotFoundError for an empty answer (unknown instance), AccessDeniedError for a restricted one.
        """
        params = self._params(SeriesInstanceUID=series_instance_uid, SOPInstanceUID=sop_instance_uid)
        params.pop("format", None)

        def check(head: bytes, ctype: str) -> None:
            if not head:
                text = f"no instance {sop_instance_uid} in series {series_instance_uid}"
                raise NotFoundError(text, status=200)
            kind = describe_body(head, ctype)
            if kind is not None and kind != "DICOM data":
                raise ResponseFormatError(f"getSingleImage answered with {kind} where DICOM was expected")
            if ctype.startswith(("application/json", "text/")) and not head[128:132] == b"DICM":
                raise ResponseFormatError(f"getSingleImage answered with {ctype} where DICOM was expected")

        return self._download("getSingleImage", params, out, check)

    def download_series(
        self, series_instance_uid: str, out: IO[bytes], *, md5: bool = False, new_file_names: bool = False
    ) -> int:
        """getImage (or getImageWithMD5Hash) ZIP into ``out`` (seekable binary file); returns bytes written.

        Raises NotFoundError for an empty answer, ResponseFormatError when the answer is not a ZIP.
        """
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
                raise ResponseFormatError(f"{endpoint} answered with {kind} where a ZIP archive was expected")

        return self._download(endpoint, params, out, check)

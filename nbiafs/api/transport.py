"""``Transport``: HTTP for one NBIA server: a pooled session, retries, deadlines, auth headers, errors by meaning.

One ``requests.Session`` with a bounded urllib3 pool (``pool_block=True``: at most ``max_connections`` connections,
extra threads wait) and urllib3 ``Retry`` (429/500/502/503/504 and connection errors, exponential back-off,
``Retry-After`` respected). Bodies cut mid-way are fetched again within the same retry budget. Every failure is
raised as a :mod:`nbiafs.errors` type. Thread-safe.

Deadlines (:class:`~nbiafs.settings.ClientSettings`): a connection within ``connect_timeout`` (retried
``connect_retries`` times), each read within ``timeout``, and the whole body at no less than ``min_rate``
bytes per second on average over every ``timeout`` seconds (curl's low-speed limit), so a server that trickles
a body (one byte every few seconds, which no read timeout catches) fails within about ``timeout`` seconds.
Bodies are read with ``read1`` (whatever one ``recv`` brings) so that the check runs between reads.
Metadata answers larger than ``max_answer_bytes`` are refused.

It knows nothing of endpoints: :mod:`nbiafs.api.client` names them, :mod:`nbiafs.api.dialects` says how each
API version spells them.
"""

from __future__ import annotations

import http.client
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any, TypeVar

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from nbiafs.api.auth import TokenManager
from nbiafs.api.rows import describe_body
from nbiafs.errors import (
    AccessDeniedError,
    BadRequestError,
    BadResponseError,
    NbiaError,
    NotFoundError,
    RequestTimeoutError,
    ServerError,
    UnavailableError,
)
from nbiafs.settings import ClientSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK = 256 * 1024  # bytes per read of a streamed body
RETRY_STATUSES = (429, 500, 502, 503, 504)
RETRY_AFTER_MAX = 60  # seconds; a Retry-After longer than this is cut short
BACKOFF_MAX = 30.0  # seconds between two tries at most
USER_AGENT = "nbiafs"

# Every POST nbiafs sends (token grants, v4 getSeriesMetadata) is idempotent, so POSTs are retried like GETs.
_RETRY_METHODS = frozenset({"GET", "HEAD", "POST"})
_ACCESS_DENIED_WORDS = (
    "not been granted",  # v2/v4 getImage: "The user has not been granted the access to image ..."
    "not in public domain",  # v1 getImage: "Image with given SeriesInstanceUID,<uid>, is not in public domain."
    "not authorized",
    "access denied",
    "forbidden",
)

# urllib3 >= 2.5 caps Retry-After itself; on older versions the cap is simply not applied.
_RETRY_EXTRA: dict[str, Any] = {}
if "retry_after_max" in inspect.signature(Retry.__init__).parameters:
    _RETRY_EXTRA["retry_after_max"] = RETRY_AFTER_MAX

FinalAnswer = Callable[[str, int], bool]
"""``final(path, status)``: whether an answer with ``status`` to the request ``path`` (with its query) is final,
that is, retrying it cannot help although the status is one that is usually retried (a refused image's 500)."""

Check = Callable[[bytes, str], None]
"""``check(first_chunk, content_type)`` raises when a streamed answer is of the wrong kind."""


def is_timeout(exc: BaseException) -> bool:
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


class _Retry(Retry):
    """urllib3's Retry, except that it gives up at once on an answer its ``final`` predicate calls final.

    Hand-written because urllib3 decides on the status alone and NBIA's 500 means "refused" for images.
    """

    final: FinalAnswer | None = None

    def new(self, **kw: Any) -> _Retry:
        retry = super().new(**kw)
        retry.final = self.final
        return retry

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> _Retry:
        if response is not None and url and self.final is not None and self.final(url, response.status):
            raise urllib3.exceptions.MaxRetryError(
                _pool, url, urllib3.exceptions.ResponseError("final answer")
            )
        return super().increment(method, url, response, error, _pool, _stacktrace)


_CONNECTION_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)
"""What reading a body raises when the connection fails (not an OSError of the output file)."""


class _BodyCutError(Exception):
    """A body ended early, stalled, or did not match its Content-Length; worth fetching again."""


class _SpeedGuard:
    """The low-speed limit: raises RequestTimeoutError when fewer than ``min_rate`` bytes per second arrived
    on average over a window of ``window`` seconds. Monotonic time."""

    def __init__(self, what: str, window: float, min_rate: int) -> None:
        self._what = what
        self._window = window
        self._min_rate = min_rate
        self._start = time.monotonic()
        self._bytes = 0

    def add(self, count: int) -> None:
        self._bytes += count
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed < self._window:
            return
        if self._bytes < self._min_rate * elapsed:
            raise RequestTimeoutError(
                f"{self._what}: the body came at {self._bytes / elapsed:.0f} B/s for {elapsed:.0f} s "
                f"(the limit is {self._min_rate} B/s): abandoned",
                reached=True,
            )
        self._start, self._bytes = now, 0


class Transport:
    """HTTP to one server with ``settings`` (timeouts, retries, pool size, back-off).

    ``headers`` are sent with every request (the v3 ``api_key``); ``tokens``, when set, adds a bearer token
    to every request and is asked for a new one once when an answer is 401. ``final`` names answers that are
    not retried although their status usually is.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        headers: dict[str, str] | None = None,
        final: FinalAnswer | None = None,
    ) -> None:
        self.settings = settings
        self.timeout = settings.timeout
        self.retries = settings.retries
        self.timeouts = (min(settings.connect_timeout, settings.timeout), settings.timeout)
        self.tokens: TokenManager | None = None
        self._headers = dict(headers or {})
        self._closed = False
        self._close_lock = threading.Lock()
        retry = _Retry(
            total=self.retries + settings.connect_retries,
            connect=settings.connect_retries,
            # A read timeout is retried once only: a stalled server must fail within ~2 x timeout, not 6 x.
            read=min(self.retries, 1),
            status=self.retries,
            other=0,
            redirect=5,
            allowed_methods=_RETRY_METHODS,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=settings.backoff,
            backoff_max=BACKOFF_MAX,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last 5xx/429 answer comes back and becomes a ServerError
            **_RETRY_EXTRA,
        )
        retry.final = final
        adapter = HTTPAdapter(
            pool_connections=4, pool_maxsize=settings.max_connections, max_retries=retry, pool_block=True
        )
        session = requests.Session()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        session.trust_env = True
        self.session = session

    def close(self) -> None:
        """Stop the token refresher (logging out) and close the pool. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self.tokens is not None:
            self.tokens.close()
        self.session.close()

    # --- one request ------------------------------------------------------------------------------------------

    def send(
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
        otherwise. ``what`` names the request in error messages.
        """
        if self._closed:
            raise UnavailableError(f"{what}: the client has been closed")
        token: str | None = None
        for attempt in (1, 2):
            headers = dict(self._headers)
            if self.tokens is not None:
                token = self.tokens.token() if token is None else token
                headers["Authorization"] = f"Bearer {token}"
            try:
                resp = self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=self.timeouts,
                    stream=stream,
                )
            except requests.RequestException as exc:
                raise self._transport_error(exc, what) from exc
            if resp.status_code == 401 and self.tokens is not None and token is not None and attempt == 1:
                self._discard(resp)
                token = self.tokens.refresh_after_401(token)
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
        if is_timeout(exc):
            return RequestTimeoutError(f"{what}: no answer within {self.timeout:g} s")
        return UnavailableError(f"{what}: {self._describe(exc)}")

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
        if status == 404:
            return NotFoundError(message, status=status, url=url)
        return BadRequestError(message, status=status, url=url)

    # --- whole answers ----------------------------------------------------------------------------------------

    def _with_body_retries(self, what: str, fetch: Callable[[], T]) -> T:
        """``fetch()``, again (within the retry budget) while its body is cut short.

        A body that stalls (no byte for ``timeout`` seconds) is not fetched again: a server that stalls once
        mostly stalls again, and the deadline the docs promise is about ``timeout``, not ``retries`` times it.
        Both errors say the server was reached (``reached=True``): it answered, its body broke off.
        """
        for attempt in range(self.retries + 1):
            try:
                return fetch()
            except _BodyCutError as exc:
                cause = exc.__cause__
                if cause is not None and is_timeout(cause):
                    raise RequestTimeoutError(
                        f"{what}: the body stalled for {self.timeout:g} s", reached=True
                    ) from exc
                if attempt >= self.retries:
                    raise UnavailableError(f"{what}: {exc}", reached=True) from exc
                log.info("%s: %s; fetching again (try %d of %d)", what, exc, attempt + 2, self.retries + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    @contextmanager
    def _reading(resp: requests.Response) -> Iterator[requests.Response]:
        """Close ``resp`` afterwards; turn a body cut/stall while reading into _BodyCutError."""
        try:
            yield resp
        except _CONNECTION_ERRORS as exc:
            # Errors of the connection only: an OSError of ``out`` itself (disk full) is the caller's.
            raise _BodyCutError(f"body cut off ({type(exc).__name__})") from exc
        finally:
            resp.close()

    def _body(self, resp: requests.Response, what: str) -> Iterator[bytes]:
        """The body of ``resp`` in pieces as they arrive (decoded), under the low-speed limit."""
        guard = _SpeedGuard(what, self.timeout, self.settings.min_rate)
        raw = resp.raw
        while True:
            data = raw.read1(CHUNK, decode_content=True)
            if not data:
                return
            guard.add(len(data))
            yield data

    def fetch(
        self,
        url: str,
        what: str,
        params: dict[str, str] | None = None,
        *,
        method: str = "GET",
        data: dict[str, str] | None = None,
    ) -> tuple[bytes, str]:
        """The whole body of a (small) answer and its Content-Type, cut bodies fetched again."""

        def fetch() -> tuple[bytes, str]:
            resp = self.send(method, url, what, params=params, data=data)
            with self._reading(resp):
                limit = self.settings.max_answer_bytes
                parts: list[bytes] = []
                size = 0
                for part in self._body(resp, what):
                    size += len(part)
                    if size > limit:
                        raise BadResponseError(
                            f"{what}: the answer is larger than {limit} bytes (max_answer_bytes); "
                            "ask for less (a filter), or raise the limit"
                        )
                    parts.append(part)
                content = b"".join(parts)
                expected = resp.headers.get("Content-Length")
                plain = not resp.headers.get("Content-Encoding")
                if plain and expected and expected.isdigit() and int(expected) != len(content):
                    raise _BodyCutError(f"got {len(content)} of {expected} bytes")
                return content, resp.headers.get("Content-Type", "")

        return self._with_body_retries(what, fetch)

    def stream(self, url: str, what: str, params: dict[str, str], check: Check) -> Iterator[bytes]:
        """The body of an answer in pieces as they arrive, under the low-speed limit; the request is sent on
        the first ``next()``. Not fetched again once started: a body cut or stalled midway raises
        UnavailableError or RequestTimeoutError. ``check`` raises for an answer of the wrong kind. Closing the
        iterator early closes the connection."""
        resp = self.send("GET", url, what, params=params, stream=True)
        try:
            ctype = resp.headers.get("Content-Type", "")
            first = True
            for chunk in self._body(resp, what):
                if first:
                    check(chunk, ctype)
                    first = False
                yield chunk
            if first:
                check(b"", ctype)
        except _CONNECTION_ERRORS as exc:
            if is_timeout(exc):
                raise RequestTimeoutError(
                    f"{what}: the body stalled for {self.timeout:g} s", reached=True
                ) from exc
            raise UnavailableError(f"{what}: body cut off ({type(exc).__name__})", reached=True) from exc
        finally:
            resp.close()

    def download(self, url: str, what: str, params: dict[str, str], out: IO[bytes], check: Check) -> int:
        """Stream an answer into ``out`` from its current position; a cut body rewinds ``out``, tries again.

        ``check`` raises for an answer of the wrong kind. Returns bytes written. An unseekable ``out`` (a pipe)
        cannot be rewound: a cut body then raises UnavailableError at once.
        """
        seekable = out.seekable()
        start = out.tell() if seekable else 0
        tries = [0]

        def fetch() -> int:
            tries[0] += 1
            if seekable:
                out.seek(start)
                out.truncate()
            elif tries[0] > 1:
                raise UnavailableError(f"{what}: body cut off and the output cannot be rewound")
            resp = self.send("GET", url, what, params=params, stream=True)
            written = 0
            with self._reading(resp):
                ctype = resp.headers.get("Content-Type", "")
                expected = resp.headers.get("Content-Length")
                first = True
                for chunk in self._body(resp, what):
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

        written = self._with_body_retries(what, fetch)
        out.flush()
        log.debug("%s: %d bytes", what, written)
        return written

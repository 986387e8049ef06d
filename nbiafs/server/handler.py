"""The HTTP layer: routing, authentication, parameter checks, fault knobs, images and streamed ZIPs.

URL layout (see docs/architecture.md): ``/nbia-api/services/v1|v2|v4/<Endpoint>``, ``/nbia-api/oauth/token``,
``/nbia-api/logout``, ``/services/v3/TCIA/query/<Endpoint>[/metadata]``,
``/services/v3/SharedList/query/ContentsByName``.

Status codes, as on the live server where known:

- 400 plain text labelled ``application/json``: a missing required parameter, an unknown parameter (v4 only),
  a malformed date; and ``The user has not been granted the access ...`` for an image of a series the user may
  not see (or that does not exist).
- 401 JSON ``{"error": "invalid_token", ...}``: v2 without a valid bearer token; the token endpoint's refusals
  (``invalid_grant``, ``invalid_client``); v3 without a valid api_key (``{"error": "invalid_api_key", ...}``,
  our choice: the v3 gateway's real answer is not documented).
- 404 plain text: an unknown path or endpoint, or a SOPInstanceUID that is not in the series.
- 405: wrong method (the token endpoint and v4 getSeriesMetadata are POST).
- 500 plain text: an unknown ``format``.
- 503 / 429 (``Retry-After: 1``): injected at ``error_rate_503`` / ``error_rate_429`` on API endpoints.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import random
import socket
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from nbiafs.errors import BadRequestError
from nbiafs.server.archive import Archive, SeriesInfo
from nbiafs.server.auth import OAuthError, TokenStore, api_key_ok
from nbiafs.server.config import RequestRecord, ServerConfig
from nbiafs.server.endpoints import SHARED_LIST, TABLES, Endpoint, endpoint_metadata
from nbiafs.server.formats import UnknownFormatError, render
from nbiafs.server.queries import View, query
from nbiafs.server.transport import BodyWriter, ChunkedWriter, ConnectionAbortError

log = logging.getLogger(__name__)

NOT_GRANTED = "The user has not been granted the access to the image, please contact the administrator."
TEXT_AS_JSON = "application/json"  # the live server labels its plain-text 400 answers so


@dataclass
class ServerState:
    """Everything the handlers of one server share. ``config`` is read live on every request."""

    archive: Archive
    config: ServerConfig
    tokens: TokenStore
    stop: threading.Event = field(default_factory=threading.Event)
    rng: random.Random = field(default_factory=random.Random)
    lock: threading.Lock = field(default_factory=threading.Lock)
    records: list[RequestRecord] = field(default_factory=list)
    connections: set[socket.socket] = field(default_factory=set)

    def roll(self, rate: float) -> bool:
        """True with probability ``rate`` (seeded, so a run of requests is reproducible)."""
        if rate <= 0:
            return False
        with self.lock:
            return self.rng.random() < rate

    def record(self, rec: RequestRecord) -> None:
        with self.lock:
            self.records.append(rec)
        path = self.config.request_log
        if path:
            stamp = dt.datetime.fromtimestamp(rec.time, dt.timezone.utc).isoformat(timespec="milliseconds")
            line = f"{stamp}\t{rec.method}\t{rec.endpoint}\t{rec.status}\t{rec.bytes}\t{rec.user or '-'}\n"
            try:
                with self.lock, Path(path).open("a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as exc:
                log.warning("cannot write request log %s: %s", path, exc)


class HTTPServer(ThreadingHTTPServer):
    """A threading server (one daemon thread per connection) that knows its ``ServerState``."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen() backlog: the default 5 stalls bursts of new connections for ~1 s

    def __init__(self, address: tuple[str, int], state: ServerState) -> None:
        self.state = state
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error while serving %s", client_address, exc_info=True)


class _ReplyError(Exception):
    """Answer now with this status and body (raised from deep inside a handler)."""

    def __init__(
        self,
        status: int,
        body: bytes | str,
        content_type: str = "text/plain; charset=UTF-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = headers or {}


def _json_error(status: int, error: str, description: str) -> _ReplyError:
    body = json.dumps({"error": error, "error_description": description})
    return _ReplyError(status, body, "application/json")


class RequestHandler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive (every answer has a Content-Length or is chunked)."""

    protocol_version = "HTTP/1.1"
    server_version = "nbiafs-archive/0.1"
    timeout = 300  # seconds an idle keep-alive connection is kept
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    server: HTTPServer

    # -- plumbing ------------------------------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        return self.server.state

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            with self.state.lock:
                self.state.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        self._arrived = time.time()
        self._method = method
        self._status = 0
        self._sent = 0
        self._user = ""
        self._endpoint = ""
        self._recorded = False
        url = urlsplit(self.path)
        query = urlencode([(k, v) for k, v in parse_qsl(url.query, keep_blank_values=True) if k != "api_key"])
        self._logged_path = url.path + (f"?{query}" if query else "")
        try:
            form = self._read_form()
            if not self._pause(self.state.config.latency + self.state.config.stall):
                raise ConnectionAbortError("server stopping")
            try:
                self._route(method, url.path, dict(parse_qsl(url.query, keep_blank_values=True)), form)
            except _ReplyError as reply:
                self._send(reply.status, reply.body, reply.content_type, reply.headers)
        except ConnectionAbortError as exc:
            log.debug("closing connection: %s", exc)
            self._drop()
        except OSError as exc:  # the client went away
            log.debug("connection lost: %s", exc)
            self.close_connection = True
        except Exception:  # a bug: answer 500 if nothing was sent yet, and keep serving
            log.exception("error while answering %s %s", method, url.path)
            if self._status == 0:
                with contextlib.suppress(OSError):
                    self._send(500, b"Internal Server Error", "text/plain; charset=UTF-8")
            else:  # part of an answer went out already: the connection is unusable
                self._drop()
        finally:
            if not self._recorded:
                self._record(self._sent)

    def _record(self, sent: int) -> None:
        """Record this request. Called just before its last bytes go out, so a client that has its answer
        always finds the request in ``srv.requests`` (and in the request log)."""
        self._recorded = True
        self.state.record(
            RequestRecord(
                self._method, self._endpoint, self._logged_path, self._status, sent, self._user, self._arrived
            )
        )

    def _read_form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return {}
        data = self.rfile.read(length)
        return dict(parse_qsl(data.decode("utf-8", "replace"), keep_blank_values=True))

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; False if the server is stopping."""
        if seconds > 0:
            return not self.state.stop.wait(seconds)
        return not self.state.stop.is_set()

    def _drop(self) -> None:
        """Close the connection now, without finishing the answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _body_writer(self, cut_after: int | None = None) -> BodyWriter:
        out: Any = self.wfile  # a socket writer: write() only
        return BodyWriter(out, self.state.stop, self.state.config.bandwidth, cut_after)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        cut_after: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self._status = status
        if not body:
            self._record(0)
        self.end_headers()
        writer = self._body_writer(cut_after)
        try:
            writer.write(body[:-1])
            if cut_after is None and body:
                self._record(len(body))
            writer.write(body[-1:])
        finally:
            self._sent = writer.sent

    # -- routing -------------------------------------------------------------------------------------------

    def _route(self, method: str, path: str, params: dict[str, str], form: dict[str, str]) -> None:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["nbia-api", "oauth"] and parts[2:] == ["token"]:
            self._endpoint = "oauth/token"
            self._token(method, form)
        elif parts == ["nbia-api", "logout"]:
            self._endpoint = "logout"
            self._logout()
        elif len(parts) == 4 and parts[:2] == ["nbia-api", "services"] and parts[2] in ("v1", "v2", "v4"):
            self._api(method, parts[2], TABLES[parts[2]].get(parts[3]), parts[3], False, params, form)
        elif len(parts) in (5, 6) and parts[:4] == ["services", "v3", "TCIA", "query"]:
            meta = len(parts) == 6 and parts[5] == "metadata"
            if len(parts) == 6 and not meta:
                raise _ReplyError(404, f"Not found: {path}")
            self._api(method, "v3", TABLES["v3"].get(parts[4]), parts[4], meta, params, form)
        elif len(parts) in (5, 6) and parts[:4] == ["services", "v3", "SharedList", "query"]:
            meta = len(parts) == 6 and parts[5] == "metadata"
            ep = SHARED_LIST if parts[4] == SHARED_LIST.url_name and (len(parts) == 5 or meta) else None
            self._api(method, "v3", ep, parts[4], meta, params, form)
        else:
            raise _ReplyError(404, f"Not found: {path}")

    # -- OAuth -----------------------------------------------------------------------------------------------

    def _bearer(self) -> str | None:
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _token(self, method: str, form: dict[str, str]) -> None:
        if method != "POST":
            raise _ReplyError(405, "Method Not Allowed", headers={"Allow": "POST"})
        try:
            user, answer = self.state.tokens.grant(form)
        except OAuthError as exc:
            self._user = form.get("username", "")
            status = 400 if exc.code == "unsupported_grant_type" else 401
            raise _json_error(status, exc.code, exc.description) from None
        self._user = user
        raise _ReplyError(200, json.dumps(answer), "application/json", {"Cache-Control": "no-store"})

    def _logout(self) -> None:
        token = self._bearer()
        if token is None:
            raise _json_error(401, "invalid_token", "Full authentication is required to access this resource")
        self._user = self.state.tokens.user_for(token) or ""
        self.state.tokens.logout(token)
        raise _ReplyError(200, b"", "text/plain")

    # -- the API ---------------------------------------------------------------------------------------------

    def _api(
        self,
        method: str,
        flavour: str,
        ep: Endpoint | None,
        name: str,
        meta: bool,
        params: dict[str, str],
        form: dict[str, str],
    ) -> None:
        self._endpoint = name
        if ep is None:
            raise _ReplyError(404, f"Unknown endpoint: {name}")
        cfg = self.state.config
        if self.state.roll(cfg.error_rate_503):
            raise _ReplyError(503, "Service Unavailable")
        if self.state.roll(cfg.error_rate_429):
            raise _ReplyError(429, "Too Many Requests", headers={"Retry-After": "1"})
        user: str | None = None
        if flavour == "v2":
            token = self._bearer()
            user = self.state.tokens.user_for(token) if token else None
            if user is None:
                raise _json_error(401, "invalid_token", "Invalid, expired or missing access token")
            self._user = user
        elif flavour == "v3":
            key = self.headers.get("api_key") or params.get("api_key")
            if not api_key_ok(cfg, key):
                raise _json_error(
                    401, "invalid_api_key", "A valid api_key header or query parameter is required"
                )
        if meta:
            raise _ReplyError(200, json.dumps(endpoint_metadata(ep)), "application/json")
        if method != ep.method:
            raise _ReplyError(405, "Method Not Allowed", headers={"Allow": ep.method})
        args = {**params, **form}
        args.pop("api_key", None)
        fmt = args.pop("format", None) if ep.accepts_format else None
        if flavour == "v4":
            unknown = sorted(k for k in args if k not in ep.params)
            if unknown:
                raise _ReplyError(400, f"Unknown query parameter(s): {', '.join(unknown)}", TEXT_AS_JSON)
        args = {ep.renames.get(k, k): v for k, v in args.items() if k in ep.params and v != ""}
        for required in ep.required:
            if ep.renames.get(required, required) not in args:
                raise _ReplyError(400, f"A parameter, {required}, is required.", TEXT_AS_JSON)
        view = View(self.state.archive, cfg, user)
        if ep.kind == "rows":
            self._rows(view, ep, flavour, args, fmt or ep.default_format)
        elif ep.kind == "image":
            self._single_image(view, args)
        else:
            self._zip(view, args, md5=ep.kind == "zip-md5")

    def _rows(self, view: View, ep: Endpoint, flavour: str, args: dict[str, str], fmt: str) -> None:
        try:
            rows = query(view, ep.name, args, flavour)
            body, content_type = render(rows, fmt, ep.url_name)
        except UnknownFormatError:
            raise _ReplyError(500, f"Unsupported format: {fmt}") from None
        except BadRequestError as exc:
            raise _ReplyError(400, exc.message, TEXT_AS_JSON) from None
        raise _ReplyError(200, body, content_type)

    def _visible_series(self, view: View, series_uid: str) -> SeriesInfo:
        series = view.one_series(series_uid)
        if series is None:
            raise _ReplyError(400, NOT_GRANTED, TEXT_AS_JSON)
        return series

    def _single_image(self, view: View, args: dict[str, str]) -> None:
        series = self._visible_series(view, args["SeriesInstanceUID"])
        sop_uid = args["SOPInstanceUID"]
        if not any(i.sop_instance_uid == sop_uid for i in series.instances):
            raise _ReplyError(404, f"No image {sop_uid} in series {series.series_instance_uid}")
        data = view.archive.instance_bytes(sop_uid)
        cut = len(data) // 2 if self.state.roll(self.state.config.cut_rate) else None
        headers = {"Content-Disposition": f"attachment; filename={sop_uid}.dcm"}
        self._send(200, data, "application/dicom", headers, cut_after=cut)

    def _zip(self, view: View, args: dict[str, str], md5: bool) -> None:
        """Stream the series as a ZIP (chunked, no Content-Length), one instance in memory at a time."""
        series = self._visible_series(view, args["SeriesInstanceUID"])
        new_names = args.get("NewFileNames", "").lower() == "yes" and not md5
        # ZIP members are compressed, so the body's length is unknown: cut after half the members instead.
        cut_member = max(1, series.image_count // 2) if self.state.roll(self.state.config.cut_rate) else None
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Disposition", f"attachment; filename={series.series_instance_uid}.zip")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._status = 200
        body = self._body_writer()
        out = ChunkedWriter(body)
        stamp = series.timestamp or dt.datetime(2000, 1, 1)
        date_time = (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)

        def member(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=1)

        try:
            with zipfile.ZipFile(out, "w") as zf:
                if not md5:
                    member("LICENSE", self._license(view, series))
                hashes = []
                for index, inst in enumerate(series.instances, 1):
                    if new_names:
                        name = f"{inst.acquisition_number or 1}-{inst.instance_number:03d}.dcm"
                    else:
                        name = f"{index:08d}.dcm"
                    data = view.archive.instance_bytes(inst.sop_instance_uid)
                    member(name, data)
                    if index == cut_member:
                        out.cut()
                    if md5:
                        hashes.append(f"{name},{hashlib.md5(data).hexdigest()}\n")
                if md5:
                    member("md5hashes.csv", ("Filename,MD5Hash\n" + "".join(hashes)).encode())
            out.flush_all()
            self._record(body.sent + len(ChunkedWriter.LAST_CHUNK))
            out.close()
        finally:
            self._sent = body.sent

    @staticmethod
    def _license(view: View, series: SeriesInfo) -> bytes:
        coll = view.archive.collections[series.collection]
        return (
            f"The data in this download are from the collection {coll.name}.\n"
            f"They are licensed under the {coll.license_name}\n{coll.license_uri}\n"
            "By downloading these data you agree to the TCIA Data Usage Policy.\n"
        ).encode()

"""The HTTP layer: parsing, routing, checks in the live servers' order, fault knobs, and writing answers.

Every answer carries ``Server: nginx`` and a status line without a reason phrase. HEAD is GET without the
body; OPTIONS answers 200 with ``Allow``; an unknown path is Tomcat's 404 page, a wrong method its 405.
An API request goes through, in order: injected faults (503/429), the Spring-era filter, v4's check of
parameter names, then (images and the advanced API) the caller before the required parameters, or (lists)
the required parameters before the caller, and finally the endpoint itself (see the facts file, §1-§3).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import logging
import random
import socket
import threading
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from nbiafs.server import advanced, downloads, oauth, queries
from nbiafs.server.archive import Archive
from nbiafs.server.auth import TokenStore, api_key_ok
from nbiafs.server.config import RequestRecord, ServerConfig
from nbiafs.server.downloads import ZipPlan
from nbiafs.server.endpoints import Endpoint
from nbiafs.server.guard import SPRING_GUARDED, Caller, identify
from nbiafs.server.replies import JSON, TEXT, XML, Reply, bad_request, text, tomcat_error
from nbiafs.server.routes import Route, resolve
from nbiafs.server.transport import BodyWriter, ChunkedWriter, ConnectionAbortError
from nbiafs.server.v3meta import endpoint_metadata
from nbiafs.server.view import View

log = logging.getLogger(__name__)

Params = dict[str, list[str]]
SECRET_PARAMS = ("api_key", "access_token")  # never recorded
# What an untyped JAX-RS answer (v4's parameter-name 400) is labelled with, per kind of endpoint.
_PRODUCES = {"rows": XML, "zip": "application/octet-stream", "image": "application/dicom", "md5": TEXT}


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
    md5_cache: dict[str, str] = field(default_factory=dict)  # getMD5Hierarchy's collection hashes

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


def _multi(pairs: list[tuple[str, str]]) -> Params:
    params: Params = {}
    for key, value in pairs:
        params.setdefault(key, []).append(value)
    return params


def _first(params: Mapping[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in params.items() if v}


def _allow(route: Route, era: str) -> str:
    if route.kind == "token":
        return "POST,OPTIONS" if era == "keycloak" else "HEAD,GET,POST,OPTIONS"
    if route.kind == "logout":
        return "POST,OPTIONS" if era == "keycloak" else "HEAD,GET,OPTIONS"
    assert route.endpoint is not None
    return "POST,OPTIONS" if route.endpoint.method == "POST" else "HEAD,GET,OPTIONS"


class RequestHandler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive (every answer has a Content-Length or is chunked)."""

    protocol_version = "HTTP/1.1"
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

    def version_string(self) -> str:
        return "nginx"

    def send_response(self, code: int, message: str | None = None) -> None:
        """The status line without a reason phrase (``HTTP/1.1 200 ``), then Server and Date."""
        self.log_request(code)
        self._headers_buffer = [f"{self.protocol_version} {code} \r\n".encode("latin-1")]
        self.send_header("Server", self.version_string())
        self.send_header("Date", email.utils.formatdate(usegmt=True))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        self._arrived = time.time()
        self._method = method
        self._status = 0
        self._sent = 0
        self._user = ""
        self._endpoint = ""
        self._recorded = False
        url = urlsplit(self.path)
        pairs = parse_qsl(url.query, keep_blank_values=True)
        query = urlencode([(k, v) for k, v in pairs if k not in SECRET_PARAMS])
        self._logged_path = url.path + (f"?{query}" if query else "")
        try:
            form = self._read_form()
            if not self._pause(self.state.config.latency + self.state.config.stall):
                raise ConnectionAbortError("server stopping")
            result = self._dispatch(method, url.path, _multi(pairs), form)
            if isinstance(result, ZipPlan):
                self._stream_zip(result)
            else:
                cut = None
                if self._endpoint == "getSingleImage" and result.status == 200:
                    cut = len(result.body) // 2 if self.state.roll(self.state.config.cut_rate) else None
                self._send(result, cut)
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
                    self._send(text(500, "Internal Server Error"))
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

    def _read_form(self) -> Params:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return {}
        data = self.rfile.read(length)
        if "x-www-form-urlencoded" not in (
            self.headers.get("Content-Type") or "application/x-www-form-urlencoded"
        ):
            return {}
        return _multi(parse_qsl(data.decode("utf-8", "replace"), keep_blank_values=True))

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

    def _send(self, reply: Reply, cut_after: int | None = None) -> None:
        """Write ``reply`` (headers only for HEAD); ``cut_after`` bytes, then drop, if set."""
        body = reply.body
        self.send_response(reply.status)
        if reply.content_type is not None:
            self.send_header("Content-Type", reply.content_type)
        if reply.status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self._status = reply.status
        if not body or self._method == "HEAD":
            self._record(0)
            self.end_headers()
            return
        self.end_headers()
        writer = self._body_writer(cut_after)
        try:
            writer.write(body[:-1])
            if cut_after is None:
                self._record(len(body))
            writer.write(body[-1:])
        finally:
            self._sent = writer.sent

    # -- routing -------------------------------------------------------------------------------------------

    def _dispatch(self, method: str, path: str, query: Params, form: Params) -> Reply | ZipPlan:
        route = resolve(path)
        if route is None:
            return tomcat_error(404)
        self._endpoint = route.name
        era = self.state.config.auth_era
        allow = _allow(route, era)
        if method == "OPTIONS":
            return Reply(200, headers={"Allow": allow})
        if method not in allow.split(","):
            return tomcat_error(405, allow)
        verb = "GET" if method == "HEAD" else method
        headers = {
            name: value for name in ("Authorization",) if (value := self.headers.get(name)) is not None
        }
        if route.kind == "token":
            merged = {**query, **form} if era == "spring" else form
            reply, self._user = oauth.token(era, verb, self.state.tokens, _first(merged), headers)
            return reply
        if route.kind == "logout":
            reply, self._user = oauth.logout(era, verb, self.state.tokens, headers, query)
            return reply
        endpoint = route.endpoint
        assert endpoint is not None
        cfg = self.state.config
        if self.state.roll(cfg.error_rate_503):
            return text(503, "Service Unavailable")
        if self.state.roll(cfg.error_rate_429):
            return Reply(429, b"Too Many Requests", TEXT, {"Retry-After": "1"})
        if endpoint.prefix == "v3":
            key = self.headers.get("api_key") or _first(query).get("api_key")
            if not api_key_ok(cfg, key):
                description = "A valid api_key header or query parameter is required"
                body = {"error": "invalid_api_key", "error_description": description}
                return text(401, json.dumps(body), JSON)
            if route.kind == "metadata":
                return text(200, json.dumps(endpoint_metadata(endpoint)), JSON)
        params = {**query, **form} if endpoint.method == "POST" else query
        return self._api(endpoint, params, headers)

    def _api(self, endpoint: Endpoint, params: Params, headers: Mapping[str, str]) -> Reply | ZipPlan:
        cfg = self.state.config
        caller: Caller | Reply | None = None
        if cfg.auth_era == "spring" and endpoint.guard in SPRING_GUARDED:
            caller = self._identify(endpoint, headers, params)  # the filter runs before the endpoint
        if endpoint.strict:
            for name in params:
                if name not in endpoint.params:
                    kind = "form" if endpoint.method == "POST" else "query"
                    allowed = ", ".join(endpoint.params)
                    sentence = f"Invalid {kind} parameter: '{name}'. Allowed parameters are: [{allowed}]"
                    return bad_request(sentence, _PRODUCES.get(endpoint.kind, JSON))
        known = params if endpoint.open_form else {k: v for k, v in params.items() if k in endpoint.params}
        if caller is None and endpoint.auth_first:
            caller = self._identify(endpoint, headers, params)
        if isinstance(caller, Reply):
            return caller
        if any(name not in known for name in endpoint.required):
            return bad_request(endpoint.required_text)
        if caller is None:
            caller = self._identify(endpoint, headers, params)
            if isinstance(caller, Reply):
                return caller
        self._user = caller.name
        view = View(self.state.archive, cfg, caller.user)
        if endpoint.kind == "rows":
            return queries.answer(view, endpoint, known)
        if endpoint.kind == "image":
            return downloads.single_image(view, known)
        if endpoint.kind == "zip":
            return downloads.zip_plan(view, endpoint, known)
        if endpoint.kind == "md5":
            return downloads.instance_md5(view, known)
        if endpoint.kind == "hierarchy":
            return downloads.md5_hierarchy(view, known, self.state.md5_cache)
        return advanced.answer(view, endpoint, known)

    def _identify(self, endpoint: Endpoint, headers: Mapping[str, str], params: Params) -> Caller | Reply:
        caller = identify(self.state.config.auth_era, endpoint.guard, self.state.tokens, headers, params)
        if isinstance(caller, Caller):
            self._user = caller.name
        return caller

    # -- streamed ZIPs ---------------------------------------------------------------------------------------

    def _stream_zip(self, plan: ZipPlan) -> None:
        """Stream ``plan`` chunked (no Content-Length), one member in memory at a time."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Disposition", f'attachment; filename="{plan.filename}"')
        self.send_header("Transfer-Encoding", "chunked")
        self._status = 200
        if self._method == "HEAD":
            self._record(0)
            self.end_headers()
            return
        self.end_headers()
        images = sum(1 for name, _ in plan.members if name.endswith(".dcm"))
        # Members are compressed, so the body's length is unknown: cut after half the images instead.
        cut_member = max(1, images // 2) if self.state.roll(self.state.config.cut_rate) else None
        body = self._body_writer()
        out = ChunkedWriter(body)
        stamp = plan.series.timestamp or dt.datetime(2000, 1, 1)
        date_time = (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)
        try:
            with zipfile.ZipFile(out, "w") as zf:
                done = 0
                for name, read in plan.members:
                    info = zipfile.ZipInfo(name, date_time)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, read(), compresslevel=1)
                    if name.endswith(".dcm"):
                        done += 1
                        if done == cut_member:
                            out.cut()
            out.flush_all()
            self._record(body.sent + len(ChunkedWriter.LAST_CHUNK))
            out.close()
        finally:
            self._sent = body.sent

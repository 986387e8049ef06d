"""The HTTP layer: parsing, routing, checks in the live servers' order, fault knobs, and writing answers.

Every answer carries ``Server: nginx`` and a status line without a reason phrase. HEAD is GET without the
body; OPTIONS answers 200 with ``Allow``; an unknown path is Tomcat's 404 page, a wrong method its 405.
Hostile faults (``nbiafs.server.faults``; knobs in ``ServerConfig``) are rolled once an answer is made and
alter how it is sent: trickled, dropped unanswered, truncated, corrupted, another instance's bytes, HTML,
huge JSON; ``blackhole`` stops accepting connections and answering requests.
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

from nbiafs.server import advanced, downloads, faults, oauth, queries
from nbiafs.server.archive import Archive
from nbiafs.server.auth import TokenStore, api_key_ok
from nbiafs.server.config import FAULTS, RequestRecord, ServerConfig
from nbiafs.server.downloads import ZipPlan
from nbiafs.server.endpoints import Endpoint
from nbiafs.server.guard import SPRING_GUARDED, Caller, identify
from nbiafs.server.replies import JSON, TEXT, XML, Reply, bad_request, text, tomcat_error
from nbiafs.server.routes import Route, resolve
from nbiafs.server.transport import BodyWriter, ChunkedWriter, ConnectionAbortError, RawWriter
from nbiafs.server.v3meta import endpoint_metadata
from nbiafs.server.view import View

log = logging.getLogger(__name__)

Params = dict[str, list[str]]
SECRET_PARAMS = ("api_key", "access_token")  # never recorded
# What an untyped JAX-RS answer (v4's parameter-name 400) is labelled with, per kind of endpoint.
_PRODUCES = {"rows": XML, "zip": "application/octet-stream", "image": "application/dicom", "md5": TEXT}
HTML = "text/html;charset=UTF-8"
POLL = 0.05  # seconds between looks at a live knob (blackhole)


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
        self._holed = False
        self._fillers: list[socket.socket] = []
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error while serving %s", client_address, exc_info=True)

    # -- the blackhole fault: no accept, a full backlog, so the kernel drops new connection attempts --------

    def get_request(self) -> tuple[socket.socket, Any]:
        if self._holed or self.state.config.blackhole:
            self.state.stop.wait(POLL)
            raise OSError("blackhole: not accepting")  # _handle_request_noblock ignores it
        return super().get_request()

    def service_actions(self) -> None:
        """Called by serve_forever every poll: follow the live ``blackhole`` knob."""
        want = bool(self.state.config.blackhole)
        if want != self._holed:
            self._set_blackhole(want)

    def _set_blackhole(self, on: bool) -> None:
        self._holed = on
        if on:
            # A backlog of 0 holds one connection (Linux); two of our own fill it, and the kernel drops
            # every SYN after that (no RST, no answer: what a firewall that drops packets looks like).
            self.socket.listen(0)
            for _ in range(2):
                filler = socket.socket(self.address_family, socket.SOCK_STREAM)
                filler.setblocking(False)
                filler.connect_ex(self.server_address[:2])
                self._fillers.append(filler)
            log.info("blackhole on: not accepting connections")
        else:
            self.socket.listen(self.request_queue_size)
            self._close_fillers()
            log.info("blackhole off: accepting connections")

    def _close_fillers(self) -> None:
        fillers, self._fillers = self._fillers, []
        for filler in fillers:
            with contextlib.suppress(OSError):
                filler.close()

    def server_close(self) -> None:
        super().server_close()
        self._close_fillers()


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
        self._route_kind = ""
        self._endpoint_kind = ""
        self._recorded = False
        url = urlsplit(self.path)
        pairs = parse_qsl(url.query, keep_blank_values=True)
        self._query = _first(_multi(pairs))
        query = urlencode([(k, v) for k, v in pairs if k not in SECRET_PARAMS])
        self._logged_path = url.path + (f"?{query}" if query else "")
        try:
            form = self._read_form()
            if self.state.config.blackhole:
                self._blackholed()
            if not self._pause(self.state.config.latency + self.state.config.stall):
                raise ConnectionAbortError("server stopping")
            result = self._dispatch(method, url.path, _multi(pairs), form)
            hits = self._roll_faults()
            if "drop" in hits:
                raise ConnectionAbortError("dropped without an answer (drop fault)")
            if isinstance(result, ZipPlan) and "html" in hits and self._method != "HEAD":
                result = Reply(200, faults.HTML_PAGE, HTML)
            if isinstance(result, ZipPlan):
                self._stream_zip(result, hits)
            else:
                self._send_faulty(result, hits)
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

    def _body_writer(self, cut_after: int | None = None, hits: frozenset[str] = frozenset()) -> BodyWriter:
        out: Any = self.wfile  # a socket writer: write() only
        cfg = self.state.config
        trickle = (cfg.trickle_bytes, cfg.trickle_interval) if "trickle" in hits else None
        return BodyWriter(out, self.state.stop, cfg.bandwidth, cut_after, trickle)

    # -- hostile faults ----------------------------------------------------------------------------------------

    def _blackholed(self) -> None:
        """No answer while ``blackhole`` is on; then close the connection. Raises ConnectionAbortError."""
        self._endpoint = "(blackhole)"
        while self.state.config.blackhole and not self.state.stop.wait(POLL):
            pass
        raise ConnectionAbortError("blackhole: no answer")

    def _roll_faults(self) -> frozenset[str]:
        """The faults this request gets: each in scope rolled against its rate, in ``FAULTS`` order."""
        cfg = self.state.config
        hits = set()
        for fault in FAULTS:
            rate = float(getattr(cfg, f"{fault}_rate"))
            scoped = rate > 0 and faults.in_scope(
                cfg, fault, self._route_kind, self._endpoint, self._endpoint_kind
            )
            if scoped and self.state.roll(rate):
                hits.add(fault)
        if hits:
            log.debug("faults %s for %s %s", sorted(hits), self._method, self._logged_path)
        return frozenset(hits)

    def _send_faulty(self, reply: Reply, hits: frozenset[str]) -> None:
        """Send ``reply`` altered by the faults in ``hits`` (the 200s; trickle applies to any answer)."""
        ok = reply.status == 200 and self._method != "HEAD" and bool(reply.body)
        if ok and "html" in hits:
            reply = Reply(200, faults.HTML_PAGE, HTML)
        elif ok and self._endpoint_kind == "image":
            body = reply.body
            if "wrong_sop" in hits:
                other = faults.other_instance(self.state.archive, self._query.get("SOPInstanceUID", ""))
                if other is not None:
                    body = self.state.archive.instance_bytes(other)
            if "corrupt" in hits:
                body = faults.corrupt(body)
            reply = Reply(reply.status, body, reply.content_type, reply.headers)
        if (
            ok
            and "huge_json" in hits
            and (reply.content_type or "").startswith("application/json")
            and reply.body.lstrip().startswith(b"[")
        ):
            self._send_chunked(reply, faults.huge_json(reply.body, self.state.config.huge_json_bytes), hits)
            return
        if ok and "truncate" in hits:
            self._send_truncated(reply, hits)
            return
        cut = None
        if self._endpoint == "getSingleImage" and reply.status == 200:
            cut = len(reply.body) // 2 if self.state.roll(self.state.config.cut_rate) else None
        self._send(reply, cut, hits)

    def _start_body(self, reply: Reply, framing: tuple[str, str]) -> None:
        self.send_response(reply.status)
        if reply.content_type is not None:
            self.send_header("Content-Type", reply.content_type)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header(*framing)
        self._status = reply.status
        self.end_headers()

    def _send_chunked(self, reply: Reply, pieces: Any, hits: frozenset[str]) -> None:
        """Send the ``pieces`` (an iterable of bytes) as ``reply``'s body, chunked."""
        self._start_body(reply, ("Transfer-Encoding", "chunked"))
        body = self._body_writer(None, hits)
        out = ChunkedWriter(body)
        try:
            for piece in pieces:
                out.write(piece)
            out.flush_all()
            self._record(body.sent + len(ChunkedWriter.LAST_CHUNK))
            out.close()
        finally:
            self._sent = body.sent

    def _send_truncated(self, reply: Reply, hits: frozenset[str]) -> None:
        """Half of ``reply``'s body with no Content-Length, ended as ``truncate_style`` says."""
        style = self.state.config.truncate_style
        half = reply.body[: len(reply.body) // 2]
        body = self._body_writer(None, hits)
        try:
            if style == "close":
                self._start_body(reply, ("Connection", "close"))  # also sets close_connection
                self._record(len(half))
                body.write(half)
                return
            self._start_body(reply, ("Transfer-Encoding", "chunked"))
            out = ChunkedWriter(body)
            out.write(half)
            if style == "chunked":
                out.cut()  # raises ConnectionAbortError: the connection is dropped
            self._record(body.sent)
            out.end_early()
        finally:
            self._sent = body.sent

    def _zip_members(self, plan: ZipPlan, hits: frozenset[str]) -> list[tuple[str, Any]]:
        """``plan``'s members, altered by the corrupt and wrong_sop faults."""
        archive = self.state.archive
        members: list[tuple[str, Any]] = list(plan.members)
        if "wrong_sop" in hits:
            other = faults.other_series(archive, plan.series)
            if other is not None:
                uids = [i.sop_instance_uid for i in other.instances]
                dcm = 0
                for index, (name, _read) in enumerate(members):
                    if name.endswith(".dcm"):
                        sop = uids[dcm % len(uids)]
                        members[index] = (name, lambda sop=sop: archive.instance_bytes(sop))
                        dcm += 1
        if "corrupt" in hits:
            members = [
                (name, (lambda read=read: faults.corrupt(read())) if name.endswith(".dcm") else read)
                for name, read in members
            ]
        return members

    def _send(self, reply: Reply, cut_after: int | None = None, hits: frozenset[str] = frozenset()) -> None:
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
        writer = self._body_writer(cut_after, hits)
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
        self._route_kind = route.kind
        self._endpoint_kind = route.endpoint.kind if route.endpoint is not None else ""
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

    def _stream_zip(self, plan: ZipPlan, hits: frozenset[str] = frozenset()) -> None:
        """Stream ``plan`` chunked (no Content-Length), one member in memory at a time; the truncate fault
        ends it after half its images (``Connection: close`` and no chunking for the ``close`` style)."""
        style = self.state.config.truncate_style if "truncate" in hits else None
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Disposition", f'attachment; filename="{plan.filename}"')
        if style == "close":
            self.send_header("Connection", "close")
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self._status = 200
        if self._method == "HEAD":
            self._record(0)
            self.end_headers()
            return
        self.end_headers()
        members = self._zip_members(plan, hits)
        images = sum(1 for name, _ in members if name.endswith(".dcm"))
        # Members are compressed, so the body's length is unknown: cut after half the images instead.
        cut = self.state.roll(self.state.config.cut_rate)
        cut_member = max(1, images // 2) if cut or style else None
        body = self._body_writer(None, hits)
        out: ChunkedWriter | RawWriter = RawWriter(body) if style == "close" else ChunkedWriter(body)
        stamp = plan.series.timestamp or dt.datetime(2000, 1, 1)
        date_time = (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)
        try:
            with zipfile.ZipFile(out, "w") as zf:
                done = 0
                for name, read in members:
                    info = zipfile.ZipInfo(name, date_time)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, read(), compresslevel=1)
                    if name.endswith(".dcm"):
                        done += 1
                        if done == cut_member:
                            if isinstance(out, RawWriter):  # truncate, close: a clean end of body
                                out.discard = True
                                self._record(body.sent)
                                return
                            if style == "chunked-end":  # truncate: a well-formed, short chunked body
                                self._record(body.sent)
                                out.end_early()
                                return
                            out.cut()
            assert isinstance(out, ChunkedWriter)
            out.flush_all()
            self._record(body.sent + len(ChunkedWriter.LAST_CHUNK))
            out.close()
        finally:
            self._sent = body.sent

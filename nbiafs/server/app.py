"""``ArchiveServer``: the bundled NBIA-compatible archive server, started and stopped from Python.

It serves on loopback from background daemon threads (one per connection, HTTP/1.1 keep-alive). ``stop()``
returns promptly even while requests are stalled or throttled: it wakes every sleeping handler and shuts down
every open connection.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading

from nbiafs.server.archive import Archive
from nbiafs.server.auth import TokenStore
from nbiafs.server.config import RequestRecord, ServerConfig
from nbiafs.server.errors import ServerConfigError
from nbiafs.server.handler import HTTPServer, ServerState

log = logging.getLogger(__name__)


def load_archive(config: ServerConfig) -> Archive:
    """The synthetic archive for ``config.seed`` (cached per process), or the indexed ``config.data_dir``."""
    if config.data_dir:
        from nbiafs.server.datadir import index_data_dir

        return index_data_dir(config.data_dir)
    from nbiafs.server.synthetic import synthetic_archive

    return synthetic_archive(config.seed)


class ArchiveServer:
    """An NBIA-compatible server on ``host:port`` (port 0 picks a free one). Also a context manager.

    ``config`` is live (change knobs at run time); ``archive`` is the data served; ``requests`` a snapshot of
    every answered request. Raises ServerConfigError if the data directory is unusable or the address is
    taken.
    """

    def __init__(self, config: ServerConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._config = config if config is not None else ServerConfig()
        self.archive = load_archive(self._config)
        self.host = host
        self.port = port
        self._state = ServerState(
            archive=self.archive,
            config=self._config,
            tokens=TokenStore(self._config),
            rng=random.Random(self._config.seed),
        )
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> ServerConfig:
        """The live configuration; assigning a new one takes effect for the next request."""
        return self._config

    @config.setter
    def config(self, value: ServerConfig) -> None:
        self._config = value
        if hasattr(self, "_state"):
            self._state.config = value
            self._state.tokens.config = value

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` without a trailing slash (the bound port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Listen and serve in a background thread; returns once the socket is listening."""
        if self._httpd is not None:
            return
        self._state.stop.clear()
        try:
            httpd = HTTPServer((self.host, self.port), self._state)
        except OSError as exc:
            raise ServerConfigError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        self._httpd = httpd
        self.port = int(httpd.server_address[1])
        httpd.service_actions()  # a blackhole configured up front holds from the first connection
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="nbiafs-archive", daemon=True
        )
        self._thread.start()
        log.info("archive server listening on %s", self.url)

    def stop(self) -> None:
        """Stop serving: close the listening socket and every connection (never waits for stalled ones)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        with self._state.lock:
            connections = list(self._state.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        log.info("archive server on %s stopped", self.url)

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request records so far, oldest first."""
        with self._state.lock:
            return list(self._state.records)

    def clear_requests(self) -> None:
        with self._state.lock:
            self._state.records.clear()

    def rescan(self) -> int:
        """Index the data directory again (``--data DIR`` servers only): series added since are published,
        released now; returns how many appeared. Raises ServerConfigError without a data directory."""
        if not self._config.data_dir:
            raise ServerConfigError("only a server of a data directory (--data) can rescan it")
        from nbiafs.server.datadir import index_data_dir

        known = {s.series_instance_uid: s.date_released for s in self.archive.iter_series()}
        archive = index_data_dir(self._config.data_dir, known)
        new = sum(1 for s in archive.iter_series() if s.series_instance_uid not in known)
        self.archive = archive
        self._state.archive = archive  # the next request sees it
        if new:
            log.info("published %d new series from %s", new, self._config.data_dir)
        return new

    def revoke_tokens(self, refresh_tokens: bool = False) -> None:
        """Invalidate every access token issued so far (clients must refresh); with ``refresh_tokens``, the
        refresh tokens too (clients must log in again, as after a Keycloak restart)."""
        self._state.tokens.revoke(refresh_tokens)

    def __enter__(self) -> ArchiveServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Whether the server can be reached: the offline state of a tree, and the background probe that ends it.

A request that fails with :class:`~nbiafs.errors.UnavailableError` (refused, dropped, name resolution,
timeout; not an access error or a 404) puts the tree offline: it logs one warning, then serves what its caches
hold (whatever their age) and sends nothing to the server but one cheap probe every ``interval`` seconds from
a background thread. The first request that succeeds, the probe's or any other, puts it back online.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from nbiafs.errors import NbiaError, UnavailableError

log = logging.getLogger(__name__)

PROBE_INTERVAL = 15.0
"""Seconds between background probes of an unreachable server."""

T = TypeVar("T")


class Connectivity:
    """The online/offline state shared by the listing cache and the tree. Thread-safe.

    ``probe()`` is a cheap request (e.g. getCollectionValues); any answer that is not an UnavailableError
    proves the server reachable again.
    """

    def __init__(self, probe: Callable[[], object], *, interval: float = PROBE_INTERVAL) -> None:
        self._probe = probe
        self.interval = interval
        self._lock = threading.Lock()
        self._online = True
        self._closed = threading.Event()
        self._prober: threading.Thread | None = None

    @property
    def online(self) -> bool:
        """False from a failure to reach the server until the next success."""
        return self._online

    def call(self, request: Callable[[], T]) -> T:
        """``request()``, recording whether the server was reached."""
        try:
            result = request()
        except UnavailableError as exc:
            if exc.reached:  # it answered; only the body broke off or stalled: not offline
                self.succeeded()
            else:
                self.failed(exc)
            raise
        except NbiaError:
            self.succeeded()  # the server answered, if only with an error
            raise
        self.succeeded()
        return result

    def failed(self, exc: UnavailableError) -> None:
        """The server could not be reached: go offline (said once) and start probing."""
        with self._lock:
            if not self._online or self._closed.is_set():
                return
            self._online = False
            self._prober = threading.Thread(target=self._run_probe, name="nbiafs-probe", daemon=True)
            self._prober.start()
        log.warning(
            "the server cannot be reached (%s): offline; serving cached listings and files, "
            "checking again every %g s",
            exc,
            self.interval,
        )

    def succeeded(self) -> None:
        """The server answered: back online (said once)."""
        with self._lock:
            if self._online:
                return
            self._online = True
        log.warning("the server can be reached again: online")

    def _run_probe(self) -> None:
        while not self._closed.wait(self.interval):
            if self._online:
                return
            try:
                self._probe()
            except UnavailableError as exc:
                log.debug("server still unreachable: %s", exc)
                continue
            except NbiaError as exc:
                log.debug("probe answered with an error (the server is reachable): %s", exc)
            except Exception:  # a background thread has nobody to raise to
                log.exception("the probe of the server failed unexpectedly")
                continue
            self.succeeded()
            return

    def close(self) -> None:
        """Stop probing (a probe under way ends within its request's own timeouts)."""
        self._closed.set()

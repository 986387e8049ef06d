"""Writing response bodies: bandwidth throttling, trickling, cutting a connection mid-body, chunked encoding.

Hand-written because http.server offers none of it: ``BodyWriter`` paces writes to ``bandwidth`` bytes per
second (per connection), or trickles them (``trickle``: N bytes every S seconds), and can stop after
``cut_after`` bytes to simulate a dropped connection; ``ChunkedWriter`` is the non-seekable file object
:mod:`zipfile` streams a ZIP into, ``RawWriter`` the same without chunking (a body ended by closing).
"""

from __future__ import annotations

import threading
import time
from typing import BinaryIO


class ConnectionAbortError(Exception):
    """The body must not be finished: close the connection (cut on purpose, or the server is stopping)."""


class BodyWriter:
    """Writes a body to ``out`` and counts ``sent`` bytes.

    Raises ConnectionAbortError when cut, or when ``stop`` is set.
    """

    def __init__(
        self,
        out: BinaryIO,
        stop: threading.Event,
        bandwidth: float | None = None,
        cut_after: int | None = None,
        trickle: tuple[int, float] | None = None,
    ) -> None:
        self._out = out
        self._stop = stop
        self._bandwidth = bandwidth if bandwidth and bandwidth > 0 else None
        self._trickle = trickle
        self._cut_after = cut_after
        self._start = time.monotonic()
        self.sent = 0

    def write(self, data: bytes) -> None:
        """Write all of ``data`` (paced, possibly cut)."""
        view = memoryview(data)
        if self._cut_after is not None and self.sent + len(view) > self._cut_after:
            self._write(view[: max(0, self._cut_after - self.sent)])
            raise ConnectionAbortError("connection cut mid-body")
        self._write(view)

    def _write(self, view: memoryview) -> None:
        if self._trickle is not None:
            step, interval = max(1, self._trickle[0]), self._trickle[1]
            for pos in range(0, len(view), step):
                self._out.write(view[pos : pos + step])
                flush = getattr(self._out, "flush", None)
                if flush is not None:
                    flush()
                self.sent += len(view[pos : pos + step])
                if self._stop.wait(interval):
                    raise ConnectionAbortError("server stopping")
            return
        if self._bandwidth is None:
            if self._stop.is_set():
                raise ConnectionAbortError("server stopping")
            self._out.write(view)
            self.sent += len(view)
            return
        # Slices of about 1/20 s worth of bytes keep the pace smooth at any rate.
        step = max(1024, min(256 * 1024, int(self._bandwidth / 20)))
        for pos in range(0, len(view), step):
            piece = view[pos : pos + step]
            self._out.write(piece)
            self.sent += len(piece)
            ahead = self.sent / self._bandwidth - (time.monotonic() - self._start)
            if ahead > 0 and self._stop.wait(ahead):
                raise ConnectionAbortError("server stopping")
        if self._stop.is_set():
            raise ConnectionAbortError("server stopping")


class ChunkedWriter:
    """A write-only, non-seekable file sending HTTP/1.1 chunks of at least ``chunk_size`` bytes to ``body``.

    ``close()`` sends the remaining data and the last (empty) chunk.
    """

    LAST_CHUNK = b"0\r\n\r\n"

    def __init__(self, body: BodyWriter, chunk_size: int = 64 * 1024) -> None:
        self._body = body
        self._chunk_size = chunk_size
        self._buf = bytearray()
        self.closed = False
        self.discard = False  # set once the body is ended early: later writes (a ZIP's directory) are dropped

    def write(self, data: bytes) -> int:
        if self.discard:
            return len(data)
        self._buf += data
        if len(self._buf) >= self._chunk_size:
            self._emit()
        return len(data)

    def flush(self) -> None:
        """Nothing: chunks go out when full or at close (zipfile calls this after every member)."""

    def _emit(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._body.write(b"%x\r\n" % len(data) + data + b"\r\n")

    def cut(self) -> None:
        """Send a chunk header for the buffered data but only half of it; raise ConnectionAbortError."""
        data = bytes(self._buf) or b"\0" * 64
        self._buf.clear()
        self._body.write(b"%x\r\n" % len(data) + data[: len(data) // 2])
        raise ConnectionAbortError("connection cut mid-body")

    def flush_all(self) -> None:
        """Send every buffered byte now (as one chunk)."""
        self._emit()

    def close(self) -> None:
        if not self.closed and not self.discard:
            self._emit()
            self._body.write(self.LAST_CHUNK)
            self.closed = True

    def end_early(self) -> None:
        """End the body now, well-formed (buffered data and the last chunk), and drop every later write."""
        self.close()
        self.discard = True


class RawWriter:
    """A write-only, non-seekable file sending bytes as they come (a body without length or chunking)."""

    def __init__(self, body: BodyWriter) -> None:
        self._body = body
        self.discard = False

    def write(self, data: bytes) -> int:
        if not self.discard:
            self._body.write(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: every write goes out at once."""

    def close(self) -> None:
        """Nothing to do: the body ends when the connection closes."""

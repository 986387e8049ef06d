"""Metadata listings persisted on disk with the time they were fetched, so a remount lists with no request.

One SQLite database (``metadata.sqlite3``) in the cache directory, in WAL mode with a busy timeout, so several
mounts (threads and processes) can share it: a writer replaces a whole row in one transaction and readers
never see half a listing. Rows are namespaced (see :meth:`MetaStore.scoped`) so mounts of different servers or
users sharing one directory never see each other's listings: a guest mount must not list what alice may see.
The database file is created mode 0600 (SQLite gives its -wal and -shm files the same mode).

The store is a cache: a read or write that fails (disk full, corrupt file, lock held too long) is logged and
treated as a miss, never raised. Values are JSON; :func:`encode_records` and :func:`decode_records` turn the
typed records of :mod:`nbiafs.api.records` (with their ``raw`` rows) into JSON and back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nbiafs.api.records import Patient, Series, SeriesMetadata, SeriesSize, Study
from nbiafs.errors import ConfigError

log = logging.getLogger(__name__)

DB_NAME = "metadata.sqlite3"
PRUNE_AGE = 30 * 86400.0
"""Rows older than this (seconds) are deleted when a store is opened, so the file does not grow forever."""
BUSY_TIMEOUT = 10.0
"""Seconds a statement waits for another process's write lock before the store gives up (a miss)."""
KEYS_REFRESH = 1.0
"""Seconds a key this process has not seen is taken as absent without asking SQLite (rows written since by
another connection are read every this often; see :class:`_Database`)."""

_SCHEMA_VERSION = 1
_SEP = "\x1f"

Record = Patient | Study | Series | SeriesMetadata | SeriesSize
_RECORD_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (Patient, Study, Series, SeriesMetadata, SeriesSize)
}


class _Database:
    """One shared connection; a lock serialises its use (sqlite3 connections are not thread-safe).

    It keeps the keys of the table in memory (read once, then only the rows written since, by rowid, at most
    every ``KEYS_REFRESH`` seconds), so a key never stored (every listing of a cold walk) costs no query. A row
    another process wrote may be missed (a reused rowid): at worst that listing is asked of the server again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._keys: set[str] | None = None  # None: not read yet (or to be read again)
        self._last_rowid = 0
        self._keys_read = -math.inf  # time.monotonic() of the last read
        # Create the file ourselves so it is private (0600) before SQLite opens it.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self.conn = sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                log.info("%s: WAL unavailable (journal mode %s); sharing still safe, slower", path, mode)
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS listings (key TEXT PRIMARY KEY,"
                " fetched_at REAL NOT NULL, version INTEGER NOT NULL, value TEXT NOT NULL)"
            )
        except sqlite3.Error:
            self.conn.close()
            raise

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def absent(self, key: str) -> bool:
        """Whether ``key`` certainly has no row, as far as the keys in memory tell (no lock, no query)."""
        keys = self._keys
        return keys is not None and key not in keys and time.monotonic() - self._keys_read < KEYS_REFRESH

    def may_hold(self, key: str) -> bool:
        """Whether ``key`` may have a row (False: certainly none, or none another connection wrote more than
        ``KEYS_REFRESH`` seconds ago). Call with ``lock`` held; raises sqlite3.Error."""
        keys = self._keys
        if keys is not None and key in keys:
            return True
        now = time.monotonic()
        if keys is not None and now - self._keys_read < KEYS_REFRESH:
            return False
        # A replaced row gets a new rowid: the rows past the last one read are all those written since.
        since = 0 if keys is None else self._last_rowid
        rows = self.conn.execute("SELECT rowid, key FROM listings WHERE rowid > ?", (since,)).fetchall()
        if keys is None:
            keys = self._keys = set()
        for rowid, stored in rows:
            keys.add(str(stored))
            self._last_rowid = max(self._last_rowid, int(rowid))
        self._keys_read = now
        return key in keys

    def wrote(self, key: str) -> None:
        """This connection wrote ``key``'s row (call with ``lock`` held)."""
        if self._keys is not None:
            self._keys.add(key)

    def deleted(self, key: str) -> None:
        """This connection deleted ``key``'s row (call with ``lock`` held)."""
        if self._keys is not None:
            self._keys.discard(key)

    def forget_keys(self) -> None:
        """Rows were deleted: read the keys again when next needed (call with ``lock`` held)."""
        self._keys = None
        self._last_rowid = 0


class MetaStore:
    """Listings on disk: ``put(key, value)`` and ``get(key, max_age)`` -> ``(fetched_at, value)`` or ``None``.

    ``fetched_at`` is seconds since the epoch (``time.time()``). Thread-safe; several processes may open the
    same directory. Use :meth:`scoped` to give each server and user a namespace of its own.
    """

    def __init__(self, directory: str | Path, *, namespace: str = "", _db: _Database | None = None) -> None:
        """Open (creating if needed, mode 0700) ``directory/metadata.sqlite3``. ConfigError if unusable."""
        self.directory = Path(directory)
        self.namespace = namespace
        if _db is not None:
            self._db = _db
            return
        path = self.directory / DB_NAME
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                self._db = _Database(path)
            except sqlite3.DatabaseError as exc:
                # Only a cache: a corrupt file is replaced rather than stopping the mount.
                log.warning("metadata store %s is unreadable (%s); starting a new one", path, exc)
                for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                    stale.unlink(missing_ok=True)
                self._db = _Database(path)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the metadata store in {self.directory}: {exc}") from None
        self.prune(PRUNE_AGE)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    def scoped(self, namespace: str) -> MetaStore:
        """A view of the same database whose keys live in ``namespace`` (appended to this one's)."""
        joined = f"{self.namespace}{_SEP}{namespace}" if self.namespace else namespace
        return MetaStore(self.directory, namespace=joined, _db=self._db)

    def _key(self, key: str) -> str:
        return f"{self.namespace}{_SEP}{key}"

    def get(self, key: str, max_age: float, *, now: float | None = None) -> tuple[float, Any] | None:
        """``(fetched_at, value)`` if stored and fetched at most ``max_age`` seconds ago, else ``None``.

        A row stamped in the future (clock stepped back) counts as stale.
        """
        now = time.time() if now is None else now
        full = self._key(key)
        if self._db.absent(full):
            return None
        try:
            with self._db.lock:
                if not self._db.may_hold(full):
                    return None
                row = self._db.conn.execute(
                    "SELECT fetched_at, version, value FROM listings WHERE key = ?", (full,)
                ).fetchone()
        except sqlite3.Error as exc:
            log.warning("metadata store read failed (%s); treating %r as not cached", exc, key)
            return None
        if row is None:
            return None
        fetched_at, version, text = float(row[0]), int(row[1]), str(row[2])
        if version != _SCHEMA_VERSION or not (now - max_age <= fetched_at <= now + 1.0):
            return None
        try:
            return fetched_at, json.loads(text)
        except ValueError:
            log.warning("metadata store: unreadable row %r, ignored", key)
            return None

    def put(self, key: str, value: Any, fetched_at: float | None = None) -> None:
        """Store ``value`` (JSON-able) under ``key`` stamped ``fetched_at`` (default now); logs failures."""
        stamp = time.time() if fetched_at is None else fetched_at
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        except (TypeError, ValueError) as exc:
            log.warning("metadata store: cannot encode %r: %s", key, exc)
            return
        try:
            with self._db.lock:
                full = self._key(key)
                self._db.conn.execute(
                    "INSERT OR REPLACE INTO listings (key, fetched_at, version, value) VALUES (?, ?, ?, ?)",
                    (full, stamp, _SCHEMA_VERSION, text),
                )
                self._db.wrote(full)
        except sqlite3.Error as exc:
            log.warning("metadata store write failed (%s); %r not persisted", exc, key)

    def list_keys(self) -> list[str]:
        """The keys of this namespace (without the namespace); [] when the store cannot be read."""
        if not self.namespace:
            return []
        prefix = self.namespace + _SEP
        try:
            with self._db.lock:
                rows = self._db.conn.execute(
                    "SELECT key FROM listings WHERE key >= ? AND key < ?", (prefix, prefix + "\U0010ffff")
                ).fetchall()
        except sqlite3.Error as exc:
            log.warning("metadata store read failed: %s", exc)
            return []
        return [str(row[0])[len(prefix) :] for row in rows]

    def delete(self, key: str) -> None:
        """Forget ``key`` (no error if absent)."""
        try:
            with self._db.lock:
                full = self._key(key)
                self._db.conn.execute("DELETE FROM listings WHERE key = ?", (full,))
                self._db.deleted(full)
        except sqlite3.Error as exc:
            log.warning("metadata store delete failed: %s", exc)

    def prune(self, max_age: float, *, now: float | None = None) -> int:
        """Delete rows of every namespace older than ``max_age`` seconds; returns how many were deleted."""
        cutoff = (time.time() if now is None else now) - max_age
        try:
            with self._db.lock:
                cur = self._db.conn.execute("DELETE FROM listings WHERE fetched_at < ?", (cutoff,))
                self._db.forget_keys()
                return max(cur.rowcount, 0)
        except sqlite3.Error as exc:
            log.warning("metadata store prune failed: %s", exc)
            return 0

    def count(self) -> int:
        """How many listings this namespace holds (all namespaces if it is empty), fresh or not."""
        try:
            with self._db.lock:
                if self.namespace:
                    prefix = self.namespace + _SEP
                    row = self._db.conn.execute(
                        "SELECT COUNT(*) FROM listings WHERE key >= ? AND key < ?",
                        (prefix, prefix + "\U0010ffff"),
                    ).fetchone()
                else:
                    row = self._db.conn.execute("SELECT COUNT(*) FROM listings").fetchone()
        except sqlite3.Error as exc:
            log.warning("metadata store count failed: %s", exc)
            return 0
        return int(row[0]) if row else 0

    def clear(self) -> None:
        """Delete every row of this namespace (all rows if the namespace is empty)."""
        try:
            with self._db.lock:
                if self.namespace:
                    prefix = self.namespace + _SEP
                    # Range query instead of LIKE so namespaces containing % or _ are handled exactly.
                    self._db.conn.execute(
                        "DELETE FROM listings WHERE key >= ? AND key < ?", (prefix, prefix + "\U0010ffff")
                    )
                else:
                    self._db.conn.execute("DELETE FROM listings")
                self._db.forget_keys()
        except sqlite3.Error as exc:
            log.warning("metadata store clear failed: %s", exc)

    def close(self) -> None:
        """Close the database (every scoped view of it too)."""
        self._db.close()

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "$datetime" in value:
            return dt.datetime.fromisoformat(value["$datetime"])
        if "$date" in value:
            return dt.date.fromisoformat(value["$date"])
    return value


def encode_records(records: Iterable[Record | str]) -> list[Any]:
    """Records (or plain strings such as collection names and SOPInstanceUIDs) as a JSON-able list."""
    out: list[Any] = []
    for rec in records:
        if isinstance(rec, str):
            out.append(rec)
            continue
        fields = {
            f.name: _encode_value(getattr(rec, f.name)) for f in dataclasses.fields(rec) if f.name != "raw"
        }
        out.append({"type": type(rec).__name__, "fields": fields, "raw": rec.raw})
    return out


def decode_records(data: Any) -> list[Any]:
    """The inverse of :func:`encode_records`. Raises ValueError on anything it did not write."""
    if not isinstance(data, list):
        raise ValueError("stored listing is not a list")
    out: list[Any] = []
    for item in data:
        if isinstance(item, str):
            out.append(item)
            continue
        if not isinstance(item, dict) or item.get("type") not in _RECORD_TYPES:
            raise ValueError("stored listing holds an unknown item")
        cls = _RECORD_TYPES[item["type"]]
        fields = item.get("fields")
        raw = item.get("raw")
        if not isinstance(fields, dict) or not isinstance(raw, dict):
            raise ValueError("stored record is malformed")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            kwargs = {k: _decode_value(v) for k, v in fields.items() if k in known}
            out.append(cls(**kwargs, raw=raw))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"stored record is malformed: {exc}") from None
    return out

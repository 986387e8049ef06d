"""The LRU-by-bytes disk cache of DICOM instances, shared safely by several mounts (processes) at once.

Layout of a cache directory (dirs 0700, files 0600)::

    index.sqlite3[-wal,-shm]   the index: one row per entry (size, last access, hits, pinned, collection) and
                               the counters
    data/<xx>/<name>.dcm       the instances; <xx> = first two hex digits of sha256(key)
    data/<xx>/<name>.dcm.w.part    a download in progress (never under the final name)
    locks/<name>.dcm.lock      per-key flock held while one process downloads that key
    spill/<random>.spill       an instance larger than the cache bound, served but not kept (see below)

``<name>`` is the key percent-escaped (SOPInstanceUIDs are dotted digits and pass unchanged); a name longer
than 200 characters becomes ``%h<sha256>``, which the escaping can never produce.

Concurrency: one download per key at a time, threads of one process wait for the leader's result (single
flight), and processes serialise on the key's lock file. A caller about to bring many keys at once (a series
ZIP) claims them (:meth:`~InstanceCache.claim`): a fetch of a claimed key waits for the claim to deliver it (at most
``claim_wait`` seconds) instead of downloading it, and downloads it itself if the claim is released without
it; :meth:`~InstanceCache.store` files a key from such a stream unless another download of it is under way.

Bookkeeping. A finished download is renamed into place at once (readers see it immediately) and its index
row follows in a batch: one transaction per ``COMMIT_BATCH`` new entries or ``COMMIT_INTERVAL`` seconds,
from a timer thread; the ``max_bytes`` bound is enforced at each batch, so it may be exceeded for that long.
Evictions and clears happen inside ``BEGIN IMMEDIATE`` transactions on the index, so sqlite's write lock
orders them across processes; a batch indexes only files still on disk.

Crashes. Files are not fsynced: integrity comes from the checks, not from the disk. A download is written to
a ``.part`` file (one name per key, written only under the key's lock, so a dead process's is overwritten) and
renamed only once complete and accepted by ``check``, so a partial download never appears under its final
name, and a process that dies leaves at worst ``.part`` files (removed at start-up, or by the key's next
single download) and entries without rows (adopted at start-up). After an operating-system crash or power
loss a recent file may have lost its data; :meth:`~InstanceCache.reconcile` (run on start-up) removes every
entry whose size is not the one indexed, and adopts an unindexed file only if it is a complete DICOM file.

Trust. The directory (and data/, locks/) must belong to the user and not be writable by group or others, else
ConfigError: a file planted there would be served. A fetch takes a ``check`` that must accept the finished
download (the tree checks that it is the complete DICOM instance asked for); one it refuses is removed and
never cached. Keys are the caller's: the tree prefixes SOPInstanceUIDs with a hash of the server's URL.

Pins. A pinned entry (:meth:`~InstanceCache.pin`, ``nbiafs prefetch --pin``) is never evicted, neither for
the ``max_bytes`` bound nor for the free-space floor, until :meth:`~InstanceCache.unpin` or
:meth:`~InstanceCache.clear`; only unpinned entries are evicted (a cache whose pins fill its bound keeps only
its newest unpinned entry besides them). Pins live in the index's ``pinned`` column, so every process
sharing the cache honours them.
Each entry may record the collection it belongs to (``collection``: given to :meth:`~InstanceCache.fetch`,
:meth:`~InstanceCache.store`, :meth:`~InstanceCache.pin` or :meth:`~InstanceCache.label`), for per-collection
figures in :meth:`~InstanceCache.info`. Schema 2 added both columns; an older index is migrated on opening.

Space. Before a download the cache evicts least recently used entries until the file system keeps its free
space floor (``min_free``, default the smaller of ``FREE_FLOOR_FRACTION`` of its size and ``FREE_FLOOR_BYTES``)
plus the expected size; a write that fails for lack of space evicts and downloads once more; NoSpaceError when
nothing is left to evict. An instance larger than ``max_bytes`` is written to spill/ instead of data/ and
removed ``SPILL_KEEP`` seconds later (the caller opens it at once; an open file stays readable).

Hot path: :meth:`InstanceCache.get` and :meth:`InstanceCache.peek` do one ``stat`` (the file name follows
from the key) and never touch sqlite. ``get`` records the access in memory; the recorded access times and hit
counts are written to the index in one transaction at most every ``flush_interval`` seconds (and before every
eviction, in :meth:`info` and :meth:`close`), because writing the index on every open of a busy mount would
serialise all FUSE threads on sqlite's write lock. So another process sees this one's recent accesses up to
``flush_interval`` late, and a process killed without :meth:`close` loses that many seconds of access times.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from errno import EDQUOT, ENOSPC
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import quote, unquote

from nbiafs.errors import BadResponseError, CacheError, ConfigError, NoSpaceError, RequestTimeoutError
from nbiafs.fs.dicomcheck import check_complete
from nbiafs.fs.flight import FLIGHT_WAIT, SingleFlight
from nbiafs.settings import format_size

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite3"
DATA_DIR = "data"
LOCK_DIR = "locks"
SUFFIX = ".dcm"
PART_SUFFIX = ".part"
PART_TAG = ".w"
"""Between an entry's name and ``PART_SUFFIX`` in its download's file name (older versions put a random tag)."""
LOCK_SUFFIX = ".lock"
MAX_NAME = 200
SCHEMA_VERSION = 2
"""2: the ``pinned`` and ``collection`` columns of ``entries``."""
SPILL_DIR = "spill"
SPILL_SUFFIX = ".spill"
SPILL_KEEP = 60.0
PATHS_REMEMBERED = 8192
"""Keys whose entry paths are kept in memory (a path costs a SHA-256 and an escaping to compute)."""
"""Seconds an instance too large for the cache stays in spill/ for its caller to open."""
FREE_FLOOR_FRACTION = 0.05
FREE_FLOOR_BYTES = 1 << 30
"""The cache never fills its file system past this floor: the smaller of 5 % of its size and 1 GiB stays free."""

COMMIT_INTERVAL = 0.1
"""Seconds a finished download waits, at most, for its row in the index (rows are committed in batches)."""
COMMIT_BATCH = 64
"""Rows that make a batch commit at once, without waiting for ``COMMIT_INTERVAL``."""
CLAIM_WAIT = 5.0
"""Seconds a fetch waits for a key another fetch (a series ZIP) claimed before downloading it itself."""

Check = Callable[[Path], None]
"""``check(path)`` raises (BadResponseError) if a finished download must not be cached."""


def _disk_error(message: str, exc: OSError) -> CacheError:
    """The error for a failed write to the cache's disk: NoSpaceError when the file system is full."""
    if exc.errno in (ENOSPC, EDQUOT):
        return NoSpaceError(message)
    return CacheError(message)


class _NoRoomError(NoSpaceError):
    """The disk filled up during a download; ``written`` bytes had been written."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


def _write_error(message: str, exc: OSError, tmp: Path) -> CacheError:
    """_NoRoomError (with the bytes written so far) when the file system is full, else CacheError."""
    if exc.errno in (ENOSPC, EDQUOT):
        try:
            written = tmp.stat().st_size
        except OSError:
            written = 0
        return _NoRoomError(message, written)
    return CacheError(message)


def _disk_usage(path: Path) -> tuple[int, int]:
    """``(free, total)`` bytes of the file system holding ``path`` (free: what an unprivileged user may use)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _check_private(path: Path, *, follow: bool) -> None:
    """ConfigError unless ``path`` is a directory of this user that group and others cannot write."""
    st = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"cache directory {path} is not a directory (a symbolic link?); remove it")
    problem = None
    if st.st_uid != os.geteuid():
        problem = f"belongs to user id {st.st_uid}, not to you"
    elif st.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem is not None:
        raise ConfigError(
            f"cache directory {path} {problem}: files planted there would be served as instances. "
            f"Use a directory of your own (mkdir -m 700), make it private (chmod 700 {path}), "
            "or choose another with --cache-dir"
        )


@dataclass(frozen=True)
class CollectionUsage:
    """The cached bytes and entries of one collection (None: entries whose collection is not recorded)."""

    collection: str | None
    pinned_bytes: int
    unpinned_bytes: int
    pinned_entries: int
    unpinned_entries: int


@dataclass(frozen=True)
class CacheInfo:
    """A snapshot of a cache: sizes in bytes; ``max_bytes`` is None if no bound was ever recorded.

    ``collections``: per-collection figures, sorted by name, the entries without a recorded collection last.
    """

    directory: Path
    max_bytes: int | None
    total_bytes: int
    entries: int
    hits: int
    misses: int
    pinned_bytes: int = 0
    pinned_entries: int = 0
    collections: tuple[CollectionUsage, ...] = ()


def entry_name(key: str) -> str:
    """The file name of ``key``'s entry (no directory): escaped, reversible by :func:`key_from_name`."""
    escaped = quote(key, safe="")
    if not escaped or len(escaped) > MAX_NAME:
        escaped = "%h" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return escaped + SUFFIX


def key_from_name(name: str) -> str | None:
    """The key of entry file ``name``, or None if it is not reversible (a hashed long key) or not an entry."""
    if not name.endswith(SUFFIX) or name.startswith("%h"):
        return None
    return unquote(name[: -len(SUFFIX)], errors="surrogatepass")


def _shard(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:2]


class InstanceCache:
    """LRU-by-bytes cache of immutable files keyed by SOPInstanceUID, safe for many threads and processes.

    ``max_bytes`` is the bound this process enforces after each of its fetches (None: no eviction, for
    inspecting a cache; the last bound a process set is recorded in the index and shown by :meth:`info`).
    ``min_free``: bytes to keep free on the cache's file system (None: the default floor); ``disk_usage``:
    ``(free, total)`` bytes of the file system holding a path (for tests; default ``os.statvfs``).
    ``wait_timeout`` is how long (seconds) a fetch waits for another thread's or process's download of the
    same key before giving up with RequestTimeoutError; ``claim_wait`` how long it waits for a key claimed
    by :meth:`claim` before downloading it itself. ``flush_interval``: seconds between writes of recorded
    accesses to the index. ``clock``: the time source of access times (seconds since the epoch).
    Raises ConfigError if the directory cannot be set up, CacheError if its contents cannot be checked (see
    :meth:`reconcile`).
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int | None,
        *,
        wait_timeout: float = FLIGHT_WAIT,
        flush_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        min_free: int | None = None,
        disk_usage: Callable[[Path], tuple[int, int]] | None = None,
        claim_wait: float = CLAIM_WAIT,
    ) -> None:
        self.directory = Path(directory).expanduser().absolute()
        self.claim_wait = claim_wait
        self._claims: dict[str, Future[Path | None]] = {}
        self._claims_lock = threading.Lock()
        self._paths: dict[str, Path] = {}
        self._pending_rows: list[tuple[str, int, float, str | None]] = []
        self._commit_timer: threading.Timer | None = None
        self.max_bytes = max_bytes
        self._min_free = min_free
        self._disk_usage = disk_usage or _disk_usage
        self._spill = self.directory / SPILL_DIR
        self._spilled: list[tuple[float, Path]] = []
        self._spill_lock = threading.Lock()
        self._clock = clock
        self._wait_timeout = wait_timeout
        self._flush_interval = flush_interval
        self._data = self.directory / DATA_DIR
        self._locks = self.directory / LOCK_DIR
        self._db_lock = threading.Lock()  # one sqlite connection, used by one thread at a time
        self._flights: SingleFlight[str, Path] = SingleFlight("download")
        self._pending_lock = threading.Lock()
        self._pending_atime: dict[str, float] = {}
        self._pending_hits: dict[str, int] = {}
        self._pending_total_hits = 0
        self._timer: threading.Timer | None = None
        self._closed = False
        try:
            self._make_dirs()
            self._conn = self._connect()
            if max_bytes is not None:
                with self._transaction() as conn:
                    conn.execute(
                        "INSERT OR REPLACE INTO meta(name, value) VALUES ('max_bytes', ?)", (max_bytes,)
                    )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot use cache directory {self.directory}: {exc}") from exc
        self.reconcile()

    # ----------------------------------------------------------------------------------------------- set-up

    def _make_dirs(self) -> None:
        for path in (self.directory, self._data, self._locks, self._spill):
            try:
                path.mkdir(mode=0o700, parents=path is self.directory)
            except FileExistsError:
                if not path.is_dir():
                    raise
                _check_private(path, follow=path is self.directory)
                continue
            os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask

    def _connect(self) -> sqlite3.Connection:
        index = self.directory / INDEX_NAME
        # Create the file ourselves so it is 0600; sqlite gives its -wal and -shm files the same mode.
        os.close(os.open(index, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(index, timeout=60.0, isolation_level=None, check_same_thread=False)
        deadline = time.monotonic() + 60.0
        while True:
            # Switching to WAL can answer SQLITE_BUSY without calling the busy handler while another process
            # is creating the database, so retry by hand.
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn
        with self._transaction() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, size INTEGER NOT NULL,"
                " atime REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,"
                " pinned INTEGER NOT NULL DEFAULT 0, collection TEXT)"
            )
            c.execute("CREATE INDEX IF NOT EXISTS entries_atime ON entries(atime)")
            c.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)")
            c.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('hits', 0), ('misses', 0)")
            c.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self._migrate(c)
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring an index written by an older nbiafs to ``SCHEMA_VERSION`` (inside the caller's transaction).

        Schema 1 -> 2: the ``pinned`` (0: may be evicted) and ``collection`` (NULL: not recorded) columns.
        Older processes still sharing the cache keep working: they name their columns, and the new ones
        have defaults (they do not honour pins, though).
        """
        columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
        if "pinned" not in columns:
            conn.execute("ALTER TABLE entries ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")
        if "collection" not in columns:
            conn.execute("ALTER TABLE entries ADD COLUMN collection TEXT")
        conn.execute(
            "UPDATE meta SET value = ? WHERE name = 'schema' AND value < ?", (SCHEMA_VERSION, SCHEMA_VERSION)
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: holds this process's connection and sqlite's write lock (across processes)."""
        with self._db_lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Write pending access times and hits to the index and close it. The files stay (spilled ones go)."""
        if self._closed:
            return
        self._drop_spilled(everything=True)
        with self._pending_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._commit_timer is not None:
                self._commit_timer.cancel()
                self._commit_timer = None
        self.flush()
        with self._db_lock:
            self._closed = True
            self._conn.close()

    def __enter__(self) -> InstanceCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ hot path

    def path_for(self, key: str) -> Path:
        """Where ``key``'s entry lives when cached (whether or not it is)."""
        path = self._paths.get(key)
        if path is None:
            if len(self._paths) >= PATHS_REMEMBERED:
                self._paths.clear()
            path = self._paths[key] = self._data / _shard(key) / entry_name(key)
        return path

    def peek(self, key: str) -> int | None:
        """Size in bytes of ``key``'s entry if cached, else None. Touches nothing, counts nothing."""
        try:
            st = os.stat(self.path_for(key))
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def get(self, key: str) -> Path | None:
        """The cached file of ``key`` (its access time updated, a hit counted), or None (nothing counted).

        The path stays valid until an eviction or clear removes it (a file already opened stays readable).
        """
        path = self.path_for(key)
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        self._touch(key)
        return path

    def _touch(self, key: str) -> None:
        with self._pending_lock:
            self._pending_atime[key] = self._clock()
            self._pending_hits[key] = self._pending_hits.get(key, 0) + 1
            self._pending_total_hits += 1
            if self._timer is None and not self._closed:
                self._timer = threading.Timer(self._flush_interval, self._timer_flush)
                self._timer.daemon = True
                self._timer.name = "nbiafs-cache-flush"
                self._timer.start()

    def _timer_flush(self) -> None:
        with self._pending_lock:
            self._timer = None
        try:
            self.flush()
        except Exception:  # a background thread has nobody to raise to
            log.warning("could not write cache access times to %s", self.directory, exc_info=True)

    def flush(self) -> None:
        """Write the rows of new entries, and the access times and hits recorded in memory since the last
        flush, to the index (evicting down to ``max_bytes``)."""
        with self._pending_lock:
            rows = self._pending_rows
            self._pending_rows = []
            if not self._pending_atime and not self._pending_total_hits and not rows:
                return
            atimes, hits, total = self._pending_atime, self._pending_hits, self._pending_total_hits
            self._pending_atime, self._pending_hits, self._pending_total_hits = {}, {}, 0
        if self._closed:
            return
        try:
            with self._transaction() as conn:
                self._apply_touches(conn, atimes, hits, total)
                if rows:
                    self._insert_rows(conn, rows)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot update cache index in {self.directory}: {exc}") from exc

    def _commit_timer_fired(self) -> None:
        with self._pending_lock:
            self._commit_timer = None
        try:
            self.flush()
        except Exception:  # a background thread has nobody to raise to; reconcile adopts the files later
            log.warning("could not index new cache entries in %s", self.directory, exc_info=True)

    def _insert_rows(self, conn: sqlite3.Connection, rows: list[tuple[str, int, float, str | None]]) -> None:
        """Index entries renamed into place since the last batch; count their misses; evict to the bound.

        A row there already (adopted, or pinned by another process meanwhile) keeps its pin."""
        added = 0
        for key, size, now, collection in rows:
            if not os.path.isfile(self.path_for(key)):
                continue  # cleared or evicted by another process meanwhile
            conn.execute(
                "INSERT INTO entries(key, size, atime, hits, created, collection) VALUES (?, ?, ?, 0, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET size = excluded.size, atime = max(atime, excluded.atime),"
                " collection = coalesce(excluded.collection, collection)",
                (key, size, now, now, collection),
            )
            added += 1
        conn.execute("UPDATE meta SET value = value + ? WHERE name = 'misses'", (added,))
        if self.max_bytes is not None:
            self._evict(conn, keep=rows[-1][0], bound=self.max_bytes)

    def _apply_touches(
        self, conn: sqlite3.Connection, atimes: dict[str, float], hits: dict[str, int], total: int
    ) -> None:
        for key, atime in atimes.items():
            cur = conn.execute(
                "UPDATE entries SET atime = max(atime, ?), hits = hits + ? WHERE key = ?",
                (atime, hits.get(key, 0), key),
            )
            if cur.rowcount == 0:
                # A file the index does not know (a process died between rename and commit): adopt it.
                size = self.peek(key)
                if size is not None:
                    conn.execute(
                        "INSERT INTO entries(key, size, atime, hits, created) VALUES (?, ?, ?, ?, ?)",
                        (key, size, atime, hits.get(key, 0), atime),
                    )
        conn.execute("UPDATE meta SET value = value + ? WHERE name = 'hits'", (total,))

    def _take_pending(self) -> tuple[dict[str, float], dict[str, int], int]:
        with self._pending_lock:
            taken = self._pending_atime, self._pending_hits, self._pending_total_hits
            self._pending_atime, self._pending_hits, self._pending_total_hits = {}, {}, 0
        return taken

    # --------------------------------------------------------------------------------------------- fetch

    def fetch(
        self,
        key: str,
        download: Callable[[BinaryIO], int],
        *,
        expected: int = 0,
        check: Check | None = None,
        collection: str | None = None,
    ) -> Path:
        """The cached file of ``key``, calling ``download(out)`` to write it first if it is not cached.

        ``expected``: the size the download probably has (room is made for it first); ``check(path)`` must
        accept the finished download (whatever it raises is raised; the file is removed, never cached);
        ``collection``: recorded with a new entry (for :meth:`info`'s per-collection figures).

        One download per key at a time across threads and processes; the others wait (at most
        ``wait_timeout`` seconds, then RequestTimeoutError) and share its result or its error. Whatever
        ``download`` raises is raised unchanged (an OSError, e.g. from writing to ``out``, as CacheError) and
        leaves no file behind; CacheError if the disk fails, NoSpaceError (a CacheError) if it is full.
        Afterwards least recently used entries are evicted until the cache is within ``max_bytes``. A file
        larger than ``max_bytes`` is not cached: the path returned is in spill/, removed ``SPILL_KEEP``
        seconds later, so the caller must open it at once.
        """
        path = self.get(key)
        if path is not None:
            return path
        claimed = self._wait_for_claim(key)
        if claimed is not None:
            return claimed
        led = False

        def lead() -> Path:
            nonlocal led
            led = True
            return self._fetch_as_leader(key, download, expected, check, collection)

        path = self._flights.run(key, lead, self._wait_timeout)
        if not led:
            self._touch(key)  # another thread's download served this one: a hit
        return path

    def _wait_for_claim(self, key: str) -> Path | None:
        """The file of ``key`` once the fetch that claimed it delivers it; None when it is not claimed, or
        the claim ends without it, or ``claim_wait`` passes first."""
        with self._claims_lock:
            waiting = self._claims.get(key)
        if waiting is None:
            return None
        try:
            got = waiting.result(timeout=self.claim_wait)
        except FutureTimeoutError:
            log.debug("%s: its claim did not deliver within %g s; fetching it directly", key, self.claim_wait)
            return None
        if got is None:
            return self.get(key)
        self._touch(key)
        return got

    def claim(self, keys: Iterable[str]) -> Claim:
        """Announce that the caller is about to bring ``keys`` (e.g. a series ZIP): until the claim delivers
        or releases a key, a :meth:`fetch` of it waits (at most ``claim_wait`` seconds) instead of
        downloading it. Keys cached or claimed already are left out. Always release the claim."""
        taken: dict[str, Future[Path | None]] = {}
        with self._claims_lock:
            for key in keys:
                if key in self._claims or key in taken or self.peek(key) is not None:
                    continue
                taken[key] = self._claims[key] = Future()
        return Claim(self, taken)

    def _end_claim(self, key: str, waiting: Future[Path | None], path: Path | None) -> None:
        with self._claims_lock:
            if self._claims.get(key) is waiting:
                del self._claims[key]
        if not waiting.done():
            waiting.set_result(path)

    def store(
        self,
        key: str,
        write: Callable[[BinaryIO], int],
        *,
        expected: int = 0,
        check: Check | None = None,
        collection: str | None = None,
    ) -> Path | None:
        """File ``key`` from ``write(out)`` (checked like a download) unless someone is downloading it now.

        Returns the file (cached already, or just written), or None when another thread or process holds
        the key's download (it will bring the file). Raises what :meth:`fetch` raises, ``check``'s error
        included (nothing is cached then).
        """
        final = self.path_for(key)
        if os.path.isfile(final):
            return final
        name = final.name
        self._drop_spilled()
        try:
            lock_fd = self._lock_key(name, blocking=False)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _disk_error(f"cannot lock {name} in {self._locks}: {exc}", exc) from exc
        try:
            if os.path.isfile(final):
                return final
            self._make_room(expected)
            return self._download(key, final, write, check, collection, sweep=False)
        finally:
            self._unlock_key(name, lock_fd)

    def _fetch_as_leader(
        self,
        key: str,
        download: Callable[[BinaryIO], int],
        expected: int,
        check: Check | None,
        collection: str | None = None,
    ) -> Path:
        final = self.path_for(key)
        name = final.name
        self._drop_spilled()
        try:
            lock_fd = self._lock_key(name)
        except OSError as exc:
            raise _disk_error(f"cannot lock {name} in {self._locks}: {exc}", exc) from exc
        try:
            if os.path.isfile(final):  # another process downloaded it while we waited for the lock
                self._touch(key)
                return final
            self._make_room(expected)
            try:
                return self._download(key, final, download, check, collection)
            except _NoRoomError as full:
                # The file system filled up under us: evict what the download needed, and try once more.
                needed = max(expected, full.written, 1)
                if self._evict_bytes(needed) < needed:
                    raise NoSpaceError(f"{full.message}; nothing left in the cache to evict") from None
                log.info("cache disk full while writing %s; evicted %d bytes, downloading again", key, needed)
                return self._download(key, final, download, check, collection)
        finally:
            self._unlock_key(name, lock_fd)

    def _download(
        self,
        key: str,
        final: Path,
        download: Callable[[BinaryIO], int],
        check: Check | None,
        collection: str | None = None,
        *,
        sweep: bool = True,
    ) -> Path:
        """One download into the key's ``.part`` file (the caller holds the key's lock), checked, then renamed
        into place (or into spill/). ``sweep``: remove the key's other ``.part`` files first (a dead process's;
        a listing of the shard, so not done for the members of a series ZIP)."""
        tmp = final.with_name(final.name + PART_TAG + PART_SUFFIX)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if sweep:
                final.parent.mkdir(mode=0o700, exist_ok=True)
                self._remove_stale_parts(final)  # we hold the key's lock: any .part of it is a dead process's
            try:
                fd = os.open(tmp, flags, 0o600)
            except FileNotFoundError:  # the shard's first entry
                final.parent.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(tmp, flags, 0o600)
        except OSError as exc:
            raise _disk_error(f"cannot write to {final.parent}: {exc}", exc) from exc
        done = False
        try:
            out = os.fdopen(fd, "wb")
            try:
                written = download(out)  # whatever it raises goes to the caller unchanged
                out.flush()  # no fsync: see the module's docstring (Crashes)
                size = os.fstat(out.fileno()).st_size
                out.close()
            except OSError as exc:
                raise _write_error(f"cannot write {tmp}: {exc}", exc, tmp) from exc
            finally:
                with contextlib.suppress(OSError):
                    out.close()
            if written != size:
                log.warning("download of %s reported %d bytes but wrote %d", key, written, size)
            if check is not None:
                try:
                    check(tmp)
                except Exception as exc:
                    log.warning("download of %s refused, not cached: %s", key, exc)
                    raise
            if self.max_bytes is not None and size > self.max_bytes:
                spilled = self._spill_file(key, tmp, size)
                done = True
                return spilled
            try:
                self._place(key, tmp, final, size, collection)
            except OSError as exc:
                raise _write_error(f"cannot cache {key}: {exc}", exc, tmp) from exc
            except sqlite3.Error as exc:
                raise CacheError(f"cannot update the cache index for {key}: {exc}") from exc
            done = True
        finally:
            if not done:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        log.debug("cached %s (%d bytes)", key, size)
        return final

    # ------------------------------------------------------------------------------------------- space

    def free_floor(self) -> int:
        """Bytes kept free on the cache's file system."""
        if self._min_free is not None:
            return self._min_free
        _free, total = self._disk_usage(self.directory)
        return min(int(total * FREE_FLOOR_FRACTION), FREE_FLOOR_BYTES)

    def _make_room(self, expected: int) -> None:
        """Evict until ``expected`` more bytes leave the free-space floor intact; NoSpaceError if impossible."""
        try:
            free, _total = self._disk_usage(self.directory)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.directory, exc)
            return
        floor = self.free_floor()
        need = floor + max(0, expected) - free
        if need <= 0:
            return
        freed = self._evict_bytes(need)
        if freed < need:
            raise NoSpaceError(
                f"the cache's file system has {format_size(free + freed)} free, and keeps "
                f"{format_size(floor)} free (its floor); nothing left in {self.directory} to evict"
            )
        log.info("evicted %s to keep the cache's file system %s free", format_size(freed), format_size(floor))

    def _evict_bytes(self, nbytes: int) -> int:
        """Evict least recently used entries totalling at least ``nbytes`` if there are that many; returns
        the bytes evicted."""
        self.flush()  # new entries become candidates too
        atimes, hits, total = self._take_pending()
        freed = 0
        try:
            with self._transaction() as conn:
                self._apply_touches(conn, atimes, hits, total)
                while freed < nbytes:
                    rows = conn.execute(
                        "SELECT key, size FROM entries WHERE pinned = 0 ORDER BY atime LIMIT 64"
                    ).fetchall()
                    if not rows:
                        break
                    for key, size in rows:
                        if freed >= nbytes:
                            break
                        conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                        self._unlink(self.path_for(key))
                        freed += size
                        log.debug("evicted %s (%d bytes) for space", key, size)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot update the cache index in {self.directory}: {exc}") from exc
        return freed

    def _spill_file(self, key: str, tmp: Path, size: int) -> Path:
        """Move a download larger than the cache bound to spill/, to be removed after ``SPILL_KEEP`` s."""
        fd, name = tempfile.mkstemp(suffix=SPILL_SUFFIX, dir=self._spill)
        os.close(fd)
        spilled = Path(name)
        os.replace(tmp, spilled)
        with self._spill_lock:
            self._spilled.append((time.monotonic(), spilled))
        log.info(
            "%s (%s) is larger than the cache (%s): served, not kept",
            key,
            format_size(size),
            format_size(self.max_bytes or 0),
        )
        return spilled

    def _drop_spilled(self, everything: bool = False) -> None:
        if not self._spilled:
            return
        cutoff = time.monotonic() - SPILL_KEEP
        with self._spill_lock:
            old = [p for t, p in self._spilled if everything or t < cutoff]
            self._spilled = [(t, p) for t, p in self._spilled if not (everything or t < cutoff)]
        for path in old:
            self._unlink(path)

    def _place(self, key: str, tmp: Path, final: Path, size: int, collection: str | None = None) -> None:
        """Rename the finished download into place now; its row follows in the next batch commit."""
        os.replace(tmp, final)
        with self._pending_lock:
            self._pending_rows.append((key, size, self._clock(), collection))
            now = len(self._pending_rows) >= COMMIT_BATCH
            if not now and self._commit_timer is None and not self._closed:
                self._commit_timer = threading.Timer(COMMIT_INTERVAL, self._commit_timer_fired)
                self._commit_timer.daemon = True
                self._commit_timer.name = "nbiafs-cache-commit"
                self._commit_timer.start()
        if now:
            self.flush()

    def _evict(self, conn: sqlite3.Connection, *, keep: str, bound: int) -> None:
        (total,) = conn.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()
        while total > bound:
            rows = conn.execute(
                "SELECT key, size FROM entries WHERE key != ? AND pinned = 0 ORDER BY atime LIMIT 64", (keep,)
            ).fetchall()
            if not rows:
                break  # only ``keep`` and pinned entries are left, and they exceed the bound
            for key, size in rows:
                if total <= bound:
                    break
                conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                self._unlink(self.path_for(key))
                total -= size
                log.debug("evicted %s (%d bytes)", key, size)

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cached file %s: %s", path, exc)

    def _remove_stale_parts(self, final: Path) -> None:
        prefix = final.name + "."
        with os.scandir(final.parent) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.name.endswith(PART_SUFFIX):
                    log.info("removing stale partial download %s", entry.path)
                    self._unlink(Path(entry.path))

    # --------------------------------------------------------------------------------------------- locks

    def _lock_key(self, name: str, *, blocking: bool = True) -> int:
        """Take the per-key lock file (exclusive flock) and return its fd; RequestTimeoutError after a wait.

        Lock files are removed by their holder on release, so the file we locked may have been unlinked
        meanwhile; the usual check (the path still names the inode we locked) makes that safe.
        Raises BlockingIOError at once when ``blocking`` is false and someone holds it.
        """
        path = self._locks / (name + LOCK_SUFFIX)
        deadline = time.monotonic() + self._wait_timeout
        delay = 0.001
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                while True:
                    # Poll instead of a blocking flock so that the wait has a deadline.
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not blocking:
                            raise
                        if time.monotonic() > deadline:
                            raise RequestTimeoutError(
                                f"timed out waiting for another process's download of {name}"
                            ) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
                held = os.fstat(fd)
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    now = None
                if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # locked a file its holder had already unlinked: try again

    def _unlock_key(self, name: str, fd: int) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._locks / (name + LOCK_SUFFIX))
        os.close(fd)

    # ------------------------------------------------------------------------------------ maintenance

    def info(self) -> CacheInfo:
        """Sizes and counters from the index (this process's pending accesses flushed first).

        CacheError if the index cannot be read.
        """
        self.flush()
        try:
            with self._db_lock:
                total, entries, pinned_bytes, pinned_entries = self._conn.execute(
                    "SELECT coalesce(sum(size), 0), count(*), coalesce(sum(size * (pinned != 0)), 0),"
                    " coalesce(sum(pinned != 0), 0) FROM entries"
                ).fetchone()
                meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
                per_collection = self._conn.execute(
                    "SELECT collection, coalesce(sum(size * (pinned != 0)), 0),"
                    " coalesce(sum(size * (pinned = 0)), 0), coalesce(sum(pinned != 0), 0),"
                    " coalesce(sum(pinned = 0), 0) FROM entries GROUP BY collection"
                    " ORDER BY collection IS NULL, collection"
                ).fetchall()
        except sqlite3.Error as exc:
            raise CacheError(f"cannot read the cache index in {self.directory}: {exc}") from exc
        return CacheInfo(
            directory=self.directory,
            max_bytes=self.max_bytes if self.max_bytes is not None else meta.get("max_bytes"),
            total_bytes=int(total),
            entries=int(entries),
            hits=int(meta.get("hits", 0)),
            misses=int(meta.get("misses", 0)),
            pinned_bytes=int(pinned_bytes),
            pinned_entries=int(pinned_entries),
            collections=tuple(
                CollectionUsage(name, int(pb), int(ub), int(pe), int(ue))
                for name, pb, ub, pe, ue in per_collection
            ),
        )

    # ------------------------------------------------------------------------------------------------ pins

    def pin(self, keys: Iterable[str], collection: str | None = None) -> set[str]:
        """Keep ``keys`` from eviction until :meth:`unpin` or :meth:`clear`; returns the keys pinned.

        A key is pinned only if its file is cached (a file another process placed but has not indexed yet is
        indexed now, its pin kept when that process's row arrives); the keys left out were not cached.
        ``collection`` is recorded for the entries that have none. CacheError if the index cannot be written.
        """
        return self._mark(keys, collection, pin=True)

    def label(self, keys: Iterable[str], collection: str) -> set[str]:
        """Record ``collection`` for the cached ``keys`` that have none (indexing files not indexed yet);
        returns the keys that are cached. CacheError if the index cannot be written."""
        return self._mark(keys, collection, pin=False)

    def _mark(self, keys: Iterable[str], collection: str | None, *, pin: bool) -> set[str]:
        self.flush()  # this process's own new entries have rows
        marked: set[str] = set()
        now = self._clock()
        try:
            with self._transaction() as conn:
                for key in keys:
                    size = self.peek(key)
                    if size is None:
                        continue
                    cur = conn.execute(
                        "UPDATE entries SET pinned = max(pinned, ?), collection = coalesce(collection, ?)"
                        " WHERE key = ?",
                        (int(pin), collection, key),
                    )
                    if cur.rowcount == 0:
                        conn.execute(
                            "INSERT INTO entries(key, size, atime, hits, created, pinned, collection)"
                            " VALUES (?, ?, ?, 0, ?, ?, ?)",
                            (key, size, now, now, int(pin), collection),
                        )
                    marked.add(key)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot update the cache index in {self.directory}: {exc}") from exc
        return marked

    def unpin(self, keys: Iterable[str]) -> int:
        """Let ``keys`` be evicted again; returns how many were pinned. CacheError if the index fails."""
        return self._unpin("key = ?", [(key,) for key in keys])

    def unpin_all(self, collection: str | None = None) -> int:
        """Unpin every entry (of ``collection`` only, if given); returns how many were pinned."""
        if collection is None:
            return self._unpin("1", [()])
        return self._unpin("collection = ?", [(collection,)])

    def _unpin(self, where: str, params: list[tuple[str, ...]]) -> int:
        count = 0
        try:
            with self._transaction() as conn:
                for values in params:
                    cur = conn.execute(f"UPDATE entries SET pinned = 0 WHERE pinned != 0 AND {where}", values)
                    count += max(cur.rowcount, 0)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot update the cache index in {self.directory}: {exc}") from exc
        return count

    def pinned(self, keys: Iterable[str] | None = None) -> dict[str, int]:
        """``{key: size}`` of the pinned entries (among ``keys``, if given). CacheError if the index fails."""
        self.flush()
        try:
            with self._db_lock:
                if keys is None:
                    rows = self._conn.execute("SELECT key, size FROM entries WHERE pinned != 0").fetchall()
                else:
                    rows = []
                    for key in keys:
                        rows.extend(
                            self._conn.execute(
                                "SELECT key, size FROM entries WHERE pinned != 0 AND key = ?", (key,)
                            ).fetchall()
                        )
        except sqlite3.Error as exc:
            raise CacheError(f"cannot read the cache index in {self.directory}: {exc}") from exc
        return {key: int(size) for key, size in rows}

    def clear(self) -> int:
        """Remove every entry and reset the counters; returns how many files were removed.

        Safe while mounted: files already open stay readable (unlinked, not truncated); later gets miss.
        Downloads in progress finish and are cached afterwards.
        """
        self._take_pending()
        with self._pending_lock:
            self._pending_rows = []
        removed = 0
        try:
            with self._transaction() as conn:
                conn.execute("DELETE FROM entries")
                conn.execute("UPDATE meta SET value = 0 WHERE name IN ('hits', 'misses')")
                for path in self._entry_files():
                    self._unlink(path)
                    removed += 1
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot clear cache {self.directory}: {exc}") from exc
        log.info("cleared %d entries from %s", removed, self.directory)
        return removed

    def _entry_files(self) -> Iterator[Path]:
        """Every finished entry file under data/ (not partial downloads)."""
        with os.scandir(self._data) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                            yield Path(entry.path)

    def reconcile(self) -> None:
        """Make the index agree with the disk (done on start-up; O(entries), for maintenance, not hot paths).

        Forgets entries whose file vanished, removes files whose size is not the one indexed (cut by a power
        loss: instances never change), adopts entry files the index lacks if they are complete DICOM files (a
        process died between rename and commit), removes partial downloads and lock files of dead processes.
        """
        try:
            self.flush()  # this process's new entries are indexed, not adopted
            self._remove_stale_files()
            with self._transaction() as conn:
                indexed = {key: size for key, size in conn.execute("SELECT key, size FROM entries")}
                # Hashed long keys cannot be read back from their file names: map them by their rows.
                hashed = {self.path_for(k): k for k in indexed if key_from_name(entry_name(k)) is None}
                on_disk: dict[str, tuple[int, float]] = {}
                for path in self._entry_files():
                    key = key_from_name(path.name)
                    if key is None or self.path_for(key) != path:
                        key = hashed.get(path)
                    if key is None:
                        log.info("removing unknown file %s from the cache", path)
                        self._unlink(path)
                        continue
                    st = path.stat()
                    on_disk[key] = (st.st_size, st.st_mtime)
                for key, size in indexed.items():
                    if key not in on_disk:
                        log.info("cache entry %s vanished from disk; forgetting it", key)
                        conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                    elif on_disk[key][0] != size:
                        # Instances never change: another size is a file cut by a power loss.
                        log.warning("cache entry %s is not the size indexed; removing it", key)
                        conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                        self._unlink(self.path_for(key))
                        del on_disk[key]
                for key, (size, mtime) in on_disk.items():
                    if key not in indexed:
                        try:
                            check_complete(self.path_for(key))
                        except BadResponseError as exc:
                            log.warning("unindexed cache file for %s is damaged (%s); removing it", key, exc)
                            self._unlink(self.path_for(key))
                            continue
                        log.info("adopting unindexed cache file for %s", key)
                        conn.execute(
                            "INSERT INTO entries(key, size, atime, hits, created) VALUES (?, ?, ?, 0, ?)",
                            (key, size, mtime, mtime),
                        )
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot check cache {self.directory}: {exc}") from exc

    def _remove_stale_files(self) -> None:
        """Remove partial downloads and lock files nobody holds a lock on (left by crashed processes), and
        spilled files older than ``SPILL_KEEP``."""
        cutoff = time.time() - SPILL_KEEP
        with os.scandir(self._spill) as spilled:
            for entry in spilled:
                if entry.name.endswith(SPILL_SUFFIX) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    self._unlink(Path(entry.path))
        parts: list[Path] = []
        with os.scandir(self._data) as shards:
            for shard in shards:
                if shard.is_dir(follow_symlinks=False):
                    with os.scandir(shard.path) as entries:
                        parts.extend(Path(e.path) for e in entries if e.name.endswith(PART_SUFFIX))
        for part in parts:
            name = part.name[: -len(PART_SUFFIX)].rsplit(".", 1)[0]  # strip PART_TAG (or a random tag)
            try:
                fd = self._lock_key(name, blocking=False)
            except BlockingIOError:
                continue  # somebody is downloading it right now
            try:
                log.info("removing stale partial download %s", part)
                self._unlink(part)
            finally:
                self._unlock_key(name, fd)
        with os.scandir(self._locks) as locks:
            names = [e.name[: -len(LOCK_SUFFIX)] for e in locks if e.name.endswith(LOCK_SUFFIX)]
        for name in names:
            try:
                fd = self._lock_key(name, blocking=False)
            except BlockingIOError:
                continue
            self._unlock_key(name, fd)  # unlinks it


class Claim:
    """Keys an :meth:`InstanceCache.claim` caller promised to bring; fetches of them wait for it. A context
    manager: leaving it releases what was not delivered."""

    def __init__(self, cache: InstanceCache, waiting: dict[str, Future[Path | None]]) -> None:
        self._cache = cache
        self._waiting = waiting
        self._lock = threading.Lock()

    @property
    def keys(self) -> frozenset[str]:
        """The keys still claimed (not yet delivered or released)."""
        with self._lock:
            return frozenset(self._waiting)

    def deliver(self, key: str, path: Path) -> None:
        """``key`` is cached at ``path``: wake its waiters."""
        self._end(key, path)

    def release(self, keys: Iterable[str] | None = None) -> None:
        """Give up ``keys`` (None: every key left): their waiters download them themselves."""
        with self._lock:
            chosen = list(self._waiting) if keys is None else list(keys)
        for key in chosen:
            self._end(key, None)

    def _end(self, key: str, path: Path | None) -> None:
        with self._lock:
            waiting = self._waiting.pop(key, None)
        if waiting is not None:
            self._cache._end_claim(key, waiting, path)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

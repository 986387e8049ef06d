"""``nbiafs prefetch PATH...``: bring everything below paths of a mounted nbiafs into its disk cache.

How. Prefetch reads the files THROUGH the mount, so it uses the mount's own fetch strategy and never fetches
anything itself: each series' files are read in listing order by one worker (the sequential opens of a series
start the mount's read-ahead, or its one-ZIP-per-series fetch for series of small instances), ``--jobs``
series at a time. First the paths are walked (listings only: ``stat`` and the ``user.nbiafs.*`` extended
attributes of :meth:`~nbiafs.fs.tree.ArchiveTree.xattrs`, which never download an image); files the cache holds
already (``user.nbiafs.cached`` is ``1``) are skipped, so running it again resumes where it stopped.

Progress goes to stderr: a tqdm bar on a terminal, else one plain line every ``--progress-interval`` seconds
(series and files done, bytes of the expected total, rate, ETA). The expected total is the sum of the files'
sizes as the mount shows them (exact for cached files, else the series' FileSize / ImageCount).

``--pin`` pins what it fetched (and what was cached already) in the cache's index
(:meth:`~nbiafs.fs.instance_cache.InstanceCache.pin`), found through the mount root's ``user.nbiafs.cache_dir``;
pinned entries are never evicted until ``nbiafs cache unpin`` or ``nbiafs cache clear``. A pin that would not
fit (bytes pinned already plus the bytes to pin above the cache's bound) is refused before any download.

``--manifest FILE.tcia`` / ``--cart NAME`` (with ``--mountpoint MP``) prefetch the series they list: each series'
collection, patient and study come from the server (getSeries / getContentsByName, with the server options of
``nbiafs mount``; use the same server and account as the mount) and its directory is found in the mount by
the directories' ``user.nbia.*`` UIDs.

Integrity is the mount's, since every byte comes through it: an instance enters the cache only once the mount
has checked it (the complete DICOM instance asked for; ZIP members' CRCs; MD5s where the mount asks the server
for them, see :mod:`nbiafs.fs.series_zip`); prefetch adds no download path and no check of its own.

Exit status 0 when everything was fetched (and pinned, with ``--pin``), 1 otherwise, with a summary on stderr
(failures counted by errno, and the first few paths).
"""

from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from nbiafs.api.manifest import load_manifest
from nbiafs.api.records import Series
from nbiafs.cli.logs import add_logging_options
from nbiafs.cli.options import add_server_options, client_from_args, positive
from nbiafs.errors import ConfigError, NbiaError
from nbiafs.fs import names
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fuse import mounttable
from nbiafs.settings import format_size

log = logging.getLogger(__name__)

XATTR_CACHE_DIR = "user.nbiafs.cache_dir"
XATTR_CACHE_MAX = "user.nbiafs.cache_max_bytes"
XATTR_KEY = "user.nbiafs.key"
XATTR_CACHED = "user.nbiafs.cached"
XATTR_COLLECTION = "user.nbia.Collection"

DEFAULT_JOBS = 4
"""Series read at once (each by one worker, its files in listing order)."""
SCAN_THREADS = 8
"""Directories listed at once while walking the paths (listings only, through the mount)."""
PROGRESS_INTERVAL = 5.0
"""Seconds between plain progress lines when stderr is not a terminal."""
PIN_BATCH = 32
"""Files read between two pins of a series' files (so the newest are pinned before the mount evicts them)."""
READ_CHUNK = 1 << 20
SHOWN_FAILURES = 5
"""Paths of failures listed in the summary."""
NOT_KEPT = "not kept"
"""The failure of a file read but not in the cache afterwards (evicted meanwhile, or larger than the cache)."""


# ------------------------------------------------------------------------------------------- the command


def register(subparsers: Any) -> None:
    """Add ``prefetch``."""
    parser = subparsers.add_parser(
        "prefetch",
        help="fetch everything below paths of a mounted nbiafs into its cache (with progress; --pin keeps it)",
        description="Fetch every file below PATH (directories or files inside a mounted nbiafs) into the "
        "mount's disk cache, by reading them through the mount (its read-ahead and per-series ZIP fetches "
        "apply). Files cached already are skipped: running it again resumes. With --manifest or --cart, "
        "the series they list are fetched from the mount at --mountpoint.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="a directory or file inside an nbiafs mount")
    parser.add_argument(
        "--manifest", metavar="FILE.tcia", help="fetch the series of a Data Retriever manifest"
    )
    parser.add_argument("--cart", metavar="NAME", help="fetch the series of a shared cart")
    parser.add_argument(
        "--mountpoint", metavar="MP", help="the nbiafs mount to fetch --manifest or --cart series through"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="keep what is fetched from eviction until 'nbiafs cache unpin PATH' or 'nbiafs cache clear'",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=positive(int),
        default=DEFAULT_JOBS,
        metavar="N",
        help="series fetched at once (default: %(default)s)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=PROGRESS_INTERVAL,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default: %(default)s)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress, only the summary")
    add_server_options(parser)
    add_logging_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The ``prefetch`` command; returns its exit status (0: everything fetched, 1: not)."""
    if args.manifest and args.cart:
        raise ConfigError("give --manifest or --cart, not both")
    listed = bool(args.manifest or args.cart)
    if listed and not args.mountpoint:
        raise ConfigError("--manifest and --cart need --mountpoint (the nbiafs mount to fetch through)")
    if not listed and not args.paths:
        raise ConfigError("nothing to prefetch: give PATH inside an nbiafs mount, or --manifest/--cart")
    failures = Failures()
    mountpoint = mount_of([args.mountpoint] if listed else args.paths)
    paths = [os.path.abspath(p) for p in args.paths]
    if listed:
        paths += series_directories(args, mountpoint, failures)
    jobs = walk(paths, mountpoint, failures)
    stream = sys.stderr
    cache_dir, bound = mount_cache(mountpoint)
    cache = InstanceCache(cache_dir, None) if cache_dir is not None else None
    try:
        if args.pin and cache is None:
            raise ConfigError(f"{mountpoint} does not say where its cache is (an older nbiafs?): cannot pin")
        if args.pin and cache is not None:
            refusal = pin_refusal(cache, jobs, bound if bound is not None else cache.info().max_bytes)
            if refusal is not None:
                print(f"nbiafs prefetch: {refusal}", file=stream)
                return 1
        fetcher = Fetcher(jobs, cache, failures, pin=args.pin)
        progress = Progress(
            fetcher.totals(),
            stream=stream,
            tty=stream.isatty(),
            interval=args.progress_interval,
            quiet=args.quiet,
        )
        with progress:
            fetcher.run(args.jobs, progress)
        print(summary(fetcher, failures, pin=args.pin), file=stream)
    finally:
        if cache is not None:
            cache.close()
    return 1 if failures.count else 0


# --------------------------------------------------------------------------------------------- the mount


def mount_of(paths: Sequence[str]) -> str:
    """The mountpoint of the one nbiafs mount that holds every path; ConfigError otherwise."""
    try:
        mounts = [e.mountpoint for e in mounttable.entries() if e.fstype == mounttable.FSTYPE]
    except OSError as exc:
        raise ConfigError(f"cannot read the mount table: {exc}") from exc
    found: set[str] = set()
    for path in paths:
        mountpoint = _containing(os.path.abspath(path), mounts)
        if mountpoint is None:
            mountpoint = _containing(os.path.realpath(path), mounts)
        if mountpoint is None:
            raise ConfigError(f"{path} is not inside an nbiafs mount")
        found.add(mountpoint)
    if len(found) > 1:
        raise ConfigError(
            f"the paths are in different nbiafs mounts ({', '.join(sorted(found))}): one at a time"
        )
    return found.pop()


def _containing(path: str, mountpoints: Iterable[str]) -> str | None:
    best = None
    for mp in mountpoints:
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) > len(best)):
            best = mp
    return best


def _xattr(path: str, name: str) -> bytes | None:
    """The extended attribute, or None when the file has none of that name."""
    try:
        return os.getxattr(path, name)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def mount_cache(mountpoint: str) -> tuple[Path | None, int | None]:
    """The mount's cache directory and bound, from its root's ``user.nbiafs.*`` attributes (None if absent)."""
    directory = _xattr(mountpoint, XATTR_CACHE_DIR)
    bound = _xattr(mountpoint, XATTR_CACHE_MAX)
    return (
        Path(os.fsdecode(directory)) if directory else None,
        int(bound) if bound and bound.isdigit() else None,
    )


# ------------------------------------------------------------------------------------------ the walk


@dataclass
class File:
    """An instance file to fetch: its path in the mount, cache key, size as shown, and whether cached."""

    path: str
    key: str
    size: int
    cached: bool


@dataclass
class SeriesJob:
    """The files of one directory (a series), in listing order, read by one worker."""

    directory: str
    collection: str | None
    files: list[File] = field(default_factory=list)


class Failures:
    """What failed (thread-safe): counts by reason (an errno name) and the first paths with their reasons."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_reason: Counter[str] = Counter()
        self.first: list[tuple[str, str]] = []

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self.by_reason.values())

    def add(self, path: str, reason: str, detail: str = "") -> None:
        log.info("prefetch of %s failed: %s %s", path, reason, detail)
        with self._lock:
            self.by_reason[reason] += 1
            if len(self.first) < SHOWN_FAILURES:
                self.first.append((path, f"{reason}{': ' + detail if detail else ''}"))

    def add_os_error(self, path: str, exc: OSError) -> None:
        code = exc.errno or errno.EIO
        self.add(path, errno.errorcode.get(code, str(code)), os.strerror(code))


def walk(paths: Sequence[str], mountpoint: str, failures: Failures) -> list[SeriesJob]:
    """The series jobs below ``paths`` (directories walked, files taken as they are), in depth-first listing
    order; each file described by ``stat`` and its ``user.nbiafs.*`` attributes (no image is downloaded).
    Failures (a directory that cannot be listed) are recorded, and the rest is walked."""
    jobs: dict[str, SeriesJob] = {}
    collections: dict[str, str | None] = {}
    collections_lock = threading.Lock()
    seen: set[str] = set()

    def collection_of(directory: str) -> str | None:
        relative = os.path.relpath(directory, mountpoint)
        if relative in (".", "") or relative.startswith(".."):
            return None
        top = os.path.join(mountpoint, relative.split(os.sep, 1)[0])
        with collections_lock:
            if top in collections:
                return collections[top]
        try:
            value = _xattr(top, XATTR_COLLECTION)
        except OSError:
            value = None
        name = value.decode("utf-8", "replace") if value else None
        with collections_lock:
            collections[top] = name
        return name

    def describe(path: str) -> File | None:
        try:
            st = os.stat(path)
            key = _xattr(path, XATTR_KEY)
            cached = _xattr(path, XATTR_CACHED)
        except OSError as exc:
            failures.add_os_error(path, exc)
            return None
        if key is None:
            return None  # not an instance of an nbiafs mount
        return File(path, os.fsdecode(key), st.st_size, cached == b"1")

    def add_files(directory: str, files: Iterable[File]) -> None:
        for f in files:
            if f.key in seen:
                continue
            seen.add(f.key)
            job = jobs.get(directory)
            if job is None:
                job = jobs[directory] = SeriesJob(directory, collection_of(directory))
            job.files.append(f)

    def scan(directory: str) -> tuple[list[str], list[File]]:
        try:
            with os.scandir(directory) as it:
                entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        except OSError as exc:
            failures.add_os_error(directory, exc)
            return [], []
        subdirs = [os.path.join(directory, n) for n, is_dir in entries if is_dir]
        files = [describe(os.path.join(directory, n)) for n, is_dir in entries if not is_dir]
        return subdirs, [f for f in files if f is not None]

    frontier: list[str] = []
    for path in paths:
        try:
            is_dir = os.path.isdir(path)
        except OSError as exc:  # pragma: no cover - isdir swallows OSError
            failures.add_os_error(path, exc)
            continue
        if is_dir:
            frontier.append(path)
        elif os.path.lexists(path):
            described = describe(path)
            if described is not None:
                add_files(os.path.dirname(path), [described])
        else:
            failures.add(path, "ENOENT", "no such file or directory")
    with ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="nbiafs-scan") as pool:
        while frontier:
            results = list(pool.map(scan, frontier))
            following: list[str] = []
            for directory, (subdirs, files) in zip(frontier, results, strict=True):
                add_files(directory, files)
                following.extend(subdirs)
            frontier = following
    ordered = sorted(jobs.values(), key=lambda j: _components(j.directory))
    for job in ordered:
        job.files.sort(key=lambda f: os.path.basename(f.path))
    return ordered


def _components(path: str) -> tuple[str, ...]:
    """A path's components: sorting by them is the order of a depth-first walk with sorted listings."""
    return tuple(part for part in path.split(os.sep) if part)


# ------------------------------------------------------------------------------- manifests and carts


def series_directories(args: argparse.Namespace, mountpoint: str, failures: Failures) -> list[str]:
    """The directories in the mount of the series of ``--manifest`` or ``--cart``; series not found there are
    recorded as failures (ENOENT)."""
    with client_from_args(args) as client:
        if args.manifest:
            uids = list(load_manifest(args.manifest).series_instance_uids)
            if not uids:
                raise ConfigError(f"manifest {args.manifest} lists no series")
            rows: list[Series] = []
        else:
            rows = client.contents_by_name(args.cart)
            if not rows:
                raise ConfigError(f"cart {args.cart!r} is empty or unknown")
            uids = []
        complete = [r for r in rows if r.collection and r.patient_id and r.study_instance_uid]
        uids += [r.series_instance_uid for r in rows if r not in complete]

        def one(uid: str) -> Series | None:
            try:
                found = client.series(series_instance_uid=uid)
            except NbiaError as exc:
                failures.add(f"series {uid}", errno.errorcode.get(exc.errno, "EIO"), str(exc))
                return None
            if not found:
                failures.add(
                    f"series {uid}", "ENOENT", "the server does not know it (or not for this account)"
                )
                return None
            return found[0]

        with ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="nbiafs-series") as pool:
            complete += [s for s in pool.map(one, uids) if s is not None]
    finder = _Finder(mountpoint)
    found: list[str] = []
    for series in complete:
        where = finder.series_dir(series)
        if where is None:
            failures.add(f"series {series.series_instance_uid}", "ENOENT", f"not found in {mountpoint}")
        else:
            found.append(where)
    return found


class _Finder:
    """Finds a series' directory in a mount by its collection, PatientID and UIDs (each directory listed once)."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self._listings: dict[str, list[str]] = {}

    def _names(self, directory: str) -> list[str]:
        if directory not in self._listings:
            try:
                self._listings[directory] = sorted(os.listdir(directory))
            except OSError as exc:
                log.info("cannot list %s: %s", directory, exc)
                self._listings[directory] = []
        return self._listings[directory]

    def _child(self, directory: str, field_name: str, value: str | None) -> str | None:
        """The entry of ``directory`` whose ``user.nbia.<field_name>`` is ``value`` (its safe name first)."""
        if not value:
            return None
        entries = self._names(directory)
        likely = names.safe_name(value)
        ordered = ([likely] if likely in entries else []) + [n for n in entries if n != likely]
        for name in ordered:
            path = os.path.join(directory, name)
            try:
                got = _xattr(path, f"user.nbia.{field_name}")
            except OSError:
                continue
            if got is not None and got.decode("utf-8", "replace") == value:
                return path
        return None

    def series_dir(self, series: Series) -> str | None:
        collection = self._child(self.mountpoint, "Collection", series.collection)
        patient = collection and self._child(collection, "PatientID", series.patient_id)
        study = patient and self._child(patient, "StudyInstanceUID", series.study_instance_uid)
        return study and self._child(study, "SeriesInstanceUID", series.series_instance_uid) or None


# ------------------------------------------------------------------------------------------------ pins


def pin_refusal(cache: InstanceCache, jobs: Sequence[SeriesJob], bound: int | None) -> str | None:
    """Why pinning every file of ``jobs`` cannot fit in the cache (pinned bytes + bytes to pin > bound), or
    None when it fits (or the cache has no bound)."""
    if bound is None:
        return None
    keys = [f.key for job in jobs for f in job.files]
    already = cache.pinned(keys)
    pinned = cache.info().pinned_bytes
    adding = sum(f.size for job in jobs for f in job.files if f.key not in already)
    if pinned + adding <= bound:
        return None
    return (
        f"refusing to pin: {format_size(adding)} ({adding} bytes) to pin + {format_size(pinned)} ({pinned} bytes) "
        f"pinned already = {format_size(pinned + adding)} is more than the cache holds, "
        f"{format_size(bound)} ({bound} bytes); nothing was downloaded. Unpin something (nbiafs cache unpin "
        "PATH), prefetch less, or mount with a larger --cache-size"
    )


# ------------------------------------------------------------------------------------------- fetching


@dataclass
class Totals:
    """Counts for progress: what there is to do, and what was done before this run."""

    series: int
    files: int
    bytes: int
    cached_files: int
    cached_bytes: int


class Fetcher:
    """Reads the jobs' uncached files through the mount, ``jobs`` series at a time; pins or labels them."""

    def __init__(
        self, jobs: Sequence[SeriesJob], cache: InstanceCache | None, failures: Failures, *, pin: bool
    ) -> None:
        self.jobs = list(jobs)
        self.cache = cache
        self.failures = failures
        self.pin = pin
        self.fetched_files = 0
        self.fetched_bytes = 0
        self.skipped_files = 0
        self.pinned_files = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def totals(self) -> Totals:
        files = [f for job in self.jobs for f in job.files]
        cached = [f for f in files if f.cached]
        return Totals(
            series=len(self.jobs),
            files=len(files),
            bytes=sum(f.size for f in files),
            cached_files=len(cached),
            cached_bytes=sum(f.size for f in cached),
        )

    def run(self, workers: int, progress: Progress) -> None:
        """Fetch every job (cached files first pinned or labelled, so they are protected meanwhile)."""
        for job in self.jobs:
            self._keep(job, [f for f in job.files if f.cached])
        pool = ThreadPoolExecutor(workers, thread_name_prefix="nbiafs-prefetch")
        try:
            futures = [pool.submit(self._series, job, progress) for job in self.jobs]
            for future in futures:
                future.result()
        except BaseException:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _is_cached(self, f: File) -> bool:
        if f.cached:
            return True
        if self.cache is not None:
            return self.cache.peek(f.key) is not None
        value = _xattr(f.path, XATTR_CACHED)
        return value == b"1"

    def _series(self, job: SeriesJob, progress: Progress) -> None:
        unkept: list[File] = []
        try:
            for f in job.files:
                if self._stop.is_set():
                    return
                if f.cached:
                    continue
                try:
                    if self._is_cached(f):  # the mount's read-ahead brought it meanwhile
                        with self._lock:
                            self.skipped_files += 1
                        progress.file_done(f.size, f.size)
                        unkept.append(f)
                        continue
                    size = self._read(f.path, progress)
                except OSError as exc:
                    self.failures.add_os_error(f.path, exc)
                    progress.file_failed()
                    continue
                with self._lock:
                    self.fetched_files += 1
                    self.fetched_bytes += size
                progress.file_done(size, f.size, counted=True)
                unkept.append(f)
                if len(unkept) >= PIN_BATCH:
                    self._keep(job, unkept)
                    unkept = []
        finally:
            if unkept:
                self._keep(job, unkept)
            progress.series_done()

    def _read(self, path: str, progress: Progress) -> int:
        """Read ``path`` to its end through the mount (the mount fetches and caches it); bytes read."""
        total = 0
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            while True:
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    return total
                total += len(chunk)
                progress.add_bytes(len(chunk))
        finally:
            os.close(fd)

    def _keep(self, job: SeriesJob, files: Sequence[File]) -> None:
        """Pin (with ``pin``) or label ``files`` with their collection; files no longer cached are failures
        with ``pin`` (they could not be kept), and only logged without."""
        if self.cache is None or not files:
            return
        keys = [f.key for f in files]
        try:
            if self.pin:
                marked = self.cache.pin(keys, job.collection)
            elif job.collection is not None:
                marked = self.cache.label(keys, job.collection)
            else:
                return
        except NbiaError as exc:
            for f in files:
                self.failures.add(f.path, "EIO", f"cannot update the cache index: {exc}")
            return
        with self._lock:
            if self.pin:
                self.pinned_files += len(marked)
        for f in files:
            if f.key not in marked:
                if self.pin:
                    self.failures.add(f.path, NOT_KEPT, "read, but no longer in the cache: not pinned")
                else:
                    log.info("%s was read but is no longer in the cache (the cache is full)", f.path)


# ------------------------------------------------------------------------------------------- progress


class Progress:
    """Series, files and bytes done: a tqdm bar on a terminal, plain lines every ``interval`` seconds
    otherwise, nothing with ``quiet``. Thread-safe; a context manager (its exit prints the final state)."""

    def __init__(
        self, totals: Totals, *, stream: TextIO, tty: bool, interval: float, quiet: bool = False
    ) -> None:
        self.totals = totals
        self.stream = stream
        self.tty = tty
        self.interval = max(0.1, interval)
        self.quiet = quiet
        self.series_done_count = 0
        self.files_done = totals.cached_files
        self.bytes_done = totals.cached_bytes
        self.total_bytes = totals.bytes
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: tqdm[Any] | None = None

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.quiet:
            return self
        if self.tty:
            sized = _terminal_width(self.stream) > 0
            self._bar = tqdm(
                total=self.total_bytes,
                initial=self.bytes_done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="prefetch",
                file=self.stream,
                # A pseudo-terminal without a size (0 x 0) would hide the bar: give it one.
                dynamic_ncols=sized,
                ncols=None if sized else 100,
                nrows=None if sized else 24,
                mininterval=0.5,
            )
            self._bar.set_postfix_str(self._counts(), refresh=True)
        else:
            self._line()
            self._thread = threading.Thread(target=self._lines, name="nbiafs-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            with self._lock:
                self._bar.set_postfix_str(self._counts(), refresh=True)
            self._bar.close()
        elif not self.quiet:
            self._line()

    def _lines(self) -> None:
        while not self._stopped.wait(self.interval):
            self._line()

    def _counts(self) -> str:
        return (
            f"series {self.series_done_count}/{self.totals.series}, "
            f"files {self.files_done}/{self.totals.files}"
        )

    def line(self) -> str:
        """The plain progress line: series, files, bytes of the expected total, rate, ETA."""
        with self._lock:
            done, total = self.bytes_done, max(self.total_bytes, self.bytes_done)
            counts = self._counts()
        elapsed = time.monotonic() - self._start
        new = done - self.totals.cached_bytes
        rate = new / elapsed if elapsed > 0 and new > 0 else None
        speed = f"{format_size(int(rate))}/s" if rate else "?/s"
        eta = tqdm.format_interval((total - done) / rate) if rate else "?"
        percent = 100 * done // total if total else 100
        return (
            f"prefetch: {counts}, {format_size(done)}/{format_size(total)} ({percent}%), {speed}, ETA {eta}"
        )

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n
            if self._bar is not None:
                self._bar.update(n)

    def file_done(self, size: int, expected: int, *, counted: bool = False) -> None:
        """A file is in the cache: ``size`` its real size, ``expected`` the size its total counted;
        ``counted``: its bytes were added already (by :meth:`add_bytes`)."""
        with self._lock:
            self.files_done += 1
            self.total_bytes += size - expected
            added = 0 if counted else size
            self.bytes_done += added
            if self._bar is not None:
                self._bar.total = max(self.total_bytes, self.bytes_done)
                if added:
                    self._bar.update(added)
                self._bar.set_postfix_str(self._counts(), refresh=False)

    def file_failed(self) -> None:
        """A file could not be fetched: its bytes stay missing (the total keeps them)."""

    def series_done(self) -> None:
        with self._lock:
            self.series_done_count += 1
            if self._bar is not None:
                self._bar.set_postfix_str(self._counts(), refresh=False)


def _terminal_width(stream: TextIO) -> int:
    """Columns of the terminal ``stream`` writes to (0 when unknown)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 0


# -------------------------------------------------------------------------------------------- summary


def summary(fetcher: Fetcher, failures: Failures, *, pin: bool) -> str:
    """What was done and, if anything failed, what: counts by errno and the first paths."""
    totals = fetcher.totals()
    parts = [
        f"prefetch: {totals.files} files in {totals.series} series ({format_size(totals.bytes)} expected): "
        f"{fetcher.fetched_files} fetched ({format_size(fetcher.fetched_bytes)}), "
        f"{fetcher.skipped_files} brought meanwhile by the mount's read-ahead, {totals.cached_files} cached before"
    ]
    if pin:
        parts[0] += f", {fetcher.pinned_files} pinned"
    if failures.count:
        parts.append(summary_of_failures(failures))
    return "\n".join(parts)


def summary_of_failures(failures: Failures, what: str = "prefetch") -> str:
    """``<what>: N failed (EACCES 3, EIO 1); first:`` and the first few paths with their reasons."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in failures.by_reason.most_common())
    lines = [f"{what}: {failures.count} failed ({reasons}); first:"]
    lines += [f"  {path}: {reason}" for path, reason in failures.first]
    return "\n".join(lines)


def _iter_files(jobs: Iterable[SeriesJob]) -> Iterator[File]:
    for job in jobs:
        yield from job.files


def keys_below(paths: Sequence[str]) -> tuple[str, list[str], Failures]:
    """For ``nbiafs cache unpin``: the mount holding ``paths``, the cache keys of the files below them, and what
    could not be walked."""
    mountpoint = mount_of(paths)
    failures = Failures()
    jobs = walk([os.path.abspath(p) for p in paths], mountpoint, failures)
    return mountpoint, [f.key for f in _iter_files(jobs)], failures

"""InstanceCache: LRU by bytes, persistence, single flight across threads and processes, crash leftovers."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from nbiafs.errors import BadResponseError, CacheError, ConfigError, UnavailableError
from nbiafs.fs.instance_cache import InstanceCache, entry_name, key_from_name
from tests.fs.helpers import FakeClock, dicom_bytes, in_threads, wait_for

UID = "1.3.6.1.4.1.14519.5.2.1.7695.1700.{}"


def writer(data: bytes, calls: list[str] | None = None, delay: float = 0.0) -> Callable[[BinaryIO], int]:
    """A download callable writing ``data`` (in two chunks, ``delay`` seconds apart), recording its calls."""

    def download(out: BinaryIO) -> int:
        if calls is not None:
            calls.append(threading.current_thread().name)
        out.write(data[: len(data) // 2])
        time.sleep(delay)
        out.write(data[len(data) // 2 :])
        return len(data)

    return download


@pytest.fixture
def cache_bytes() -> int:
    """The ``cache`` fixture of these tests holds 1000 bytes."""
    return 1000


def test_fetch_then_get_and_peek(cache: InstanceCache) -> None:
    key = UID.format(1)
    assert cache.get(key) is None
    assert cache.peek(key) is None
    path = cache.fetch(key, writer(b"x" * 100))
    assert path.read_bytes() == b"x" * 100
    assert cache.peek(key) == 100
    assert cache.get(key) == path
    # fetching again is a hit: the download is not called
    assert cache.fetch(key, writer(b"never")) == path
    info = cache.info()
    assert (info.entries, info.total_bytes, info.hits, info.misses, info.max_bytes) == (1, 100, 2, 1, 1000)


def test_peek_counts_nothing(cache: InstanceCache) -> None:
    key = UID.format(1)
    cache.fetch(key, writer(b"x" * 10))
    for _ in range(5):
        assert cache.peek(key) == 10
    assert cache.info().hits == 0


def test_lru_order_and_bound(tmp_path: Path) -> None:
    clock = FakeClock()
    with InstanceCache(tmp_path / "cache", 1000, clock=clock) as cache:
        keys = [UID.format(i) for i in range(4)]
        for key in keys[:3]:
            cache.fetch(key, writer(b"a" * 300))
            clock.advance(1)  # distinct access times
        assert cache.get(keys[0]) is not None  # keys[0] is now the most recently used; keys[1] the least
        clock.advance(1)
        cache.fetch(keys[3], writer(b"b" * 300))  # 1200 > 1000: evict one
        cache.flush()  # rows are committed (and the bound enforced) in batches
        assert cache.peek(keys[1]) is None
        assert [cache.peek(k) for k in (keys[0], keys[2], keys[3])] == [300, 300, 300]
        clock.advance(1)
        cache.fetch(UID.format(9), writer(b"c" * 500))  # 1400: evict keys[2] then keys[0]
        cache.flush()
        assert cache.peek(keys[2]) is None and cache.peek(keys[0]) is None
        info = cache.info()
        assert info.total_bytes == 800 <= 1000
        assert info.entries == 2


def test_entry_larger_than_the_bound_is_served_not_kept(
    cache: InstanceCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbiafs.fs.instance_cache as module

    cache.fetch(UID.format(1), writer(b"s" * 100))
    big = cache.fetch(UID.format(2), writer(b"B" * 5000))
    with open(big, "rb") as opened:  # the caller opens it at once, as the FUSE adapter does
        assert opened.read() == b"B" * 5000
        assert big.parent.name == "spill" and not big.name.endswith(".dcm")
        assert cache.peek(UID.format(2)) is None  # never cached
        assert cache.peek(UID.format(1)) == 100  # nothing else was evicted for it
        assert cache.info().entries == 1
        monkeypatch.setattr(module, "SPILL_KEEP", 0.0)
        cache.fetch(UID.format(3), writer(b"t" * 10))  # the next fetch removes the spilled file
        assert not big.exists()
        assert opened.read() == b"" and os.pread(opened.fileno(), 4, 0) == b"BBBB"  # still readable
    assert cache.info().total_bytes == 110


def test_persistence_across_instances(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with InstanceCache(directory, 10_000) as first:
        path = first.fetch(UID.format(1), writer(b"d" * 42))
        assert first.get(UID.format(1)) == path
    with InstanceCache(directory, 10_000) as second:
        assert second.peek(UID.format(1)) == 42
        assert second.get(UID.format(1)) == path
        info = second.info()
        assert (info.entries, info.total_bytes, info.misses, info.hits) == (1, 42, 1, 2)


def test_access_times_are_flushed_in_the_background(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with InstanceCache(directory, 10_000, flush_interval=0.05) as first:
        first.fetch(UID.format(1), writer(b"d" * 42))
        first.get(UID.format(1))
        with InstanceCache(directory, None) as other:  # another process's view: the index only
            wait_for(lambda: other.info().hits == 1, timeout=5)  # the hit is written to the index


def test_eight_threads_share_one_download(cache: InstanceCache) -> None:
    calls: list[str] = []
    results, errors = in_threads(
        *[lambda: cache.fetch(UID.format(1), writer(b"z" * 200, calls, delay=0.2))] * 8
    )
    assert errors == []
    assert len(calls) == 1
    assert len(results) == 8 and len(set(results)) == 1
    assert results[0].read_bytes() == b"z" * 200
    info = cache.info()
    assert (info.misses, info.hits) == (1, 7)


def test_threads_share_the_error_and_leave_nothing(cache: InstanceCache) -> None:
    calls: list[str] = []

    def failing(out: BinaryIO) -> int:
        calls.append("x")
        out.write(b"partial")
        time.sleep(0.2)
        raise UnavailableError("connection reset mid-body")

    _, errors = in_threads(*[lambda: cache.fetch(UID.format(1), failing)] * 4)
    assert len(calls) == 1
    assert len(errors) == 4 and all(isinstance(e, UnavailableError) for e in errors)
    assert leftovers(cache.directory) == []
    assert cache.peek(UID.format(1)) is None
    assert cache.info().entries == 0


def leftovers(directory: Path) -> list[str]:
    """Every file under data/ and locks/ (the index aside)."""
    return sorted(
        str(p.relative_to(directory))
        for sub in ("data", "locks")
        for p in (directory / sub).rglob("*")
        if not p.is_dir()
    )


def test_partial_download_never_under_the_final_name(cache: InstanceCache) -> None:
    key = UID.format(1)
    final = cache.path_for(key)
    seen: list[bool] = []

    def download(out: BinaryIO) -> int:
        out.write(b"half")
        out.flush()
        seen.append(final.exists())
        parts = [p.name for p in final.parent.iterdir() if p.name.endswith(".part")]
        seen.append(len(parts) == 1)
        raise ConfigError("refused")

    with pytest.raises(ConfigError, match="refused"):
        cache.fetch(key, download)
    assert seen == [False, True]
    assert not final.exists()
    assert leftovers(cache.directory) == []
    # an interrupt is no different
    with pytest.raises(KeyboardInterrupt):
        cache.fetch(key, lambda out: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert leftovers(cache.directory) == []


def test_clear_while_a_file_is_open(cache: InstanceCache) -> None:
    path = cache.fetch(UID.format(1), writer(b"open" * 10))
    cache.fetch(UID.format(2), writer(b"2"))
    with open(path, "rb") as handle:
        assert cache.clear() == 2
        assert handle.read() == b"open" * 10
    assert cache.get(UID.format(1)) is None
    info = cache.info()
    assert (info.entries, info.total_bytes, info.hits, info.misses) == (0, 0, 0, 0)
    assert cache.fetch(UID.format(1), writer(b"again")).read_bytes() == b"again"


def test_recovery_when_files_vanish(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with InstanceCache(directory, 10_000) as c:
        paths = [c.fetch(UID.format(i), writer(bytes([i]) * 100)) for i in range(3)]
        paths[0].unlink()  # behind the cache's back
        assert c.get(UID.format(0)) is None
        calls: list[str] = []
        assert c.fetch(UID.format(0), writer(b"n" * 7, calls)).read_bytes() == b"n" * 7
        assert calls and c.info().total_bytes == 207
        paths[1].unlink()
        c.reconcile()
        info = c.info()
        assert (info.entries, info.total_bytes) == (2, 107)
    paths[2].unlink()
    with InstanceCache(directory, 10_000) as again:
        info = again.info()
        assert (info.entries, info.total_bytes) == (1, 7)


def test_unindexed_file_is_adopted_and_stale_leftovers_removed(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with InstanceCache(directory, 10_000) as c:
        key = UID.format(5)
        final = c.path_for(key)
    # what a process killed between rename and commit, and one killed mid-download, leave behind
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_bytes(dicom_bytes("1.2.3.5"))
    damaged = final.parent.parent / "00" / entry_name(UID.format(7))
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(dicom_bytes("1.2.3.7")[:200])  # a power loss cut it
    stale = final.parent / (entry_name(UID.format(6)) + ".abc123.part")
    stale.write_bytes(b"half")
    (directory / "locks" / (entry_name(UID.format(6)) + ".lock")).write_bytes(b"")
    with InstanceCache(directory, 10_000) as c:
        assert not stale.exists()
        assert not (directory / "locks" / (entry_name(UID.format(6)) + ".lock")).exists()
        info = c.info()
        assert (info.entries, info.total_bytes) == (1, final.stat().st_size)
        assert c.get(key) == final
        assert not damaged.exists()


def test_stale_part_of_the_key_is_removed_when_fetching(cache: InstanceCache) -> None:
    key = UID.format(1)
    final = cache.path_for(key)
    final.parent.mkdir(parents=True, exist_ok=True)
    stale = final.parent / (final.name + ".dead01.part")
    stale.write_bytes(b"junk")
    cache.fetch(key, writer(b"fresh"))
    assert not stale.exists()


def test_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with InstanceCache(tmp_path / "new" / "cache", 10_000) as c:
            path = c.fetch(UID.format(1), writer(b"secret"))
            c.get(UID.format(1))
    finally:
        os.umask(old)
    directory = tmp_path / "new" / "cache"
    for p in [directory, *directory.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), f"{p}: {oct(mode)}"
    assert path.stat().st_mode & 0o077 == 0


def test_keys_are_escaped(cache: InstanceCache) -> None:
    for key in ("../../etc/passwd", ".", "a/b", "x" * 300, "é.1", "h-" + "0" * 64):
        path = cache.fetch(key, writer(key.encode()))
        assert path.parent.parent == cache.directory / "data"
        assert "/" not in path.name and len(path.name) < 255
        assert cache.get(key) == path and path.read_bytes() == key.encode()
    assert key_from_name(entry_name("a/b")) == "a/b"
    assert key_from_name(entry_name("x" * 300)) is None
    assert entry_name(UID.format(1)) == UID.format(1) + ".dcm"
    # the long (hashed) key survives a reconcile
    cache.reconcile()
    assert cache.peek("x" * 300) == 300


def test_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError):
        InstanceCache(blocker / "cache", 100)


def test_disk_error_while_caching_is_a_cache_error(cache: InstanceCache) -> None:
    def bad(out: BinaryIO) -> int:
        out.write(b"x")
        os.close(out.fileno())  # the fsync after it fails with EBADF
        return 1

    with pytest.raises(CacheError):
        cache.fetch(UID.format(1), bad)
    assert cache.peek(UID.format(1)) is None


def _process_fetch(directory: str, counter: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    """Runs in a child process: fetch one key whose download appends a line to ``counter``."""

    def download(out: BinaryIO) -> int:
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        out.write(b"shared" * 100)
        return 600

    with InstanceCache(Path(directory), 100_000) as c:
        barrier.wait(timeout=30)
        path = c.fetch(UID.format(7), download)
        assert path.read_bytes() == b"shared" * 100


def test_two_processes_share_one_download(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    counter = tmp_path / "downloads"
    directory = tmp_path / "c"
    args = (str(directory), str(counter), barrier)
    procs = [ctx.Process(target=_process_fetch, args=args) for _ in range(2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    assert len(counter.read_text().splitlines()) == 1
    with InstanceCache(directory, None) as c:
        info = c.info()
        assert (info.entries, info.misses, info.hits) == (1, 1, 1)


# --- claims, store, batched bookkeeping ---------------------------------------------------------------------


def test_a_fetch_of_a_claimed_key_waits_for_its_delivery(cache: InstanceCache) -> None:
    key = UID.format(1)
    claim = cache.claim([key, UID.format(2)])
    assert claim.keys == {key, UID.format(2)}
    calls: list[str] = []
    got: list[Path] = []
    reader = threading.Thread(target=lambda: got.append(cache.fetch(key, writer(b"own", calls))))
    reader.start()
    wait_for(lambda: reader.is_alive())
    time.sleep(0.05)
    assert not got  # waiting for the claim
    path = cache.store(key, writer(b"from the zip"))
    assert path is not None
    claim.deliver(key, path)
    reader.join(10)
    assert got == [path] and path.read_bytes() == b"from the zip" and calls == []
    claim.release()
    assert not claim.keys


def test_a_released_claim_lets_the_waiter_download(cache: InstanceCache) -> None:
    key = UID.format(1)
    with cache.claim([key]):
        calls: list[str] = []
        results, errors = in_threads(
            lambda: cache.fetch(key, writer(b"own", calls)), lambda: time.sleep(0.05)
        )
    assert not errors and calls and cache.peek(key) == 3


def test_a_slow_claim_is_not_waited_for_forever(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", 10_000, claim_wait=0.05) as c:
        claim = c.claim([UID.format(1)])
        assert c.fetch(UID.format(1), writer(b"own")).read_bytes() == b"own"
        claim.release()


def test_claims_leave_out_cached_and_claimed_keys(cache: InstanceCache) -> None:
    cache.fetch(UID.format(1), writer(b"x"))
    first = cache.claim([UID.format(1), UID.format(2)])
    second = cache.claim([UID.format(2), UID.format(3)])
    assert first.keys == {UID.format(2)} and second.keys == {UID.format(3)}
    first.release()
    second.release()


def test_store_leaves_a_key_being_downloaded_alone(cache: InstanceCache) -> None:
    key = UID.format(1)
    started = threading.Event()

    def slow(out: BinaryIO) -> int:
        started.set()
        time.sleep(0.3)
        return out.write(b"download")

    reader = threading.Thread(target=lambda: cache.fetch(key, slow))
    reader.start()
    started.wait(5)
    assert cache.store(key, writer(b"zip")) is None
    reader.join(10)
    assert cache.store(key, writer(b"zip")) == cache.path_for(key)
    assert cache.path_for(key).read_bytes() == b"download"


def test_store_refuses_what_its_check_refuses(cache: InstanceCache) -> None:
    def refuse(path: Path) -> None:
        raise BadResponseError("not the instance")

    with pytest.raises(BadResponseError):
        cache.store(UID.format(1), writer(b"junk"), check=refuse)
    assert cache.peek(UID.format(1)) is None


def test_rows_are_committed_in_batches_without_fsync(
    cache: InstanceCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fsync(fd: int) -> None:
        raise AssertionError("fsync called")

    monkeypatch.setattr(os, "fsync", no_fsync)
    commits: list[str] = []
    cache._conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    for i in range(100):
        path = cache.fetch(UID.format(i), writer(b"x" * 10))
        assert path.exists() and cache.get(UID.format(i)) == path  # visible at once
    info = cache.info()
    assert (info.entries, info.misses) == (100, 100)
    assert len(commits) < 25  # one per batch, not one per instance


# --- pins and collections ---------------------------------------------------------------------------------


def test_pinned_entries_are_never_evicted(tmp_path: Path) -> None:
    clock = FakeClock()
    with InstanceCache(tmp_path / "cache", 1000, clock=clock) as cache:
        keys = [UID.format(i) for i in range(6)]
        for key in keys[:2]:
            cache.fetch(key, writer(b"p" * 300), collection="Pinned")
            clock.advance(1)
        assert cache.pin(keys[:2]) == set(keys[:2])  # the oldest entries, pinned
        for key in keys[2:]:
            cache.fetch(key, writer(b"u" * 300))
            clock.advance(1)
        cache.flush()
        assert [cache.peek(k) for k in keys[:2]] == [300, 300]
        assert cache.peek(keys[5]) == 300  # the newest unpinned entry stays
        info = cache.info()
        assert (info.total_bytes, info.pinned_bytes, info.pinned_entries) == (900, 600, 2)
        assert cache.pinned() == {keys[0]: 300, keys[1]: 300}
        assert cache.pinned([keys[1], keys[5]]) == {keys[1]: 300}
        assert cache.unpin([keys[0], keys[4]]) == 1
        cache.fetch(UID.format(9), writer(b"n" * 300))  # now keys[0] is the least recently used
        cache.flush()
        assert cache.peek(keys[0]) is None and cache.peek(keys[1]) == 300


def test_pins_hold_against_the_free_space_floor(tmp_path: Path) -> None:
    free = [10_000]
    with InstanceCache(tmp_path / "c", None, min_free=1000, disk_usage=lambda _p: (free[0], 10**6)) as cache:
        cache.fetch(UID.format(1), writer(b"a" * 500))
        cache.fetch(UID.format(2), writer(b"b" * 500))
        cache.pin([UID.format(1)])
        free[0] = 1000  # at the floor: room must be made for the next one
        cache.fetch(UID.format(3), writer(b"c" * 400), expected=400)
        assert cache.peek(UID.format(1)) == 500 and cache.peek(UID.format(2)) is None
        cache.pin([UID.format(3)])
        with pytest.raises(CacheError):  # only pinned entries are left: nothing to evict
            cache.fetch(UID.format(4), writer(b"d" * 400), expected=400)


def test_pin_indexes_a_file_another_process_has_not_indexed_yet(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with (
        InstanceCache(directory, 10_000, flush_interval=3600) as mount,
        InstanceCache(directory, None) as other,
    ):
        body = dicom_bytes(UID.format(1))
        fetching = threading.Thread(target=mount.fetch, args=(UID.format(1), writer(body)))
        mount._pending_lock.acquire()  # the file is renamed into place; the mount's row is not written yet
        try:
            fetching.start()
            wait_for(lambda: mount.peek(UID.format(1)) is not None, 5)
            assert other.pin([UID.format(1), UID.format(2)], "C") == {UID.format(1)}
        finally:
            mount._pending_lock.release()
        fetching.join(5)
        mount.flush()  # its row arrives and keeps the pin
        assert other.pinned() == {UID.format(1): len(body)}
        info = other.info()
        assert info.entries == 1 and info.collections[0].collection == "C"


def test_info_per_collection_and_labels(cache: InstanceCache) -> None:
    cache.fetch(UID.format(1), writer(b"a" * 100), collection="A")
    cache.fetch(UID.format(2), writer(b"b" * 50), collection="B")
    cache.fetch(UID.format(3), writer(b"c" * 20))
    cache.fetch(UID.format(4), writer(b"d" * 10))
    assert cache.label([UID.format(3), UID.format(1), UID.format(8)], "B") == {UID.format(1), UID.format(3)}
    cache.pin([UID.format(2)])
    usage = {u.collection: u for u in cache.info().collections}
    assert list(usage) == ["A", "B", None]  # by name, the unknown last
    assert (usage["A"].pinned_bytes, usage["A"].unpinned_bytes) == (0, 100)  # a label never overrides
    assert (usage["B"].pinned_bytes, usage["B"].unpinned_bytes, usage["B"].pinned_entries) == (50, 20, 1)
    assert (usage[None].unpinned_bytes, usage[None].unpinned_entries) == (10, 1)
    assert cache.unpin_all("A") == 0 and cache.unpin_all("B") == 1
    cache.pin([UID.format(1), UID.format(4)])
    assert cache.unpin_all() == 2


def test_clear_removes_pins(cache: InstanceCache) -> None:
    cache.fetch(UID.format(1), writer(b"a" * 100))
    cache.pin([UID.format(1)])
    assert cache.clear() == 1
    cache.fetch(UID.format(1), writer(b"a" * 100))
    assert cache.info().pinned_entries == 0


def test_an_index_of_schema_1_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    directory = tmp_path / "c"
    with InstanceCache(directory, 10_000) as cache:
        cache.fetch(UID.format(1), writer(b"a" * 100))
    conn = sqlite3.connect(directory / "index.sqlite3")
    with conn:  # as nbiafs with schema 1 wrote it
        conn.execute("ALTER TABLE entries DROP COLUMN pinned")
        conn.execute("ALTER TABLE entries DROP COLUMN collection")
        conn.execute("UPDATE meta SET value = 1 WHERE name = 'schema'")
    conn.close()
    with InstanceCache(directory, 10_000) as cache:
        assert cache.info().entries == 1
        assert cache.pin([UID.format(1)], "A") == {UID.format(1)}
        assert cache.info().collections[0].pinned_bytes == 100
    conn = sqlite3.connect(directory / "index.sqlite3")
    assert conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() == (2,)
    conn.close()

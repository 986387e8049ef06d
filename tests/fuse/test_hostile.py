"""A mount against a hostile server: each fault of the bundled server ends in the documented errno within the
documented deadline (docs/semantics.md, Errors), no process stays in uninterruptible sleep past it, no wrong
byte is read, and nothing wrong enters the cache.

Every read runs in a subprocess (a reader stuck in the kernel cannot hang the test), with a deadline; the mount
runs with ``--timeout 2`` to keep the bounds short, and ``--readahead 0`` so that one open is one download.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nbiafs.server import ArchiveServer
from tests.mountutil import Mount, archive_files, files_under, mounted, needs_fuse, run, wait_until

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(180)]

PETCR = "NBIAFS-PET-CR"  # 3 series, 10 instances
TIMEOUT = 2.0  # the mount's --timeout
MOUNT_ARGS = ("--timeout", str(TIMEOUT), "--readahead", "0")
RSS_LIMIT_MIB = 300
PROBE_INTERVAL = 15.0  # seconds between an offline mount's probes (docs/semantics.md, Offline)

READER = r"""
import hashlib, json, sys, time
start = time.monotonic()
try:
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    out = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
except OSError as exc:
    out = {"errno": exc.errno}
out["seconds"] = time.monotonic() - start
print(json.dumps(out), flush=True)
"""


@dataclass
class Outcome:
    errno: int | None
    seconds: float
    sha256: str | None
    size: int | None


def thread_states(pid: int) -> list[str]:
    """The state letter of every thread of ``pid`` (empty once it has ended)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text(errors="replace").rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return states


def assert_not_stuck(m: Mount, what: str) -> None:
    """No thread of the mount process is in uninterruptible sleep (sampled for 0.5 s)."""
    for _ in range(5):
        states = thread_states(m.proc.pid)
        assert "D" not in states, f"{what}: a thread of the mount is in uninterruptible sleep: {states}"
        time.sleep(0.1)


def read_with_deadline(m: Mount, path: Path, deadline: float) -> Outcome:
    """Read ``path`` in a subprocess that must return within ``deadline`` seconds; then neither it nor the mount
    may be in uninterruptible sleep."""
    start = time.monotonic()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = reader.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        states = thread_states(reader.pid)
        reader.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            reader.communicate(timeout=10)
        pytest.fail(
            f"the read of {path.name} did not return within {deadline} s (reader states {states}, killed: "
            f"{reader.poll() is not None}; mount states {thread_states(m.proc.pid)})\n{m.log()[-3000:]}"
        )
    took = time.monotonic() - start
    assert_not_stuck(m, f"after reading {path.name}")
    rec: dict[str, Any] = json.loads(out)
    return Outcome(rec.get("errno"), took, rec.get("sha256"), rec.get("size"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_entries(cache: Path, sop_uid: str) -> list[Path]:
    """Every file of the cache directory that holds ``sop_uid`` (final entries, parts, spills)."""
    return [p for p in cache.rglob(f"*{sop_uid}*") if p.is_file()]


def assert_cache_trustworthy(cache: Path, expected: dict[str, bytes]) -> None:
    """Every cached instance holds the server's own bytes for the SOPInstanceUID it is filed under."""
    for path in (cache / "data").rglob("*.dcm"):
        sop = path.name.removesuffix(".dcm").rpartition("_")[2]
        assert f"{sop}.dcm" in expected, f"unexpected cache entry {path}"
        assert path.read_bytes() == expected[f"{sop}.dcm"], f"{path} holds bytes that are not {sop}'s"


@pytest.fixture
def hostile(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> Iterator[tuple[ArchiveServer, Mount, dict[str, Path], dict[str, bytes]]]:
    """A healthy server, a mount of it whose PETCR listings are all cached, the files and their bytes."""
    srv = make_server()
    expected = archive_files(srv.archive, PETCR)
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", *MOUNT_ARGS) as m:
        done = run(["find", str(m.path / PETCR)], timeout=60)
        assert done.returncode == 0, done.stderr + m.log()
        files = files_under(m.path / PETCR)
        assert sorted(files) == sorted(expected)
        yield srv, m, files, expected


def assert_eio_uncached(
    m: Mount, files: dict[str, Path], expected: dict[str, bytes], deadline: float, name: str | None = None
) -> Outcome:
    """Reading one never-cached file is EIO within ``deadline`` s and leaves nothing in the cache for it."""
    name = name or sorted(files)[0]
    got = read_with_deadline(m, files[name], deadline)
    assert got.errno == errno.EIO, f"{name}: {got}\n{m.log()[-3000:]}"
    assert got.seconds < deadline
    assert cached_entries(m.cache_dir, name.removesuffix(".dcm")) == [], "a refused answer entered the cache"
    assert_cache_trustworthy(m.cache_dir, expected)
    return got


# -- hangs: trickle, dropped connections, a blackhole, a stopped server --------------------------------------


def test_trickle_is_eio_within_about_the_timeout(hostile: Any) -> None:
    srv, m, files, expected = hostile
    srv.config.trickle_interval = 0.5  # 1 byte every 0.5 s (no read ever times out), images only
    srv.config.trickle_rate = 1.0
    # "a body that arrives at under 4 KiB/s on average over any --timeout seconds is abandoned after about
    # --timeout seconds"
    got = assert_eio_uncached(m, files, expected, deadline=TIMEOUT + 2)
    assert got.seconds >= TIMEOUT * 0.8, got  # it was the low-speed limit, not something else
    srv.config.trickle_rate = 0.0
    recovers_within(m, files, expected, PROBE_INTERVAL + 5)


def test_body_stalled_midway_is_eio_within_about_the_timeout(hostile: Any) -> None:
    srv, m, files, expected = hostile
    srv.config.trickle_interval = 5.0  # 1 byte, then nothing for 5 s: each read times out
    srv.config.trickle_rate = 1.0
    assert_eio_uncached(m, files, expected, deadline=2 * TIMEOUT + 2)


def recovers_within(m: Mount, files: dict[str, Path], expected: dict[str, bytes], seconds: float) -> None:
    """Once the fault is gone, an uncached file reads whole within ``seconds`` (the mount may have gone
    offline: it probes every 15 s and comes back by itself)."""
    name = sorted(files)[-1]
    end = time.monotonic() + seconds
    while True:
        got = read_with_deadline(m, files[name], 10)
        if got.errno is None:
            assert got.sha256 == sha(expected[name]), got
            return
        assert time.monotonic() < end, f"still {got} after {seconds} s\n{m.log()[-3000:]}"
        time.sleep(0.5)


def test_trickle_of_many_reads_at_once(hostile: Any) -> None:
    """Every file of the collection read at once from a trickling server: all EIO, none past the bound."""
    srv, m, files, expected = hostile
    srv.config.trickle_interval = 0.5
    srv.config.trickle_rate = 1.0
    procs = [
        subprocess.Popen([sys.executable, "-c", READER, str(path)], stdout=subprocess.PIPE, text=True)
        for path in files.values()
    ]
    # 10 downloads over the mount's connection pool (8): two rounds of about --timeout each, plus slack
    deadline = time.monotonic() + 4 * TIMEOUT + 5
    outs = []
    for proc in procs:
        try:
            outs.append(json.loads(proc.communicate(timeout=max(0.1, deadline - time.monotonic()))[0]))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"reads still running past the deadline\n{m.log()[-3000:]}")
    assert_not_stuck(m, "after the reads")
    assert [o.get("errno") for o in outs] == [errno.EIO] * len(files), outs
    assert_cache_trustworthy(m.cache_dir, expected)


@pytest.mark.parametrize("scope", [("image", "zip"), ("all",)])
def test_dropped_connections_are_eio_at_once(hostile: Any, scope: tuple[str, ...]) -> None:
    """The server reads each request and closes without a byte of answer (as a refused connection: "a
    fraction of a second", plus the retries' back-off)."""
    srv, m, files, expected = hostile
    srv.config.fault_scope = {"drop": scope}
    srv.config.drop_rate = 1.0
    assert_eio_uncached(m, files, expected, deadline=10)
    srv.config.drop_rate = 0.0
    recovers_within(m, files, expected, PROBE_INTERVAL + 5)


def test_blackhole_is_eio_within_the_documented_bound(hostile: Any) -> None:
    """Connection attempts get no answer (dropped SYNs) and open connections no answer either: EIO within
    2 x --timeout (a silent server) + 2 x the connection timeout (one retry), then EIO at once (offline)."""
    srv, m, files, expected = hostile
    srv.config.blackhole = True
    time.sleep(0.3)
    first, second = sorted(files)[:2]
    assert_eio_uncached(m, files, expected, deadline=4 * TIMEOUT + 5, name=first)
    got = assert_eio_uncached(m, files, expected, deadline=4 * TIMEOUT + 5, name=second)
    assert got.seconds < 1.5, f"once offline, what was never cached is EIO at once: {got}"
    assert "offline" in m.log()
    srv.config.blackhole = False
    recovers_within(m, files, expected, PROBE_INTERVAL + 4 * TIMEOUT + 5)


def test_server_stopped_is_eio_at_once(hostile: Any) -> None:
    srv, m, files, expected = hostile
    srv.stop()
    got = assert_eio_uncached(m, files, expected, deadline=5)
    assert got.seconds < 3, got


# -- what enters the cache: cut, altered, foreign, non-DICOM answers ------------------------------------------


@pytest.mark.parametrize("style", ["close", "chunked", "chunked-end"])
def test_truncated_body_without_length_is_never_a_short_file(hostile: Any, style: str) -> None:
    srv, m, files, expected = hostile
    srv.config.truncate_style = style
    srv.config.truncate_rate = 1.0
    assert_eio_uncached(m, files, expected, deadline=10)
    srv.config.truncate_rate = 0.5  # a retry may succeed: then the bytes are whole
    for name in sorted(files)[1:]:
        got = read_with_deadline(m, files[name], 10)
        assert got.errno == errno.EIO or got.sha256 == sha(expected[name]), (name, got)
    assert_cache_trustworthy(m.cache_dir, expected)


def test_truncated_series_zips_are_completed_one_by_one(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    """``cp -r`` with every getImage ZIP cut (clean close, no length): the copy is whole and exact."""
    srv = make_server(truncate_rate=1.0, fault_scope={"truncate": ("zip",)})
    expected = archive_files(srv.archive, PETCR)
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", "--timeout", str(TIMEOUT)) as m:
        done = run(["cp", "-r", str(m.path / PETCR), str(tmp_path / "copy")], timeout=60)
        assert done.returncode == 0, done.stderr + m.log()[-3000:]
        assert_not_stuck(m, "after cp")
    got = files_under(tmp_path / "copy")
    assert sorted(got) == sorted(expected)
    for name, path in got.items():
        assert path.read_bytes() == expected[name], name
    assert_cache_trustworthy(tmp_path / "cache", expected)
    assert any(r.endpoint in ("getImage", "getImageWithMD5Hash") for r in srv.requests)


@pytest.mark.parametrize("where", ["image", "zip"])
def test_altered_bytes_are_eio_and_never_cached(
    make_server: Callable[..., ArchiveServer], tmp_path: Path, where: str
) -> None:
    """Pixel bytes altered with the length kept (a ZIP's CRCs match them): a series ZIP's members are always
    checked against its md5hashes.csv (an altered one comes by getSingleImage); getSingleImage is checked
    against getMD5HashForImage with ``--verify-md5`` (a mismatch is EIO)."""
    srv = make_server()
    expected = archive_files(srv.archive, PETCR)
    extra = ("--verify-md5",) if where == "image" else ()
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", "--timeout", str(TIMEOUT), *extra) as m:
        files = files_under(m.path / PETCR)
        srv.config.fault_scope = {"corrupt": (where,)}
        srv.config.corrupt_rate = 1.0
        if where == "image":
            assert_eio_uncached(m, files, expected, deadline=10)
            assert "MD5" in m.log()
        else:
            done = run(["cp", "-r", str(m.path / PETCR), str(tmp_path / "copy")], timeout=60)
            assert done.returncode == 0, done.stderr + m.log()[-3000:]
            copied = files_under(tmp_path / "copy")
            assert sorted(copied) == sorted(expected)
            for name, path in copied.items():
                assert path.read_bytes() == expected[name], f"{name}: wrong bytes read ({done.stderr})"
            assert_cache_trustworthy(m.cache_dir, expected)
            assert "is not the bytes of instance" in m.log()  # the ZIP was fetched, and its members refused
            assert any(r.endpoint == "getImageWithMD5Hash" for r in srv.requests)


def test_another_instances_bytes_are_eio_and_never_cached(hostile: Any) -> None:
    srv, m, files, expected = hostile
    srv.config.wrong_sop_rate = 1.0
    assert_eio_uncached(m, files, expected, deadline=10)
    assert "SOPInstanceUID" in m.log()


def test_html_answer_is_eio_and_never_cached(hostile: Any) -> None:
    srv, m, files, expected = hostile
    srv.config.html_rate = 1.0
    assert_eio_uncached(m, files, expected, deadline=10)
    assert "HTML" in m.log() or "html" in m.log()
    srv.config.html_rate = 0.0
    recovers_within(m, files, expected, 5)


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the peak resident set
            return int(line.split()[1]) / 1024
    return 0.0


def test_huge_json_is_eio_with_a_clear_message_and_bounded_memory(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    srv = make_server(huge_json_rate=1.0, huge_json_bytes=100 << 20)  # every metadata answer is 100 MB
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", *MOUNT_ARGS) as m:
        start = time.monotonic()
        done = run(["ls", str(m.path / PETCR)], timeout=30)
        took = time.monotonic() - start
        assert done.returncode != 0 and "Input/output error" in done.stderr, done.stderr
        assert took < 30
        assert_not_stuck(m, "after the listing")
        assert wait_until(lambda: "larger than" in m.log(), 5), m.log()[-3000:]
        rss = vm_rss_mib(m.proc.pid)
        assert rss < RSS_LIMIT_MIB, f"the mount's peak RSS is {rss:.0f} MiB"

"""Benchmark: an nbiafs mount against the other ways of getting the same DICOM, on realistic data.

Generates four corpora with pydicom (see ``corpus.py``), serves them with ``nbiafs serve --data DIR`` in a
separate process (20 ms per request, 25 MB/s per connection by default), and measures in one run:

- cold ``cp -r`` out of a fresh mount (empty cache) of the tiny series, the CT series and the MR collection,
  then a warm ``cp -r`` on the same mount; beside the references: one getImage ZIP per series downloaded and
  unzipped, a sequential getSingleImage loop, getSingleImage from 8 and 16 threads, ``cp -r`` from local disk;
- cold ``ls -lR`` of the listing-scale collection, again on the same mount, and after a remount on the same
  cache directory;
- the mount's peak RSS (VmHWM) while copying the CT series through a cache smaller than it.

Every figure is the median of ``--repeat`` runs, with the server's requests (from its request log). Every
copied file is checked byte for byte against the corpus. Each ratio is printed beside its goal (issue 9).

Timing: each command is started with ``subprocess.Popen`` and waited for with a blocking ``wait()`` (a
``threading.Timer`` kills it at its deadline), timed with ``time.perf_counter``; the references run in this
process. Copies, caches and downloads go to a tmpfs mounted for the run (or /dev/shm). Mounts and the server
are always stopped, and /proc/mounts is checked at the end.

Usage: ``python benchmarks/bench_mount.py [--quick] [--corpus-dir DIR] [--repeat N]`` as root (needs /dev/fuse).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import corpus as corpora  # noqa: E402
from corpus import CT, LISTING, MR, TINY, Corpus, Sizes, sha256_file  # noqa: E402

T = TypeVar("T")

SERVER_START_TIMEOUT = 300.0  # indexing the corpus
MOUNT_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 30.0
STEP_TIMEOUT = 600.0  # any one measured step
SETTLE_QUIET = 0.3  # seconds the request log must stay unchanged after a step
SETTLE_TIMEOUT = 15.0

FULL = Sizes()
QUICK = Sizes(tiny=200, ct=60, mr_patients=2, mr_series=4, mr_instances=10, listing_series=200)


class StepTimeoutError(RuntimeError):
    pass


# -- processes with deadlines ------------------------------------------------------------------------------


def wait_with_deadline(proc: subprocess.Popen[Any], seconds: float, what: str) -> int:
    """Block in ``proc.wait()``; a timer kills the process at the deadline (then StepTimeoutError)."""
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    try:
        rc = proc.wait()
    finally:
        timer.cancel()
    if fired.is_set():
        raise StepTimeoutError(f"{what} did not finish within {seconds:.0f} s (killed)")
    return rc


def run_timed(
    cmd: list[str], scratch: Path, *, stdout: Any = subprocess.DEVNULL, deadline: float = STEP_TIMEOUT
) -> float:
    """Run ``cmd`` to completion; returns wall-clock seconds; raises if it fails or overruns its deadline."""
    with tempfile.TemporaryFile(dir=scratch) as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err)
        rc = wait_with_deadline(proc, deadline, " ".join(cmd[:2]))
        seconds = time.perf_counter() - start
        if rc != 0:
            err.seek(0)
            tail = err.read()[-2000:].decode(errors="replace").strip()
            raise RuntimeError(f"{' '.join(cmd)} exited with {rc}: {tail}")
    return seconds


def in_thread(func: Callable[[], T], deadline: float, what: str) -> T:
    """``func()`` in a daemon thread, waited for with a deadline (a blocking join, not polling)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=what, daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        raise StepTimeoutError(f"{what} did not finish within {deadline:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def quiet_command(cmd: list[str], deadline: float) -> int:
    """Run an unmeasured helper command (unmount) with a deadline; returns its exit status (-9 if killed)."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return wait_with_deadline(proc, deadline, cmd[0])
    except StepTimeoutError:
        return -9


SOURCE = REPO  # the nbiafs checkout whose ``python -m nbiafs`` serves and mounts (--source)


def child_env() -> dict[str, str]:
    """The --source checkout importable (first), no NBIA credentials from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBIA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), env.get("PYTHONPATH", "")]))
    return env


def code_fingerprint() -> str:
    """A short hash of the --source checkout's nbiafs/*.py now: tells whether the code changed mid-run."""
    digest = hashlib.sha256()
    for path in sorted((SOURCE / "nbiafs").rglob("*.py")):
        with contextlib.suppress(OSError):
            digest.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def source_description() -> str:
    """The --source checkout: its path, git commit and whether its nbiafs/ differs from it."""
    text = str(SOURCE)
    if (SOURCE / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            head = (
                subprocess.run(
                    ["git", "-C", str(SOURCE), "rev-parse", "--short", "HEAD"],
                    capture_output=True,
                    check=True,
                )
                .stdout.decode()
                .strip()
            )
            dirty = subprocess.run(
                ["git", "-C", str(SOURCE), "status", "--porcelain", "--", "nbiafs"],
                capture_output=True,
                check=True,
            ).stdout.strip()
            text += f" (git {head}{', nbiafs/ modified in the working tree' if dirty else ''})"
    return text


def nbiafs(*args: str) -> list[str]:
    return [sys.executable, "-m", "nbiafs", *args]


def fuse_unmount(mountpoint: Path, lazy: bool = False) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        quiet_command([tool, "-uz" if lazy else "-u", str(mountpoint)], UMOUNT_TIMEOUT)
    else:
        quiet_command(["umount", *(["-l"] if lazy else []), str(mountpoint)], UMOUNT_TIMEOUT)


# -- the server and its request log ------------------------------------------------------------------------


class RequestLog:
    """The server's request log: what was asked between two marks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def mark(self) -> None:
        self.offset = self._size()

    def settle(self) -> None:
        """Wait (unmeasured) until the log has stayed unchanged for SETTLE_QUIET seconds."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        size, since = self._size(), time.monotonic()
        while time.monotonic() - since < SETTLE_QUIET and time.monotonic() < deadline:
            time.sleep(0.05)
            now = self._size()
            if now != size:
                size, since = now, time.monotonic()

    def since_mark(self) -> collections.Counter[str]:
        """Endpoint -> count of the requests logged since :meth:`mark` (after settling); ``!status`` too."""
        self.settle()
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        counts: collections.Counter[str] = collections.Counter()
        for line in data.decode(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 4:
                counts[parts[2]] += 1
                if parts[3] not in ("200", "204"):
                    counts[f"!{parts[3]}"] += 1
        return counts


class Server:
    """``nbiafs serve --data DIR`` in a child process."""

    def __init__(self, data: Path, work: Path, latency: float, bandwidth: float) -> None:
        self.port_file = work / "server.port"
        self.log = RequestLog(work / "requests.log")
        self.output = open(work / "server.out", "wb")  # noqa: SIM115 (closed in stop)
        cmd = nbiafs("serve", "--data", str(data), "--port", "0", "--port-file", str(self.port_file))
        cmd += ["--latency", str(latency), "--request-log", str(self.log.path)]
        if bandwidth > 0:
            cmd += ["--bandwidth", str(bandwidth)]
        self.proc = subprocess.Popen(
            cmd, env=child_env(), stdin=subprocess.DEVNULL, stdout=self.output, stderr=self.output
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self.port_file.exists():  # readiness, not a measurement
            if self.proc.poll() is not None:
                raise RuntimeError(f"nbiafs serve exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nbiafs serve did not listen within {SERVER_START_TIMEOUT:.0f} s")
            time.sleep(0.1)
        port = int(self.port_file.read_text().strip())
        self.api_url = f"http://127.0.0.1:{port}/nbia-api/services/v1"

    def tail(self) -> str:
        self.output.flush()
        return Path(self.output.name).read_bytes()[-2000:].decode(errors="replace").strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(StepTimeoutError):  # killed by the watchdog
                wait_with_deadline(self.proc, UMOUNT_TIMEOUT, "nbiafs serve")
        self.output.close()


# -- mounts ------------------------------------------------------------------------------------------------


class Mount:
    """``nbiafs mount -f`` in a child process, ready when the mountpoint is a mount."""

    def __init__(
        self, api_url: str, mountpoint: Path, cache_dir: Path, cache_size: str, log_file: Path | None
    ) -> None:
        self.mountpoint = mountpoint
        self.code = code_fingerprint()
        mountpoint.mkdir(parents=True, exist_ok=True)
        args = ["mount", "-f", str(mountpoint), "--api-url", api_url, "--cache-dir", str(cache_dir)]
        args += ["--cache-size", cache_size, "--layout", "uid"]
        if log_file is not None:
            args += ["-v", "--log-file", str(log_file)]
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            nbiafs(*args), env=child_env(), stdin=subprocess.DEVNULL, stderr=self.stderr
        )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):  # readiness, not a measurement
            if self.proc.poll() is not None:
                self.stderr.seek(0)
                err = self.stderr.read()[-2000:].decode(errors="replace").strip()
                self.stderr.close()
                raise RuntimeError(f"nbiafs mount exited with {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{mountpoint} was not mounted within {MOUNT_TIMEOUT:.0f} s")
            time.sleep(0.02)

    def vm_hwm(self) -> int | None:
        """Peak resident set size of the mount process, bytes (VmHWM)."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        """Unmount (fusermount3 -u), wait for the process; kill and lazily unmount as a last resort."""
        try:
            if os.path.ismount(self.mountpoint):
                fuse_unmount(self.mountpoint)
            if self.proc.poll() is None:
                with contextlib.suppress(StepTimeoutError):  # killed by the watchdog
                    wait_with_deadline(self.proc, UMOUNT_TIMEOUT, "nbiafs mount")
        finally:
            if os.path.ismount(self.mountpoint):
                fuse_unmount(self.mountpoint, lazy=True)
            self.stderr.close()


# -- measurements ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    requests: collections.Counter[str]
    extra: dict[str, float] = field(default_factory=dict)
    code: str = ""  # the nbiafs code a mount ran (code_fingerprint)

    @property
    def total(self) -> int:
        return sum(v for k, v in self.requests.items() if not k.startswith("!"))


@dataclass
class Scenario:
    key: str
    label: str
    nbytes: int = 0
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str = "seconds") -> float:
        values = [
            s.seconds if attr == "seconds" else s.extra[attr]
            for s in self.samples
            if attr == "seconds" or attr in s.extra
        ]
        return statistics.median(values) if values else float("nan")

    def requests(self) -> int:
        return int(statistics.median(s.total for s in self.samples)) if self.samples else 0

    def endpoints(self) -> str:
        if not self.samples:
            return ""
        merged: collections.Counter[str] = collections.Counter()
        for s in self.samples:
            merged.update(s.requests)
        n = len(self.samples)
        return ", ".join(f"{k} {v / n:g}" for k, v in sorted(merged.items(), key=lambda kv: -kv[1]))


class Failures:
    """Byte-identity failures, collected (a run reports them all and exits 1)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.checked = 0

    def add(self, text: str) -> None:
        self.items.append(text)
        print(f"    IDENTITY FAILURE: {text}", flush=True)


def verify_tree(copy: Path, corpus: Corpus, rel: Path, failures: Failures, what: str) -> None:
    """Every file under ``corpus.root/rel`` is in ``copy`` with the same bytes, and nothing else."""
    expected = {f.relative_to(rel): f for s_rel in [rel] for f in _files_under(corpus, s_rel)}
    found = {p.relative_to(copy) for p in copy.rglob("*") if p.is_file()}
    if found != set(expected):
        failures.add(
            f"{what}: {len(found)} files, expected {len(expected)} ({len(found ^ set(expected))} differ)"
        )
        return
    for name, source in expected.items():
        failures.checked += 1
        if sha256_file(copy / name) != corpus.digest(source):
            failures.add(f"{what}: {name} differs from the corpus")


def _files_under(corpus: Corpus, rel: Path) -> list[Path]:
    out: list[Path] = []
    for series in corpus.collections[rel.parts[0]]:
        if series.rel == rel or rel in series.rel.parents:
            out.extend(series.files)
    return out


def verify_digests(
    files: list[Path], corpus: Corpus, sources: list[Path], failures: Failures, what: str
) -> None:
    """The files hold exactly the corpus files ``sources`` (as a multiset of contents)."""
    got = collections.Counter(sha256_file(p) for p in files)
    want = collections.Counter(corpus.digest(s) for s in sources)
    failures.checked += len(files)
    if got != want:
        failures.add(
            f"{what}: {sum((got - want).values())} unexpected, {sum((want - got).values())} missing files"
        )


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Bench:
    def __init__(
        self, args: argparse.Namespace, corpus: Corpus, server: Server, work: Path, scratch: Path
    ) -> None:
        self.args = args
        self.corpus = corpus
        self.server = server
        self.work = work
        self.scratch = scratch
        self.mounts: list[Mount] = []
        self.scenarios: dict[str, Scenario] = {}
        self.failures = Failures()
        self.hwm: list[tuple[str, int]] = []
        self.mount_counter = 0

    # helpers

    def scenario(self, key: str, label: str, nbytes: int = 0) -> Scenario:
        if key not in self.scenarios:
            self.scenarios[key] = Scenario(key, label, nbytes)
        return self.scenarios[key]

    @contextlib.contextmanager
    def mount(self, cache_dir: Path, cache_size: str = "20G") -> Iterator[Mount]:
        self.mount_counter += 1
        mountpoint = self.work / f"mnt{self.mount_counter}"
        log_file = self.work / "mount.log" if self.args.mount_log else None
        m = Mount(self.server.api_url, mountpoint, cache_dir, cache_size, log_file)
        self.mounts.append(m)
        try:
            yield m
        finally:
            m.stop()
            self.mounts.remove(m)
            with contextlib.suppress(OSError):
                mountpoint.rmdir()

    def measure_cmd(self, cmd: list[str], stdout: Any = subprocess.DEVNULL) -> Sample:
        log = self.server.log
        log.mark()
        seconds = run_timed(cmd, self.scratch, stdout=stdout)
        return Sample(seconds, log.since_mark())

    def measure_call(self, func: Callable[[], dict[str, float] | None], what: str) -> Sample:
        log = self.server.log
        log.mark()

        def timed() -> tuple[float, dict[str, float] | None]:
            start = time.perf_counter()
            extra = func()
            return time.perf_counter() - start, extra

        seconds, extra = in_thread(timed, STEP_TIMEOUT, what)
        return Sample(seconds, log.since_mark(), extra or {})

    def session(self, connections: int) -> requests.Session:
        """A plain requests session with ``connections`` pooled connections (the references do not use nbiafs)."""
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=connections, pool_block=True)
        session.mount("http://", adapter)
        return session

    def download(self, session: requests.Session, endpoint: str, params: dict[str, str], out: Path) -> None:
        """GET ``endpoint`` into ``out``, streamed; raises unless the answer is 200 with a body."""
        url = f"{self.server.api_url}/{endpoint}"
        with session.get(url, params=params, stream=True, timeout=60) as answer:
            answer.raise_for_status()
            size = 0
            with open(out, "wb") as fh:
                for chunk in answer.iter_content(1 << 20):
                    fh.write(chunk)
                    size += len(chunk)
        if size == 0:
            raise RuntimeError(f"{endpoint} {params} answered with an empty body")

    # scenarios

    def copy_scenarios(self, name: str, collection: str, rel: Path, rep: int) -> None:
        """Cold and warm ``cp -r`` of ``rel`` through a fresh mount, and the references, for one repetition."""
        corpus = self.corpus
        files = _files_under(corpus, rel)
        nbytes = sum((corpus.root / f).stat().st_size for f in files)
        series = [s for s in corpus.series(collection) if s.rel == rel or rel in s.rel.parents]
        print(
            f"  {name} rep {rep + 1}: {len(series)} series, {len(files)} files, {nbytes / 2**20:.1f} MiB",
            flush=True,
        )

        # through a fresh mount: cold, then warm
        cache = self.scratch / f"cache-{name}-{rep}"
        with self.mount(cache) as m:
            src = m.mountpoint / rel
            cold = self.measure_cmd(["cp", "-r", str(src), str(self.scratch / "cold")])
            warm = self.measure_cmd(["cp", "-r", str(src), str(self.scratch / "warm")])
            hwm = m.vm_hwm()
            cold.code = warm.code = m.code
        if hwm:
            cold.extra["hwm"] = hwm
            self.hwm.append((f"{name} cold+warm", hwm))
        self.scenario(f"{name}.cold", f"{name}: mount, cold cp -r", nbytes).samples.append(cold)
        self.scenario(f"{name}.warm", f"{name}: mount, warm cp -r", nbytes).samples.append(warm)
        verify_tree(self.scratch / "cold", corpus, rel, self.failures, f"{name} cold cp")
        verify_tree(self.scratch / "warm", corpus, rel, self.failures, f"{name} warm cp")
        for p in ("cold", "warm"):
            clear(self.scratch / p)
        clear(cache)
        print(
            f"    mount cold {cold.seconds:.3f} s ({cold.total} req), warm {warm.seconds:.3f} s", flush=True
        )

        # one getImage ZIP per series, downloaded and unzipped
        out = self.scratch / "zip"
        out.mkdir()
        session = self.session(1)

        def zips() -> dict[str, float]:
            download = 0.0
            for s in series:
                archive = out / f"{s.uid}.zip"
                t0 = time.perf_counter()
                self.download(session, "getImage", {"SeriesInstanceUID": s.uid}, archive)
                download += time.perf_counter() - t0
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(out / s.uid)
                archive.unlink()
            return {"download": download}

        try:
            sample = self.measure_call(zips, "getImage ZIPs")
        finally:
            session.close()
        label = f"{name}: getImage ZIP + unzip" + (
            f" ({len(series)} one after another)" if len(series) > 1 else ""
        )
        self.scenario(f"{name}.zip", label, nbytes).samples.append(sample)
        verify_digests([p for p in out.rglob("*.dcm")], corpus, files, self.failures, f"{name} ZIP")
        clear(out)
        print(f"    ZIP {sample.seconds:.3f} s (download {sample.extra['download']:.3f} s)", flush=True)

        # getSingleImage: sequential, then 8 and 16 threads
        jobs = [(s.uid, f) for s in series for f in s.files]
        for threads in ([1] if not self.args.skip_loop else []) + [8, 16]:
            out.mkdir()
            session = self.session(threads)

            def fetch(job: tuple[str, Path], session: requests.Session = session) -> None:
                series_uid, rel_file = job
                params = {"SeriesInstanceUID": series_uid, "SOPInstanceUID": rel_file.stem}
                self.download(session, "getSingleImage", params, out / rel_file.name)

            def run_all(threads: int = threads, fetch: Callable[[tuple[str, Path]], None] = fetch) -> None:
                if threads == 1:
                    for job in jobs:
                        fetch(job)
                else:
                    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                        list(pool.map(fetch, jobs))

            try:
                sample = self.measure_call(run_all, f"getSingleImage x{threads}")
            finally:
                session.close()
            key = "loop" if threads == 1 else f"par{threads}"
            label = "getSingleImage loop" if threads == 1 else f"getSingleImage, {threads} threads"
            self.scenario(f"{name}.{key}", f"{name}: {label}", nbytes).samples.append(sample)
            verify_tree_flat(out, corpus, files, self.failures, f"{name} {label}")
            clear(out)
            print(f"    {label} {sample.seconds:.3f} s", flush=True)

        # local disk, page cache warm
        source = corpus.root / rel
        for f in files:
            (corpus.root / f).read_bytes()
        local = self.measure_cmd(["cp", "-r", str(source), str(self.scratch / "local")])
        self.scenario(f"{name}.local", f"{name}: local disk cp -r (page cache warm)", nbytes).samples.append(
            local
        )
        verify_tree(self.scratch / "local", corpus, rel, self.failures, f"{name} local cp")
        clear(self.scratch / "local")
        print(f"    local disk {local.seconds:.3f} s", flush=True)

    def listing_scenarios(self, rep: int) -> None:
        cache = self.scratch / f"cache-listing-{rep}"
        out = self.scratch / "ls.txt"
        cmd_of: Callable[[Mount], list[str]] = lambda m: ["ls", "-lR", str(m.mountpoint / LISTING)]  # noqa: E731
        with self.mount(cache) as m:
            with open(out, "wb") as fh:
                cold = self.measure_cmd(cmd_of(m), stdout=fh)
            entries = sum(1 for line in out.read_text().splitlines() if line.endswith(".dcm"))
            with open(out, "wb") as fh:
                warm = self.measure_cmd(cmd_of(m), stdout=fh)
            cold.code = warm.code = m.code
        with self.mount(cache) as m, open(out, "wb") as fh:
            again = self.measure_cmd(cmd_of(m), stdout=fh)
            again.code = m.code
        clear(cache)
        out.unlink()
        expected = len(self.corpus.files(LISTING))
        if entries != expected:
            self.failures.add(f"ls -lR listed {entries} instances, the corpus has {expected}")
        cold.extra["entries"] = entries
        self.scenario("ls.cold", "listing: ls -lR, cold (fresh mount and cache)").samples.append(cold)
        self.scenario("ls.warm", "listing: ls -lR, again on the same mount").samples.append(warm)
        self.scenario("ls.remount", "listing: ls -lR after a remount on the same cache").samples.append(again)
        print(
            f"  listing rep {rep + 1}: cold {cold.seconds:.3f} s ({cold.total} req), warm {warm.seconds:.3f} s "
            f"({warm.total} req), after remount {again.seconds:.3f} s ({again.total} req)",
            flush=True,
        )

    def rss_scenario(self, rep: int) -> None:
        rel = self.corpus.series(CT)[0].rel
        nbytes = self.corpus.nbytes(CT)
        cache_size = f"{max(1, nbytes // 4 // 2**20)}M"
        cache = self.scratch / f"cache-rss-{rep}"
        with self.mount(cache, cache_size) as m:
            sample = self.measure_cmd(["cp", "-r", str(m.mountpoint / rel), str(self.scratch / "rss")])
            hwm = m.vm_hwm()
            sample.code = m.code
        if hwm:
            sample.extra["hwm"] = hwm
            self.hwm.append((f"CT through a {cache_size} cache", hwm))
        self.scenario("rss", f"CT: mount, cold cp -r through a {cache_size} cache", nbytes).samples.append(
            sample
        )
        verify_tree(self.scratch / "rss", self.corpus, rel, self.failures, "CT through a small cache")
        clear(self.scratch / "rss")
        clear(cache)
        print(
            f"  small cache rep {rep + 1}: {sample.seconds:.3f} s, VmHWM {(hwm or 0) / 2**20:.1f} MiB",
            flush=True,
        )


def verify_tree_flat(out: Path, corpus: Corpus, files: list[Path], failures: Failures, what: str) -> None:
    """getSingleImage wrote ``<SOPInstanceUID>.dcm`` per instance: compare each with its corpus file."""
    by_name = {f.name: f for f in files}
    found = {p.name for p in out.iterdir()}
    if found != set(by_name):
        failures.add(f"{what}: {len(found)} files, expected {len(by_name)}")
        return
    for name, source in by_name.items():
        failures.checked += 1
        if sha256_file(out / name) != corpus.digest(source):
            failures.add(f"{what}: {name} differs from the corpus")


# -- scratch space -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(work: Path, size: str) -> Iterator[tuple[Path, str]]:
    """A tmpfs of our own under ``work`` (unmounted at the end); /dev/shm if mounting one is not allowed."""
    target = work / "tmpfs"
    target.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        rc = quiet_command(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "nbiafs-bench", str(target)], 30
        )
        mounted = rc == 0 and os.path.ismount(target)
    if mounted:
        try:
            yield target, f"tmpfs of {size} at {target}"
        finally:
            for child in target.iterdir():
                clear(child) if child.is_dir() else child.unlink()
            if quiet_command(["umount", str(target)], UMOUNT_TIMEOUT) != 0:
                quiet_command(["umount", "-l", str(target)], UMOUNT_TIMEOUT)
        return
    shm = Path(tempfile.mkdtemp(prefix="nbiafs-bench-", dir="/dev/shm"))
    try:
        yield shm, f"/dev/shm ({shm})"
    finally:
        clear(shm)


# -- report ------------------------------------------------------------------------------------------------


def fmt_s(x: float) -> str:
    return f"{x:.3f}" if x == x else "n/a"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def report(
    bench: Bench, args: argparse.Namespace, info: dict[str, str]
) -> list[tuple[str, str, str, bool | None]]:
    sc = bench.scenarios
    print()
    print(
        f"nbiafs benchmark ({'quick' if args.quick else 'full'}): {args.latency * 1000:.0f} ms per request, "
        f"{args.bandwidth / 1e6:g} MB/s per connection, medians of {args.repeat}"
    )
    print(
        f"machine: {info['nproc']} x {info['cpu']}, Linux {info['kernel']}, Python {info['python']}, {info['date']}"
    )
    print()
    print("| scenario | median s | min-max s | MiB/s | requests | requests by endpoint (mean per run) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for s in sc.values():
        secs = [x.seconds for x in s.samples]
        rate = f"{s.nbytes / 2**20 / s.median():.1f}" if s.nbytes and s.median() > 0 else ""
        print(
            f"| {s.label} | {fmt_s(s.median())} | {min(secs):.3f}-{max(secs):.3f} | {rate} | {s.requests()} | "
            f"{s.endpoints()} |"
        )
    if bench.hwm:
        print()
        print("| mount peak RSS (VmHWM), per mount | median MiB | max MiB |")
        print("| --- | ---: | ---: |")
        by_label: dict[str, list[int]] = {}
        for label, hwm in bench.hwm:
            by_label.setdefault(label, []).append(hwm)
        for label, values in by_label.items():
            print(f"| {label} | {statistics.median(values) / 2**20:.1f} | {max(values) / 2**20:.1f} |")
    zip_ct = sc.get("CT.zip")
    if zip_ct and "CT.cold" in sc:
        download = statistics.median(x.extra["download"] for x in zip_ct.samples)
        print()
        print(
            f"(CT: the ZIP reference's download alone took {download:.3f} s (median), the unzip the rest; "
            f"CT cold cp -r / ZIP download alone = {sc['CT.cold'].median() / download:.2f}x)"
        )
    codes = {x.code for s in sc.values() for x in s.samples if x.code}
    print()
    print(f"nbiafs under test: {info['source']}")
    if len(codes) > 1:
        print(
            f"WARNING: the nbiafs code changed during the run ({len(codes)} versions: {', '.join(sorted(codes))}): "
            "the mount figures mix them; run against a frozen copy (--source)"
        )
    elif codes:
        print(f"nbiafs code fingerprint (nbiafs/*.py): {codes.pop()}, unchanged during the run")

    def m(key: str) -> float:
        return sc[key].median() if key in sc else float("nan")

    def ratio_goal(label: str, a: str, b: str, limit: float) -> tuple[str, str, str, bool | None]:
        value = m(a) / m(b) if m(b) > 0 else float("nan")
        ok = None if value != value else value <= limit
        return label, "n/a" if ok is None else f"{value:.2f}x", f"<= {limit}x", ok

    goals: list[tuple[str, str, str, bool | None]] = []
    goals.append(ratio_goal("CT cold cp -r / getSingleImage at 8 threads", "CT.cold", "CT.par8", 1.2))
    goals.append(ratio_goal("CT cold cp -r / one ZIP stream + unzip", "CT.cold", "CT.zip", 0.5))
    goals.append(ratio_goal("tiny cold cp -r / one ZIP stream + unzip", "tiny.cold", "tiny.zip", 3.0))
    goals.append(
        ratio_goal("MR collection cold cp -r / its ZIPs one after another", "MR.cold", "MR.zip", 0.6)
    )
    goals.append(ratio_goal("CT warm cp -r / local disk", "CT.warm", "CT.local", 1.3))
    goals.append(ratio_goal("tiny warm cp -r / local disk", "tiny.warm", "tiny.local", 2.0))
    if "ls.cold" in sc:
        n_series = len(bench.corpus.series(LISTING))
        dirs = bench.corpus.directories(LISTING) + 1  # and the mount's root, listed to find the collection
        cold = sc["ls.cold"]
        goals.append(
            (
                f"cold ls -lR of {n_series} series, seconds",
                f"{cold.median():.2f} s",
                "<= 8 s",
                cold.median() <= 8,
            )
        )
        worst = max(s.total for s in cold.samples)
        goals.append(
            (
                f"cold ls -lR requests ({dirs} directories incl. the root)",
                f"{worst}",
                f"<= {dirs}",
                worst <= dirs,
            )
        )
        again = max(s.total for s in sc["ls.remount"].samples)
        goals.append(("ls -lR requests after a remount on the same cache", f"{again}", "0", again == 0))
    small_cache = [h for label, h in bench.hwm if label.startswith("CT through")]
    if small_cache:
        worst_hwm = max(small_cache)
        goals.append(
            (
                "mount peak RSS copying more than the cache",
                f"{worst_hwm / 2**20:.0f} MiB",
                "< 200 MB",
                worst_hwm < 200e6,
            )
        )
    goals.append(
        (
            "copies byte-identical to the corpus",
            f"{bench.failures.checked - len(bench.failures.items)}/{bench.failures.checked} files",
            "all",
            not bench.failures.items,
        )
    )
    print()
    print("| goal (issue 9) | measured | goal | |")
    print("| --- | ---: | ---: | --- |")
    for label, value, goal, ok in goals:
        verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
        print(f"| {label} | {value} | {goal} | {verdict} |")
    if args.quick:
        print()
        print("(quick mode: smaller corpora and one repetition; the goals are meant for the full run)")
    return goals


def leftovers(work: Path) -> list[str]:
    """Mounts under the work directory still in /proc/mounts."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 1 and parts[1].startswith(str(work)):
                out.append(parts[1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpora, 1 repetition (for development)")
    parser.add_argument(
        "--repeat", type=int, help="repetitions of every scenario (default 3; 1 with --quick)"
    )
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to every request (0.02)")
    parser.add_argument(
        "--bandwidth", type=float, default=25e6, help="bytes/s per connection (25e6; 0: none)"
    )
    parser.add_argument(
        "--corpus-dir", type=Path, help="keep generated corpora here between runs (by version)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=("tiny", "CT", "MR", "listing", "rss"),
        help="run only these (repeatable)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="the nbiafs checkout that serves and mounts (default: this one); e.g. a `git archive` export, so "
        "edits made during the run do not change the code under test",
    )
    parser.add_argument("--skip-loop", action="store_true", help="skip the sequential getSingleImage loops")
    parser.add_argument("--tmpfs-size", default="8G", help="size of the scratch tmpfs (8G)")
    parser.add_argument("--mount-log", action="store_true", help="write the mounts' log (-v) to the work dir")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs; its path is printed)"
    )
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    sizes = QUICK if args.quick else FULL
    only = set(args.only or ("tiny", "CT", "MR", "listing", "rss"))

    if not os.path.exists("/dev/fuse"):
        print("needs /dev/fuse", file=sys.stderr)
        return 2
    global SOURCE
    SOURCE = args.source.resolve()
    if not (SOURCE / "nbiafs" / "__main__.py").exists():
        print(f"--source {SOURCE} has no nbiafs/__main__.py", file=sys.stderr)
        return 2
    info = machine()
    info["source"] = source_description()
    work = Path(tempfile.mkdtemp(prefix="nbiafs-bench-"))
    corpus_tmp: Path | None = None
    server: Server | None = None
    bench: Bench | None = None
    status = 1
    try:
        base = args.corpus_dir
        if base is None:
            corpus_tmp = base = Path(tempfile.mkdtemp(prefix="nbiafs-bench-corpus-", dir="/var/tmp"))
        base.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        corpus, new = corpora.prepare(base, sizes)
        print(
            f"corpus {'generated' if new else 'reused'} in {time.perf_counter() - t0:.1f} s at {corpus.root}: "
            + ", ".join(
                f"{c} {len(corpus.series(c))} series / {len(corpus.files(c))} files / "
                f"{corpus.nbytes(c) / 2**20:.1f} MiB"
                for c in corpus.collections
            ),
            flush=True,
        )
        saving = corpora.deflate_saving([corpus.root / f for f in corpus.files(CT)[:20]])
        print(f"CT: DEFLATE level 1 saves {saving:.0%} (first 20 instances)", flush=True)
        with tmpfs(work, args.tmpfs_size) as (scratch, where):
            print(f"scratch: {where}", flush=True)
            t0 = time.perf_counter()
            server = Server(corpus.root, work, args.latency, args.bandwidth)
            print(f"server {server.api_url} ready in {time.perf_counter() - t0:.1f} s", flush=True)
            bench = Bench(args, corpus, server, work, scratch)
            try:
                for rep in range(args.repeat):
                    if "tiny" in only:
                        bench.copy_scenarios("tiny", TINY, corpus.series(TINY)[0].rel, rep)
                    if "CT" in only:
                        bench.copy_scenarios("CT", CT, corpus.series(CT)[0].rel, rep)
                    if "MR" in only:
                        bench.copy_scenarios("MR", MR, Path(MR), rep)
                    if "listing" in only:
                        bench.listing_scenarios(rep)
                    if "rss" in only:
                        bench.rss_scenario(rep)
            finally:
                for m in list(bench.mounts):
                    with contextlib.suppress(Exception):
                        m.stop()
                server.stop()
        goals = report(bench, args, info)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "mode": "quick" if args.quick else "full",
                        "sizes": sizes.__dict__,
                        "latency": args.latency,
                        "bandwidth": args.bandwidth,
                        "repeat": args.repeat,
                        "scenarios": {
                            k: {
                                "label": s.label,
                                "code": [x.code for x in s.samples],
                                "bytes": s.nbytes,
                                "seconds": [x.seconds for x in s.samples],
                                "requests": [dict(x.requests) for x in s.samples],
                                "extra": [x.extra for x in s.samples],
                            }
                            for k, s in bench.scenarios.items()
                        },
                        "vm_hwm": bench.hwm,
                        "goals": [
                            {"goal": g[0], "measured": g[1], "target": g[2], "pass": g[3]} for g in goals
                        ],
                        "identity_failures": bench.failures.items,
                    },
                    indent=1,
                )
            )
        status = 0 if not bench.failures.items else 1
    finally:
        if server is not None and server.proc.poll() is None:
            server.stop()
        left = leftovers(work)
        for path in left:
            quiet_command(["umount", "-l", path], UMOUNT_TIMEOUT)
        still = leftovers(work)
        print(
            "\ncleanup: no mount left behind"
            if not still
            else f"\ncleanup: STILL MOUNTED: {', '.join(still)}",
            flush=True,
        )
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            clear(work)
        if corpus_tmp is not None:
            clear(corpus_tmp)
    return status


if __name__ == "__main__":
    sys.exit(main())

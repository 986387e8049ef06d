"""Benchmark: reading a 200-instance CT series through an nbiafs mount, against the other ways to get it.

Starts the bundled archive server in this process (``NBIAFS-Bench``: one 200-instance CT series) with an
injected latency per request, then measures

1. a cold ``cp -r`` of the series out of a fresh mount (``--layout uid``, empty cache),
2. the same series as one getImage ZIP, downloaded and unzipped,
3. a sequential loop of getSingleImage calls,
4. a warm ``cp -r`` (every instance in the disk cache) beside
5. ``cp -r`` of the same files from local disk (page cache warm),
6. ``ls -lR`` of the collection: cold (fresh mount and cache), warm (same mount), and after a remount on the
   same cache directory (listings persisted on disk),

with the requests each made (from the server's request log), and prints the figures and ratios. It checks that
all three ways deliver byte-identical instances. Always unmounts and stops the server, with deadlines.

Usage: ``python benchmarks/bench_mount.py [--latency 0.02] [--log-file FILE]`` (needs /dev/fuse; run as
root or with fusermount3). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from nbiafs.api.client import NbiaClient  # noqa: E402
from nbiafs.api.profiles import resolve_profile  # noqa: E402
from nbiafs.server import ArchiveServer, ServerConfig  # noqa: E402

COLLECTION = "NBIAFS-Bench"
MOUNT_TIMEOUT = 60.0  # seconds for a mount to answer
STEP_TIMEOUT = 600.0  # seconds for any one measured command
UMOUNT_TIMEOUT = 30.0


@dataclass
class Figure:
    """One measurement: wall-clock seconds and the requests the server answered meanwhile."""

    label: str
    seconds: float
    requests: int | None = None


class RequestCounter:
    """Counts the server's answered requests between two points (from ``srv.requests``)."""

    def __init__(self, srv: ArchiveServer) -> None:
        self.srv = srv

    def count(self) -> int:
        return len(self.srv.requests)

    @contextlib.contextmanager
    def measure(self, label: str, figures: list[Figure]) -> Iterator[None]:
        before = self.count()
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        time.sleep(0.05)  # let the server finish logging the last answer
        figures.append(Figure(label, seconds, self.count() - before))


def nbiafs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nbiafs", *args]


def child_env() -> dict[str, str]:
    """The environment of the mount: this checkout importable, no credentials (the guest account is used)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBIA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


class Mount:
    """``nbiafs mount -f`` in a child process; :meth:`stop` unmounts (with deadlines) and reaps it."""

    def __init__(self, url: str, mountpoint: Path, cache_dir: Path, log_file: Path | None) -> None:
        self.mountpoint = mountpoint
        args = ["mount", str(mountpoint), "--api-url", url, "--token-url", f"{url}/nbia-api/oauth/token"]
        args += ["--cache-dir", str(cache_dir), "--cache-size", "2G", "--layout", "uid", "-f"]
        if log_file is not None:
            args += ["-v", "--log-file", str(log_file)]
        self.proc = subprocess.Popen(
            nbiafs_command(*args), env=child_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"nbiafs mount exited with {self.proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{mountpoint} was not mounted within {MOUNT_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Unmount (nbiafs umount, then a lazy fusermount3 as a last resort) and wait for the process."""
        try:
            if os.path.ismount(self.mountpoint):
                subprocess.run(
                    nbiafs_command("umount", str(self.mountpoint)),
                    env=child_env(),
                    timeout=UMOUNT_TIMEOUT,
                    capture_output=True,
                    check=False,
                )
            try:
                self.proc.wait(timeout=UMOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            if os.path.ismount(self.mountpoint):
                tool = shutil.which("fusermount3") or shutil.which("fusermount") or "umount"
                flag = "-l" if tool == "umount" else "-uz"
                subprocess.run([tool, flag, str(self.mountpoint)], timeout=UMOUNT_TIMEOUT, check=False)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run a measured shell command, with a deadline; raises if it fails."""
    return subprocess.run(cmd, timeout=STEP_TIMEOUT, check=True, **kwargs)


def sop_digests(files: list[Path]) -> dict[str, str]:
    """SOPInstanceUID -> sha256 of the file, for every DICOM file in ``files``."""
    out: dict[str, str] = {}
    for path in files:
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = hashlib.sha256(data).hexdigest()
    return out


def dcm_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm") if p.is_file())


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to every request (0.02)")
    parser.add_argument("--log-file", type=Path, help="write the mounts' debug log here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (its path is printed)"
    )
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="nbiafs-bench-"))
    srv = ArchiveServer(ServerConfig(latency=args.latency), host="127.0.0.1", port=0)
    mounts: list[Mount] = []
    figures: list[Figure] = []
    try:
        srv.start()
        counter = RequestCounter(srv)
        client = NbiaClient(resolve_profile(api_url=srv.url, token_url=f"{srv.url}/nbia-api/oauth/token"))
        try:
            [series] = client.series(collection=COLLECTION)
            uids = client.sop_instance_uids(series.series_instance_uid)
            size = len(uids)

            # (2) one getImage ZIP, unzipped
            zip_dir = scratch / "zip"
            zip_dir.mkdir()
            with counter.measure("getImage ZIP + unzip", figures), open(scratch / "series.zip", "w+b") as f:
                client.download_series(series.series_instance_uid, f)
                f.seek(0)
                with zipfile.ZipFile(f) as zf:
                    zf.extractall(zip_dir)
            zip_figure = figures[-1]

            # (3) a sequential loop of getSingleImage
            loop_dir = scratch / "loop"
            loop_dir.mkdir()
            with counter.measure("getSingleImage loop", figures):
                for uid in uids:
                    with open(loop_dir / f"{uid}.dcm", "wb") as f:
                        client.download_instance(series.series_instance_uid, uid, f)
            loop_figure = figures[-1]
        finally:
            client.close()

        # (1) cold cp -r out of a fresh mount, (4) warm cp -r, (5) local cp -r
        mnt = scratch / "mnt-a"
        mnt.mkdir()
        mount = Mount(srv.url, mnt, scratch / "cache-a", args.log_file)
        mounts.append(mount)
        source = mnt / COLLECTION / str(series.patient_id) / str(series.study_instance_uid)
        source = source / series.series_instance_uid
        with counter.measure("mount, cold cp -r", figures):
            run(["cp", "-r", str(source), str(scratch / "cold")])
        cold = figures[-1]
        with counter.measure("mount, warm cp -r", figures):
            run(["cp", "-r", str(source), str(scratch / "warm")])
        warm = figures[-1]
        run(["cat", *map(str, dcm_files(scratch / "cold"))], stdout=subprocess.DEVNULL)  # page cache
        with counter.measure("local disk cp -r", figures):
            run(["cp", "-r", str(scratch / "cold"), str(scratch / "local")])
        local = figures[-1]
        mount.stop()
        mounts.remove(mount)

        # (6) ls -lR of the collection: cold, warm, after a remount on the same cache
        listings: list[Figure] = []
        cache_b = scratch / "cache-b"
        mnt_b = scratch / "mnt-b"
        mnt_b.mkdir()
        mount = Mount(srv.url, mnt_b, cache_b, args.log_file)
        mounts.append(mount)
        ls = ["ls", "-lR", str(mnt_b / COLLECTION)]
        with counter.measure("ls -lR, cold", listings):
            listing = run(ls, capture_output=True).stdout
        with counter.measure("ls -lR, warm", listings):
            run(ls, capture_output=True)
        mount.stop()
        mounts.remove(mount)
        mount = Mount(srv.url, mnt_b, cache_b, args.log_file)
        mounts.append(mount)
        with counter.measure("ls -lR, after remount", listings):
            run(ls, capture_output=True)
        mount.stop()
        mounts.remove(mount)

        # every way gave the same bytes for the same SOPInstanceUIDs
        reference = sop_digests(dcm_files(loop_dir))
        checks = {
            "zip": sop_digests(dcm_files(zip_dir)) == reference,
            "cold": sop_digests(dcm_files(scratch / "cold")) == reference,
            "warm": sop_digests(dcm_files(scratch / "warm")) == reference,
        }
        total_bytes = sum(p.stat().st_size for p in dcm_files(loop_dir))
    finally:
        for mount in mounts:
            with contextlib.suppress(Exception):
                mount.stop()
        srv.stop()
        if args.keep:
            print(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    mib = total_bytes / 2**20
    latency_ms = args.latency * 1000
    print(f"nbiafs benchmark: {COLLECTION}, {size} instances, {mib:.1f} MiB, {latency_ms:.0f} ms per request")
    print()
    for fig in [cold, zip_figure, loop_figure, warm, local]:
        reqs = f"{fig.requests:5d} requests" if fig.requests is not None else ""
        rate = f"{mib / fig.seconds:8.1f} MiB/s" if fig.seconds > 0 else ""
        print(f"  {fig.label:<24} {fig.seconds:8.3f} s {rate}  {reqs}")
    print()
    print(f"  ls -lR {COLLECTION} ({len(listing.splitlines())} lines):")
    for fig in listings:
        print(f"    {fig.label:<22} {fig.seconds:8.3f} s  {fig.requests:5d} requests")
    print()
    print(f"  mount cold / ZIP          {ratio(cold.seconds, zip_figure.seconds)}")
    print(f"  mount cold / loop         {ratio(cold.seconds, loop_figure.seconds)}")
    print(f"  mount warm / local disk   {ratio(warm.seconds, local.seconds)}")
    print(f"  identical bytes (zip, cold, warm vs loop): {', '.join(f'{k}={v}' for k, v in checks.items())}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

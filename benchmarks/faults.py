"""Fault figures: for each hostile fault of the bundled server, mount, read a collection, and print a table.

For each fault (see ``ServerConfig`` in nbiafs/server/config.py): start a bundled server (in this process),
mount it (``--timeout`` small, so the figures come quickly), list the collection while the server is healthy
(except for the faults that hit listings: huge JSON), switch the fault on, then walk and read every file of
the collection in a subprocess with a deadline. Printed per fault:

- ``ok``: files read whole; ``failed``: failed reads and listings, by errno;
- ``wrong``: files read whose bytes differ from the server's own (must be 0), and ``bad cache``: entries of
  the cache directory whose bytes are not the server's bytes for their SOPInstanceUID (must be 0);
- ``worst s``: the longest open+read (or listing) that ended in an error; ``hung``: readers still running at
  the deadline; ``D``: samples (every 0.1 s) in which the reader or the mount was in uninterruptible sleep
  after the documented deadline for one operation;
- ``RSS MiB``: the mount process's peak resident memory (VmHWM).

Usage: ``python benchmarks/faults.py [--collection NAME] [--timeout S] [--deadline S] [--only FAULT ...]`` as
root (needs /dev/fuse). Every mount is unmounted, and every server stopped, whatever happens.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nbiafs.server import ArchiveServer, ServerConfig  # noqa: E402
from tests.mountutil import mounted  # noqa: E402

READER = r"""
import hashlib, json, os, sys, time
def emit(rec):
    print(json.dumps(rec), flush=True)
def walk(path):
    start = time.monotonic()
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        emit({"path": path, "kind": "dir", "errno": exc.errno, "seconds": time.monotonic() - start})
        return
    for name in names:
        full = os.path.join(path, name)
        if not name.endswith(".dcm"):
            walk(full)
            continue
        start = time.monotonic()
        try:
            with open(full, "rb") as f:
                data = f.read()
            emit({"path": full, "kind": "file", "sha256": hashlib.sha256(data).hexdigest(),
                  "seconds": time.monotonic() - start})
        except OSError as exc:
            emit({"path": full, "kind": "file", "errno": exc.errno, "seconds": time.monotonic() - start})
walk(sys.argv[1])
"""


@dataclass
class Case:
    name: str
    knobs: dict[str, Any] = field(default_factory=dict)
    warm: bool = True  # list the collection before the fault is switched on
    stop: bool = False  # the fault is the server stopping


CASES = [
    Case("none"),
    Case("trickle 1 B/0.5 s", {"trickle_rate": 1.0, "trickle_interval": 0.5}),
    Case("trickle 1 B/2 s", {"trickle_rate": 1.0}),
    Case("body stalls (1 B/5 s)", {"trickle_rate": 1.0, "trickle_interval": 5.0}),
    Case("drop (images)", {"drop_rate": 1.0, "fault_scope": {"drop": ("image", "zip")}}),
    Case("drop (every request)", {"drop_rate": 1.0, "fault_scope": {"drop": ("all",)}}),
    Case("blackhole", {"blackhole": True}),
    Case("truncate close", {"truncate_rate": 1.0, "truncate_style": "close"}),
    Case("truncate chunked", {"truncate_rate": 1.0, "truncate_style": "chunked"}),
    Case("truncate chunked-end", {"truncate_rate": 1.0, "truncate_style": "chunked-end"}),
    Case("corrupt pixels", {"corrupt_rate": 1.0}),
    Case("wrong SOP", {"wrong_sop_rate": 1.0}),
    Case("HTML 200", {"html_rate": 1.0}),
    Case("huge JSON 100 MB", {"huge_json_rate": 1.0, "huge_json_bytes": 100 << 20}, warm=False),
    Case("server stopped", stop=True),
    Case(
        "mixed 30%",
        {
            "drop_rate": 0.3,
            "truncate_rate": 0.3,
            "corrupt_rate": 0.3,
            "wrong_sop_rate": 0.3,
            "html_rate": 0.3,
            "fault_scope": {"drop": ("image", "zip")},
        },
    ),
]


@dataclass
class Result:
    name: str
    ok: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    wrong: int = 0
    bad_cache: int = 0
    worst: float = 0.0
    hung: int = 0
    d_samples: int = 0
    rss_mib: float = 0.0
    note: str = ""


def proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def peak_rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bad_cache_entries(cache: Path, expected: dict[str, str]) -> int:
    """Entries in the cache's data/ whose bytes are not the server's for the SOPInstanceUID in their name."""
    bad = 0
    for path in (cache / "data").rglob("*.dcm"):
        sop = path.name.removesuffix(".dcm").rpartition("_")[2]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if expected.get(f"{sop}.dcm") != digest:
            bad += 1
    return bad


def run_case(case: Case, collection: str, timeout: float, deadline: float, work: Path) -> Result:
    result = Result(case.name)
    srv = ArchiveServer(ServerConfig(seed=0), host="127.0.0.1", port=0)
    srv.start()
    try:
        expected = {
            f"{inst.sop_instance_uid}.dcm": hashlib.sha256(
                srv.archive.instance_bytes(inst.sop_instance_uid)
            ).hexdigest()
            for series, inst in srv.archive.iter_instances()
            if series.collection == collection
        }
        cache = work / "cache"
        with mounted(work / "mnt", srv.url, cache, "--timeout", str(timeout), watchdog=deadline + 120) as m:
            root = m.path / collection
            if case.warm:
                done = subprocess.run(["find", str(root)], capture_output=True, timeout=60, check=False)
                if done.returncode != 0:
                    result.note = "warm-up listing failed"
            for key, value in case.knobs.items():
                setattr(srv.config, key, value)
            if case.stop:
                srv.stop()
            time.sleep(0.3)  # the blackhole knob is followed within 0.05 s
            reader = subprocess.Popen(
                [sys.executable, "-c", READER, str(root)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            # documented bound of one operation: a dropped connection ~2 x connect timeout, a silent server
            # 2 x timeout, plus retries; anything in D state past 4 x timeout + 15 s counts
            bound = 4 * timeout + 15
            states: list[float] = []
            stop_sampling = threading.Event()

            def sample() -> None:
                started = time.monotonic()
                while not stop_sampling.wait(0.1):
                    if time.monotonic() - started > bound and "D" in (
                        proc_state(reader.pid),
                        proc_state(m.proc.pid),
                    ):
                        states.append(time.monotonic())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                out, _ = reader.communicate(timeout=deadline)
            except subprocess.TimeoutExpired:
                result.hung = 1
                reader.kill()
                try:
                    out, _ = reader.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    out = ""
                    result.note = "reader unkillable"
            stop_sampling.set()
            sampler.join(timeout=5)
            result.d_samples = len(states)
            result.rss_mib = peak_rss_mib(m.proc.pid)
            for line in out.splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                if "errno" in rec:
                    result.failed[errno.errorcode.get(rec["errno"], str(rec["errno"]))] += 1
                    result.worst = max(result.worst, rec["seconds"])
                elif rec["kind"] == "file":
                    if expected.get(Path(rec["path"]).name) == rec["sha256"]:
                        result.ok += 1
                    else:
                        result.wrong += 1
        result.bad_cache = bad_cache_entries(cache, expected)
    finally:
        srv.stop()
    return result


def table(results: list[Result]) -> str:
    head = ("fault", "ok", "failed (errno)", "wrong", "bad cache", "worst s", "hung", "D", "RSS MiB", "note")
    rows = [
        (
            r.name,
            str(r.ok),
            ", ".join(f"{k} {v}" for k, v in sorted(r.failed.items())) or "-",
            str(r.wrong),
            str(r.bad_cache),
            f"{r.worst:.1f}",
            str(r.hung),
            str(r.d_samples),
            f"{r.rss_mib:.0f}",
            r.note,
        )
        for r in results
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (head, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--collection", default="NBIAFS-PET-CR", help="collection read (default NBIAFS-PET-CR)"
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="the mount's --timeout (default 2)")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds the reader may take per fault")
    parser.add_argument("--only", action="append", help="run only the faults whose name contains this")
    args = parser.parse_args(argv)
    if not os.path.exists("/dev/fuse"):
        print("needs /dev/fuse", file=sys.stderr)
        return 2
    cases = [c for c in CASES if not args.only or any(o in c.name for o in args.only)]
    results = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="nbiafs-faults-") as tmp:
            start = time.monotonic()
            result = run_case(case, args.collection, args.timeout, args.deadline, Path(tmp))
            print(f"{case.name}: {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
            results.append(result)
    print(f"collection {args.collection}, mount --timeout {args.timeout:g}")
    print(table(results))
    return 1 if any(r.wrong or r.bad_cache or r.hung for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run real NBIA clients, unmodified, against ``nbiafs serve``: the official tcia_utils and a v2 OAuth client.

    python tests/compat/run_tcia_utils.py [--workdir DIR] [--timeout S] [--seed N]

Run it with the project venv's python (it imports ``nbiafs.server`` to know what the server holds). It

1. makes or reuses a separate venv with the pinned tcia_utils (``requirements.txt``, plus ``lock-pyX.Y.txt`` as
   constraints when there is one for this Python), under ``$NBIAFS_COMPAT_CACHE`` or
   ``$XDG_CACHE_HOME/nbiafs-compat`` (default ``~/.cache/nbiafs-compat``), named by the hash of those files, so
   tcia_utils' heavy dependencies (pandas, plotly, IPython, idc-index ...) stay out of the project's venv;
2. writes what the guest may see of the synthetic archive (every UID, count, release date and instance MD5)
   to ``expect.json``;
3. starts ``python -m nbiafs serve --port 0 --port-file ...`` on loopback (default, production-like
   Keycloak-era config) and runs ``tcia_driver.py`` in the compat venv, which points tcia_utils' base URL at
   the server and calls every tcia_utils.nbia function that queries or downloads, then the v2 OAuth sequence
   of the community clients (``v2_oauth_client.py``).

Prints ``PASS name`` / ``FAIL name: why`` / ``SKIP name: why`` lines and ``N passed, N failed, N skipped``.
Exit status: 0 all passed; 1 a FAIL (or the driver broke); 2 the compat venv could not be built; 3 PyPI is
unreachable (the pytest wrapper skips then); 4 the server did not start.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REQUIREMENTS = HERE / "requirements.txt"
DRIVER = HERE / "tcia_driver.py"
EXIT_VENV, EXIT_OFFLINE, EXIT_SERVER = 2, 3, 4
PROBE_URL = "https://pypi.org/simple/tcia-utils/"


def say(message: str) -> None:
    print(f"run_tcia_utils: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# The compat venv


def lock_file() -> Path:
    return HERE / f"lock-py{sys.version_info.major}.{sys.version_info.minor}.txt"


def venv_key() -> str:
    h = hashlib.sha256()
    h.update(f"{sys.implementation.name}-{sys.version_info.major}.{sys.version_info.minor}\n".encode())
    for path in (REQUIREMENTS, lock_file()):
        if path.exists():
            h.update(path.name.encode() + b"\n" + path.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    explicit = os.environ.get("NBIAFS_COMPAT_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "nbiafs-compat"


def probe_url() -> str:
    index = os.environ.get("PIP_INDEX_URL", "").rstrip("/")
    return f"{index}/tcia-utils/" if index else PROBE_URL


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen(probe_url(), timeout=15) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (two runs never build one venv at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_venv(deadline: float) -> Path | int:
    """The compat venv's python, built if missing; or an exit status."""
    root = cache_root()
    key = venv_key()
    venv = root / f"venv-{key}"
    python = venv / "bin" / "python"
    marker = venv / "nbiafs-compat.ok"
    with locked(root / f"venv-{key}.lock"):
        if marker.exists() and python.exists():
            return python
        if venv.exists():
            shutil.rmtree(venv)
        say(f"building the compat venv {venv} (once per requirements hash; about a minute)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        command += ["-r", str(REQUIREMENTS)]
        if lock_file().exists():
            command += ["-c", str(lock_file())]
        try:
            done = subprocess.run(command, timeout=max(30.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say("pip install timed out")
            shutil.rmtree(venv, ignore_errors=True)
            return EXIT_OFFLINE if not pypi_reachable() else EXIT_VENV
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            if not pypi_reachable():
                say(f"PyPI is unreachable ({probe_url()}): cannot install tcia_utils")
                return EXIT_OFFLINE
            say(f"pip install failed with status {done.returncode}")
            return EXIT_VENV
        marker.write_text(key + "\n", encoding="ascii")
        return python


# ---------------------------------------------------------------------------------------------------------
# What the server holds, as the guest sees it


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def referenced_series(data: bytes) -> str | None:
    """The series a segmentation instance references (ReferencedSeriesSequence), if any."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    refs = ds.get("ReferencedSeriesSequence")
    return str(refs[0].SeriesInstanceUID) if refs else None


def expectations(seed: int) -> dict[str, Any]:
    """Everything the driver checks answers against: the guest's view of the synthetic archive."""
    sys.path.insert(0, str(REPO))
    from nbiafs.server import ServerConfig
    from nbiafs.server.synthetic import synthetic_archive
    from nbiafs.server.view import View

    archive = synthetic_archive(seed)
    view = View(archive, ServerConfig(), None)
    collections, patients, studies, series = [], [], [], []
    for coll in view.collections():
        described = coll.description is not None
        collections.append({"name": coll.name, "doi": coll.collection_uri, "described": described})
        for p in coll.patients:
            patients.append({"collection": coll.name, "id": p.patient_id, "species": p.species_code})
            for st in p.studies:
                studies.append(
                    {"uid": st.study_instance_uid, "collection": coll.name, "patient": p.patient_id}
                )
                for s in st.series:
                    series.append(
                        {
                            "uid": s.series_instance_uid,
                            "study": s.study_instance_uid,
                            "collection": s.collection,
                            "patient": s.patient_id,
                            "modality": s.modality,
                            "body_part": s.body_part_examined,
                            "manufacturer": s.manufacturer,
                            "model": s.manufacturer_model_name,
                            "image_count": s.image_count,
                            "file_size": s.file_size,
                            "released": _iso(s.date_released),
                            "timestamp": _iso(s.timestamp),
                            "sops": [i.sop_instance_uid for i in s.instances],
                            "md5": [archive.instance_md5(i.sop_instance_uid) for i in s.instances],
                            "sizes": [i.size for i in s.instances],
                            "ref_series": referenced_series(
                                archive.instance_bytes(s.instances[0].sop_instance_uid)
                            ),
                        }
                    )
    visible = {s["uid"] for s in series}
    carts = {name: uids for name, uids in archive.default_carts.items() if set(uids) <= visible}
    return {
        "seed": seed,
        "collections": collections,
        "patients": patients,
        "studies": studies,
        "series": series,
        "carts": carts,
    }


# ---------------------------------------------------------------------------------------------------------
# The server


@contextlib.contextmanager
def served(workdir: Path, seed: int) -> Iterator[str | None]:
    """``nbiafs serve`` on loopback for the duration; yields its base URL (None if it did not start)."""
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)  # a reused work dir keeps the last run's
    log = (workdir / "serve.log").open("wb")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    command = [sys.executable, "-m", "nbiafs", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--port-file", str(port_file), "--seed", str(seed)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        limit = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < limit:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{int(port_file.read_text())}" if port_file.exists() else None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------------------------------------------------


def run(workdir: Path, timeout: float, seed: int) -> int:
    deadline = time.monotonic() + timeout
    python = ensure_venv(deadline)
    if isinstance(python, int):
        return python
    expect = workdir / "expect.json"
    expect.write_text(json.dumps(expectations(seed)), encoding="utf-8")
    with served(workdir, seed) as base:
        if base is None:
            say("nbiafs serve did not start:\n" + (workdir / "serve.log").read_text(errors="replace"))
            return EXIT_SERVER
        say(f"server {base}; compat venv {python.parent.parent}; work dir {workdir}")
        driver_log = workdir / "driver.log"
        command = [
            str(python),
            str(DRIVER),
            "--base",
            base,
            "--expect",
            str(expect),
            "--workdir",
            str(workdir),
        ]
        clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        clean_env["MPLBACKEND"] = "Agg"
        with driver_log.open("wb") as log:
            try:
                done = subprocess.run(
                    command,
                    cwd=workdir,
                    env=clean_env,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    timeout=max(10.0, deadline - time.monotonic()),
                )
                out, status = done.stdout.decode("utf-8", "replace"), done.returncode
            except subprocess.TimeoutExpired as exc:
                partial = exc.stdout or b""
                out = (partial if isinstance(partial, bytes) else partial.encode()).decode("utf-8", "replace")
                out += "FAIL driver: did not finish before the deadline\n"
                status = 1
    sys.stdout.write(out)
    lines = out.splitlines()
    if status == 0 and (
        not lines or " passed, " not in lines[-1] or any(x.startswith("FAIL") for x in lines)
    ):
        status = 1
    if status != 0:
        tail = driver_log.read_text(errors="replace").splitlines()[-80:]
        print("---- driver stderr (last lines) ----", *tail, sep="\n", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temporary dir)")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline for the whole run, seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive served")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args.workdir.resolve(), args.timeout, args.seed)
    with tempfile.TemporaryDirectory(prefix="nbiafs-compat-") as tmp:
        return run(Path(tmp), args.timeout, args.seed)


if __name__ == "__main__":
    sys.exit(main())

"""The package as a user gets it: a wheel built from this tree (``pip wheel``), installed with its dependencies
into a new plain venv outside the tree, carries the licence and its metadata, runs ``nbiafs --version``, and
``nbiafs demo`` mounts from it. Also: the bash and zsh completion generated from the parser (shtab).

Building and installing need the package index (pip's cache makes it quick: ~30 s in all); when the index cannot
be reached the tests that need it are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import email.message
import email.parser
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nbiafs import __version__
from tests.mountutil import fusermount_unmount, is_mounted, mount_type, needs_fuse, wait_until

REPO = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 240  # seconds for one pip command (a cold cache downloads numpy)
DEFAULT_INDEX = "https://pypi.org/simple/"
NOT_SHIPPED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")

pytestmark = pytest.mark.timeout(PIP_TIMEOUT * 2 + 120)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path  # outside the source tree: the installed commands run here

    @property
    def nbiafs(self) -> Path:
        return self.venv / "bin" / "nbiafs"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _clean_env() -> dict[str, str]:
    """The environment for the installed commands: nothing pointing into the source tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NBIA_", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO))
    )
    return env


def _index_url() -> str:
    """The index pip uses: PIP_INDEX_URL, pip's configuration, else PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if url:
        return url
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else DEFAULT_INDEX


def _index_reachable(url: str) -> str | None:
    """None if the index answers, else why not."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/pip/", timeout=15) as reply:  # honours *_PROXY
            reply.read(1)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _pip(*args: str, python: str = sys.executable) -> None:
    """Run pip; fail with its output, or skip if it failed because the index cannot be reached."""
    cmd = [python, "-m", "pip", *args, "--disable-pip-version-check", "--timeout", "30", "--retries", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False, cwd=REPO)
    if done.returncode == 0:
        return
    output = (done.stdout + done.stderr).strip()[-3000:]
    url = _index_url()
    why = _index_reachable(url)
    if why is not None:
        pytest.skip(f"the package index {url} cannot be reached ({why}), so the wheel cannot be installed")
    pytest.fail(f"{' '.join(cmd)} failed with status {done.returncode}:\n{output}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """nbiafs built as a wheel and installed, with its dependencies, into a new plain venv in a temporary
    directory (no system site-packages, no access to the source tree)."""
    root = tmp_path_factory.mktemp("packaging")
    assert not root.resolve().is_relative_to(REPO)
    # Built from a copy, so the build writes nothing (build/, *.egg-info) into the tree.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    dist = root / "dist"
    _pip("wheel", "--no-deps", "-q", "-w", str(dist), str(source))
    wheels = list(dist.glob("nbiafs-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    _pip("install", "-q", str(wheels[0]), python=str(env_dir / "bin" / "python"))
    workdir = root / "work"
    workdir.mkdir()
    return Installed(wheels[0], env_dir, workdir)


def _metadata(wheel: Path) -> tuple[list[str], email.message.Message]:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode("utf-8"))
    return names, meta


def test_wheel_carries_the_licence_and_metadata(installed: Installed) -> None:
    names, meta = _metadata(installed.wheel)
    dist_info = f"nbiafs-{__version__}.dist-info"
    licence = f"{dist_info}/licenses/LICENSE"
    assert licence in names, names
    with zipfile.ZipFile(installed.wheel) as zf:
        assert zf.read(licence) == (REPO / "LICENSE").read_bytes()
    assert b"Apache License" in (REPO / "LICENSE").read_bytes()
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.10"
    classifiers = meta.get_all("Classifier") or []
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    requires = " ".join(meta.get_all("Requires-Dist") or [])
    for dependency in ("mfusepy", "requests", "platformdirs", "pydicom"):
        assert dependency in requires
    # Only the package: no tests, benchmarks or development files.
    assert all(n.startswith(("nbiafs/", f"{dist_info}/")) for n in names), names
    assert f"{dist_info}/entry_points.txt" in names


def test_installed_command_runs_from_the_venv(installed: Installed) -> None:
    done = subprocess.run(
        [str(installed.nbiafs), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=installed.workdir,
        env=_clean_env(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"nbiafs {__version__}"
    where = subprocess.run(
        [str(installed.python), "-c", "import nbiafs; print(nbiafs.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=installed.workdir,
        env=_clean_env(),
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(installed.venv.resolve()), where
    assert not Path(where).resolve().is_relative_to(REPO)


@contextlib.contextmanager
def _demo(installed: Installed, mountpoint: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [str(installed.nbiafs), "demo", str(mountpoint)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=installed.workdir,
        env=_clean_env(),
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        fusermount_unmount(mountpoint)


@pytest.mark.mount
@needs_fuse
def test_demo_mounts_from_the_installed_wheel(installed: Installed) -> None:
    mountpoint = installed.workdir / "tcia"
    mountpoint.mkdir()
    with _demo(installed, mountpoint) as proc:
        up = wait_until(lambda: mount_type(mountpoint) == "fuse.nbiafs" or proc.poll() is not None, 60)
        if not up or proc.poll() is not None:
            output = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
            pytest.fail(f"the demo did not mount (exit {proc.poll()}):\n{output}")
        listing = subprocess.run(
            ["ls", str(mountpoint)], capture_output=True, text=True, timeout=30, check=False
        )
        assert listing.returncode == 0, listing.stderr
        assert "NBIAFS-PET-CR" in listing.stdout.split("\n")
        done = subprocess.run(
            [str(installed.nbiafs), "umount", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=installed.workdir,
            env=_clean_env(),
        )
        assert done.returncode == 0, done.stderr
        status = proc.wait(timeout=30)
        output = proc.stdout.read() if proc.stdout else ""
        assert status == 0, output
        assert not is_mounted(mountpoint)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_is_generated_from_the_parser(shell: str, tmp_path: Path) -> None:
    shtab = pytest.importorskip("shtab", reason="shtab (the 'completion' extra) is not installed")
    from nbiafs.cli.main import COMMANDS, build_parser

    script = shtab.complete(build_parser(), shell=shell)
    for command in COMMANDS:
        assert command in script
    for option in ("--cache-size", "--collection", "--server", "--lazy"):
        assert option in script
    path = tmp_path / f"nbiafs.{shell}"
    path.write_text(script)
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed: generated, not syntax-checked")
    done = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    if shell == "bash":
        # Completing "nbiafs mo" offers "mount"; "nbiafs mount --server n" offers "nlst".
        probe = (
            f"source {path}\n"
            't(){ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; '
            'COMPREPLY=(); _shtab_nbiafs nbiafs "${@: -1}" "${@: -2:1}"; echo "${COMPREPLY[*]}"; }\n'
            "t nbiafs mo\nt nbiafs mount --server n\n"
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:2] == ["mount", "nlst"], done.stdout

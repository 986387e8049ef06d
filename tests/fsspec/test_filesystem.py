"""The ``nbia://`` fsspec filesystem against the bundled server: names, listings, reads, the shared cache,
errors, read-only-ness, pickling (no password), fork safety, selections."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed (the nbiafs[fsspec] extra)")
pydicom = pytest.importorskip("pydicom")

from nbiafs.fsspec import InstanceFile, NbiaFileSystem  # noqa: E402
from nbiafs.fsspec import filesystem as nbia_filesystem  # noqa: E402
from nbiafs.server import ArchiveServer  # noqa: E402
from nbiafs.settings import default_cache_dir  # noqa: E402
from tests.fsspec.conftest import MakeFs, api_url  # noqa: E402
from tests.helpers import ALICE, ALICE_PASSWORD, RESTRICTED, MakeServer, settle  # noqa: E402
from tests.mountutil import REPO, archive_files, nbiafs_env  # noqa: E402

pytestmark = pytest.mark.timeout(60)

RIDER = "RIDER Synth CT"
MR = "NBIAFS-MR-Brain"


IMAGE_ENDPOINTS = ("getSingleImage", "getImage")  # one instance; a whole series as a ZIP


def downloads(srv: ArchiveServer, since: int = 0) -> list[str]:
    """The image downloads the server answered after the first ``since`` requests."""
    settle(srv)
    return [r.path for r in list(srv.requests)[since:] if r.endpoint in IMAGE_ENDPOINTS]


def sop_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    assert name.endswith(".dcm")
    return name[: -len(".dcm")]


def test_the_protocol_is_registered(archive_server: ArchiveServer, tmp_path: Path) -> None:
    assert fsspec.get_filesystem_class("nbia") is NbiaFileSystem
    fs, path = fsspec.core.url_to_fs(
        f"nbia://{RIDER}/", api_url=api_url(archive_server.url), cache_dir=str(tmp_path / "c")
    )
    try:
        assert isinstance(fs, NbiaFileSystem)
        assert path == RIDER
        assert NbiaFileSystem._strip_protocol("nbia:///A//B/") == "A/B"
        assert NbiaFileSystem._strip_protocol("nbia://") == ""
    finally:
        fs.close()


def test_listings_match_the_archive(archive_server: ArchiveServer, make_fs: MakeFs) -> None:
    archive = archive_server.archive
    fs = make_fs(archive_server.url)
    visible = sorted(c for c in archive.collection_names() if c != RESTRICTED)
    assert fs.ls("", detail=False) == visible
    assert fs.ls("nbia://", detail=False) == visible
    root = fs.ls("", detail=True)
    assert [e["name"] for e in root] == visible
    assert all(e["type"] == "directory" and e["size"] == 0 and "mtime" in e for e in root)
    since = len(archive_server.requests)
    files = fs.find(RIDER)
    assert {p.rsplit("/", 1)[-1] for p in files} == set(archive_files(archive, RIDER))
    assert all(p.startswith(f"{RIDER}/") and p.count("/") == 4 for p in files)
    assert files == sorted(files)
    assert downloads(archive_server, since) == [], "listing must never download an image"


def test_uid_layout_names(archive_server: ArchiveServer, make_fs: MakeFs) -> None:
    archive = archive_server.archive
    fs = make_fs(archive_server.url, layout="uid")
    series = {s.series_instance_uid: s for s in archive.iter_series() if s.collection == MR}
    found = fs.find(MR, withdirs=True, detail=True)
    series_dirs = {p.rsplit("/", 1)[-1] for p, info in found.items() if info["kind"] == "series"}
    assert series_dirs == set(series)
    for path, info in found.items():
        if info["kind"] == "series":
            s = series[path.rsplit("/", 1)[-1]]
            assert path == f"{MR}/{s.patient_id}/{s.study_instance_uid}/{s.series_instance_uid}"


def test_details_sizes_and_times(archive_server: ArchiveServer, make_fs: MakeFs) -> None:
    archive = archive_server.archive
    fs = make_fs(archive_server.url)
    found = fs.find(RIDER, detail=True)
    path, info = next(iter(found.items()))
    assert set(info) >= {"name", "size", "type", "mtime"}
    assert info["type"] == "file" and info["kind"] == "instance" and info["name"] == path
    assert info["exact_size"] is False and info["size"] > 0  # the series' estimate until fetched
    assert info["mtime"] > 0 and fs.modified(path).timestamp() == info["mtime"]
    assert fs.info(path) == info
    assert fs.ls(path) == [info]  # ls of a file: the file itself
    series_dir = path.rsplit("/", 1)[0]
    assert fs.info(series_dir)["type"] == "directory" and fs.isdir(series_dir) and fs.isfile(path)
    data = fs.cat_file(path)
    assert data == archive.instance_bytes(sop_of(path))
    after = fs.info(path)
    assert after["exact_size"] is True and after["size"] == len(data) and after["mtime"] == info["mtime"]
    assert fs.size(path) == len(data)
    assert fs.ukey(path) == fs.ukey(f"nbia://{path}")
    fields = fs.metadata(path)
    assert fields["SOPInstanceUID"] == sop_of(path) and fields["Collection"] == RIDER
    assert fs.metadata(series_dir)["Modality"] == "CT"


def test_open_and_pydicom(archive_server: ArchiveServer, make_fs: MakeFs) -> None:
    archive = archive_server.archive
    fs = make_fs(archive_server.url)
    paths = fs.find(MR)
    for path in paths:
        with fs.open(f"nbia://{path}") as f:
            assert isinstance(f, InstanceFile) and f.path == path
            ds = pydicom.dcmread(f)
            assert ds.SOPInstanceUID == sop_of(path)
            f.seek(0)
            assert f.read() == archive.instance_bytes(sop_of(path))
            assert f.size == len(archive.instance_bytes(sop_of(path)))
    with fs.open(paths[0], "rb") as f, pytest.raises(TypeError, match="pickle the filesystem"):
        pickle.dumps(f)
    with fsspec.open(f"nbia://{paths[0]}", "rb", **fs.storage_options) as f:
        assert pydicom.dcmread(f).SOPInstanceUID == sop_of(paths[0])
    opened = fsspec.open_files(f"nbia://{MR}/*/*/*/*.dcm", **fs.storage_options)
    assert sorted(o.path for o in opened) == paths


def test_cat(archive_server: ArchiveServer, make_fs: MakeFs) -> None:
    archive = archive_server.archive
    fs = make_fs(archive_server.url)
    paths = fs.find(RIDER)
    one = paths[0]
    data = archive.instance_bytes(sop_of(one))
    assert fs.cat(one) == data
    assert fs.cat_file(one, start=10, end=20) == data[10:20]
    assert fs.cat_file(one, start=-16) == data[-16:]
    assert fs.head(one, 132)[128:] == b"DICM"
    series_dir = one.rsplit("/", 1)[0]
    expected = {p: archive.instance_bytes(sop_of(p)) for p in paths if p.startswith(series_dir + "/")}
    assert fs.cat(fs.find(series_dir)) == expected
    assert fs.cat(f"nbia://{series_dir}/*.dcm") == expected


def test_the_disk_cache_is_shared(archive_server: ArchiveServer, make_fs: MakeFs, tmp_path: Path) -> None:
    """Another filesystem on the same cache directory (another layout even) downloads nothing again; the
    default directory is the mount's."""
    fs = make_fs(archive_server.url)
    paths = fs.find(MR)
    before = len(archive_server.requests)
    for p in paths:
        fs.cat_file(p)
    assert downloads(archive_server, before)
    other = make_fs(archive_server.url, layout="uid", readahead=0)
    since = len(archive_server.requests)
    others = other.find(MR)
    assert all(other.info(p)["exact_size"] for p in others)
    assert sorted(other.cat_file(p) for p in others) == sorted(fs.cat_file(p) for p in paths)
    assert downloads(archive_server, since) == []
    assert NbiaFileSystem(api_url=api_url(archive_server.url)).cache_dir == default_cache_dir()
    assert fs.cache_dir == tmp_path / "cache"


def test_read_only(archive_server: ArchiveServer, make_fs: MakeFs, tmp_path: Path) -> None:
    fs = make_fs(archive_server.url)
    path = fs.find(RIDER)[0]
    for mode in ("wb", "ab", "r+b", "xb", "w"):
        with pytest.raises(OSError) as info:
            fs.open(path, mode)
        assert info.value.errno == errno.EROFS, mode
    with pytest.raises(ValueError, match="'rb'"):
        fs.open(path, "r")
    local = tmp_path / "x"
    local.write_bytes(b"x")
    attempts: list[Any] = [
        lambda: fs.mkdir(f"{RIDER}/new"),
        lambda: fs.makedirs(f"{RIDER}/new", exist_ok=True),
        lambda: fs.rm(path),
        lambda: fs.rm_file(path),
        lambda: fs.rmdir(RIDER),
        lambda: fs.pipe_file(path, b"x"),
        lambda: fs.put_file(str(local), path),
        lambda: fs.touch(path),
        lambda: fs.cp_file(path, path + ".copy"),
        lambda: fs.mv(path, path + ".moved"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS
    assert fs.cat_file(path)[128:132] == b"DICM"


def test_errors_map_to_python_exceptions(
    archive_server: ArchiveServer, make_fs: MakeFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = make_fs(archive_server.url)
    with pytest.raises(FileNotFoundError, match="nbia://No Such Collection"):
        fs.ls("No Such Collection")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{RIDER}/nobody")
    with pytest.raises(FileNotFoundError):
        fs.open(f"{RIDER}/nobody/x/y/1.2.3.dcm")
    assert not fs.exists(f"{RIDER}/nobody")
    with pytest.raises(IsADirectoryError):
        fs.open(RIDER)
    # The restricted collection does not exist for the guest.
    with pytest.raises(FileNotFoundError):
        fs.ls(RESTRICTED)
    # Refused credentials: PermissionError.
    monkeypatch.setenv("NBIA_PASSWORD", "not-the-password")
    refused = make_fs(archive_server.url, user=ALICE)
    with pytest.raises(PermissionError) as denied:
        refused.ls("")
    assert denied.value.errno == errno.EACCES
    # A user named without any password anywhere: OSError (EINVAL) saying where the password comes from.
    monkeypatch.delenv("NBIA_PASSWORD")
    with pytest.raises(OSError, match="NBIA_PASSWORD") as missing:
        make_fs(archive_server.url, user="bob").ls("")
    assert missing.value.errno == errno.EINVAL


def test_an_unreachable_server_is_an_oserror(make_fs: MakeFs) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    fs = make_fs(f"http://127.0.0.1:{port}", retries=0, timeout=2.0)
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        fs.ls("")
    assert not isinstance(info.value, (FileNotFoundError, PermissionError))
    assert info.value.errno == errno.EIO
    assert time.monotonic() - start < 15


def test_find_raises_rather_than_omitting(make_server: MakeServer, make_fs: MakeFs) -> None:
    srv = make_server(error_rate_503=1.0)
    fs = make_fs(srv.url, retries=0)
    with pytest.raises(OSError) as info:
        fs.find("")
    assert not isinstance(info.value, FileNotFoundError)


def test_an_account_sees_its_restricted_data_and_pickles_without_password(
    archive_server: ArchiveServer, make_fs: MakeFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBIA_USER", ALICE)
    monkeypatch.setenv("NBIA_PASSWORD", ALICE_PASSWORD)
    fs = make_fs(archive_server.url)
    assert RESTRICTED in fs.ls("", detail=False)
    path = fs.find(RESTRICTED)[0]
    assert fs.cat_file(path) == archive_server.archive.instance_bytes(sop_of(path))
    blob = pickle.dumps(fs)
    assert ALICE_PASSWORD.encode() not in blob
    assert ALICE.encode() in blob  # the user name resolved here travels; its password never does
    restored = pickle.loads(blob)
    assert restored.storage_options["user"] == ALICE
    assert ALICE_PASSWORD not in fs.to_json()
    # Unpickled where the environment names no user, it is still ALICE's view (password from the env).
    monkeypatch.delenv("NBIA_USER")
    restored = pickle.loads(blob)
    try:
        assert restored.cat_file(path) == archive_server.archive.instance_bytes(sop_of(path))
    finally:
        restored.close()
    with pytest.raises(TypeError):
        NbiaFileSystem(api_url=api_url(archive_server.url), password=ALICE_PASSWORD)  # type: ignore[call-arg]


def test_pickles_by_plain_settings(archive_server: ArchiveServer, make_fs: MakeFs, tmp_path: Path) -> None:
    archive = archive_server.archive
    chosen = next(s for s in archive.iter_series() if s.collection == MR).series_instance_uid
    manifest = tmp_path / "one.tcia"
    manifest.write_text(f"manifestVersion=3.0\nListOfSeriesToDownload=\n{chosen}\n")
    fs = make_fs(archive_server.url, manifest=str(manifest), layout="uid", cache_size="64M")
    assert {p.split("/")[3] for p in fs.find("")} == {chosen}
    _, (cls, args, options) = fs.__reduce__()
    assert cls is NbiaFileSystem and args == ()
    plain = (str, int, float, bool, type(None), tuple)
    assert all(isinstance(v, plain) for v in options.values()), options
    assert options["series"] == (chosen,) and "manifest" not in options
    assert options["cache_size"] == 64 << 20
    manifest.unlink()  # the pickle does not need the file
    restored = pickle.loads(pickle.dumps(fs))
    try:
        assert restored.find("") == fs.find("")
        assert {p.split("/")[3] for p in restored.find("")} == {chosen}
        assert (
            pickle.loads(pickle.dumps(fs)) is restored
        )  # fsspec's instance cache: same settings, same object
    finally:
        restored.close()


def test_a_cart_selects_its_series(archive_server: ArchiveServer, make_fs: MakeFs) -> None:
    archive = archive_server.archive
    cart, uids = next(iter(archive.default_carts.items()))
    visible = {u for u in uids if archive.series_by_uid[u].collection != RESTRICTED}
    fs = make_fs(archive_server.url, cart=cart, layout="uid")
    found = fs.find("", withdirs=True, detail=True)
    assert {p.rsplit("/", 1)[-1] for p, i in found.items() if i["kind"] == "series"} == visible


@pytest.mark.parametrize(
    "options",
    [{"layout": "flat"}, {"cache_size": "lots"}, {"cache_size": 0}, {"server": "nowhere"}, {"timeout": 0}],
)
def test_bad_settings_are_value_errors(archive_server: ArchiveServer, options: dict[str, Any]) -> None:
    options.setdefault("api_url", api_url(archive_server.url))
    with pytest.raises(ValueError):
        NbiaFileSystem(**options)


def _child_reads(fs: NbiaFileSystem, path: str, conn: Any) -> None:
    try:
        data = fs.cat_file(path)
        states = list(nbia_filesystem._states.values())
        own = bool(states) and all(s.pid == os.getpid() for s in states)
        conn.send((data, own))
    except BaseException as exc:  # report anything to the parent
        conn.send((repr(exc), False))
    finally:
        conn.close()


def test_a_forked_child_builds_its_own_client(archive_server: ArchiveServer, make_fs: MakeFs) -> None:
    archive = archive_server.archive
    fs = make_fs(archive_server.url, readahead=0)
    paths = fs.find(MR)
    assert fs.cat_file(paths[0]) == archive.instance_bytes(sop_of(paths[0]))  # the parent's state exists
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_reads, args=(fs, paths[1], child_end))
    child.start()
    try:
        assert parent_end.poll(30), "the forked child did not answer"
        data, own = parent_end.recv()
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert data == archive.instance_bytes(sop_of(paths[1]))
    assert own, "the child must build its own client and caches, not use its parent's"
    # The parent's client still works (the child neither used nor closed it).
    assert fs.cat_file(paths[2]) == archive.instance_bytes(sop_of(paths[2]))


def test_instance_file_is_a_plain_binary_file(tmp_path: Path) -> None:
    local = tmp_path / "f.dcm"
    local.write_bytes(b"abc")
    with InstanceFile(local, "C/P/S/R/f.dcm") as f:
        assert isinstance(f, io.BufferedReader) and f.readable() and f.seekable() and not f.writable()
        assert f.size == 3 and f.read() == b"abc" and f.name == str(local)


EXIT_SCRIPT = """
import sys
from nbiafs.fsspec import NbiaFileSystem
fs = NbiaFileSystem(api_url=sys.argv[1], cache_dir=sys.argv[2], timeout=10.0)
path = fs.find("NBIAFS-PET-CR")[0]
with fs.open(path) as f:
    assert f.read(132)[128:] == b"DICM"
"""


def test_a_process_logs_out_and_ends_promptly(archive_server: ArchiveServer, tmp_path: Path) -> None:
    """At exit the client logs out and the caches close, within the close deadline (urllib3 empties its pools
    in a finalizer at exit: the logout must come first)."""
    since = len(archive_server.requests)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, api_url(archive_server.url), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=60,
        env=nbiafs_env(),
        cwd=str(REPO),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < nbia_filesystem.CLOSE_DEADLINE + 10
    assert "did not finish" not in done.stderr
    settle(archive_server)
    assert "logout" in [r.endpoint for r in archive_server.requests[since:]]

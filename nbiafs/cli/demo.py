"""``nbiafs demo MOUNTPOINT``: the bundled archive server on loopback, mounted in the foreground.

The server (nbiafs.server, its synthetic archive, OAuth on the v2 API) and the mount live in this one process:
Ctrl-C, SIGTERM, SIGHUP or ``nbiafs umount MOUNTPOINT`` from another shell stops both (exit status 0).
The cache is a temporary directory (removed at the end) unless ``--cache-dir`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from nbiafs.api.profiles import resolve_profile
from nbiafs.cli import service, status
from nbiafs.cli.logs import add_logging_options
from nbiafs.mounting import MountSettings, run_mount
from nbiafs.settings import LAYOUTS, CacheSettings, TreeSettings

log = logging.getLogger(__name__)

DEMO_CACHE_SIZE = 1 << 30  # bytes; the synthetic archive is a few MB


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="mount the bundled synthetic archive (no internet needed)",
        description="Start the bundled NBIA-compatible server on loopback (synthetic archive, OAuth, guest "
        "login) and mount it at MOUNTPOINT in the foreground. Ctrl-C or `nbiafs umount` stops both.",
    )
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: a temporary one)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: any free one)")
    parser.add_argument("--layout", choices=LAYOUTS, default=TreeSettings().layout, help="directory names")
    add_logging_options(parser)
    parser.set_defaults(func=run)


def nbiafs_command(argv0: str | None = None) -> str:
    """How to run this nbiafs from another shell: ``nbiafs`` if that is the ``nbiafs`` on PATH, else its full
    path (``python -m nbiafs``: the interpreter's path and ``-m nbiafs``)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if os.path.basename(argv0) == "__main__.py":
        return f"{shlex.quote(sys.executable)} -m nbiafs"
    mine = os.path.realpath(argv0)
    on_path = shutil.which("nbiafs")
    if on_path and os.path.realpath(on_path) == mine:
        return "nbiafs"
    return shlex.quote(os.path.abspath(argv0))


def instructions(mountpoint: str, server_url: str) -> str:
    """What to try once the demo is mounted."""
    mp = shlex.quote(mountpoint)
    nbiafs = nbiafs_command()
    return f"""\
nbiafs demo: the synthetic archive of {server_url} is mounted at {mountpoint}
Try, in another shell:
  ls {mp}
  find {mp}/NBIAFS-PET-CR -name '*.dcm'
  ls -l {mp}/'RIDER Synth CT'/*/*/*
  getfattr -d {mp}/NBIAFS-PET-CR/*/*/*
  dcmdump "$(find {mp}/NBIAFS-PET-CR -name '*.dcm' | head -1)" | head -40
  dcm2niix -o /tmp "$(dirname "$(find {mp}/NBIAFS-Bench -name '*.dcm' | head -1)")"
Stop it with Ctrl-C here, or: {nbiafs} umount {mp}"""


def run(args: argparse.Namespace) -> int:
    from nbiafs.fuse.mount import check_fuse_device, check_mountpoint
    from nbiafs.server import ArchiveServer, ServerConfig

    service.take_socket()
    status.stop_on_signals()
    mountpoint = check_mountpoint(args.mountpoint)
    check_fuse_device()
    temp_dir: str | None = None
    if args.cache_dir:
        cache_dir = Path(args.cache_dir).expanduser().absolute()
    else:
        temp_dir = tempfile.mkdtemp(prefix="nbiafs-demo-")
        cache_dir = Path(temp_dir)
    srv = ArchiveServer(ServerConfig(), host="127.0.0.1", port=args.port)
    srv.start()
    try:
        log.info("archive server at %s", srv.url)
        settings = MountSettings(
            mountpoint=mountpoint,
            profile=resolve_profile(api_url=f"{srv.url}/nbia-api/services/v2"),
            credentials=None,  # the guest account, over OAuth
            tree=TreeSettings(layout=args.layout),
            cache=CacheSettings(directory=cache_dir, max_bytes=DEMO_CACHE_SIZE),
        )

        def on_ready() -> None:
            print(instructions(mountpoint, srv.url), flush=True)
            service.ready(mountpoint)

        outcome = run_mount(settings, on_ready=on_ready, on_stopping=service.stopping)
        print("nbiafs demo: unmounted, server stopped", flush=True)
    finally:
        srv.stop()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    if outcome.abandoned:
        from nbiafs.cli.mount import end_after

        end_after(outcome)
    return status.OK

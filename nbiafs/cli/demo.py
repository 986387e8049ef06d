"""``nbiafs demo MOUNTPOINT``: the bundled archive server on loopback, mounted in the foreground.

The server (nbiafs.server, its synthetic archive, OAuth on the v2 API) and the mount live in this one process:
Ctrl-C, SIGTERM or ``nbiafs umount MOUNTPOINT`` from another shell stops both. The cache is a temporary
directory (removed at the end) unless ``--cache-dir`` is given.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nbiafs.api.profiles import resolve_profile
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


def instructions(mountpoint: str, server_url: str) -> str:
    """What to try once the demo is mounted."""
    mp = shlex.quote(mountpoint)
    return f"""\
nbiafs demo: the synthetic archive of {server_url} is mounted at {mountpoint}
Try, in another shell:
  ls {mp}
  find {mp}/NBIAFS-PET-CR -name '*.dcm'
  ls -l {mp}/'RIDER Synth CT'/*/*/*
  getfattr -d {mp}/NBIAFS-PET-CR/*/*/*
  dcmdump "$(find {mp}/NBIAFS-PET-CR -name '*.dcm' | head -1)" | head -40
  dcm2niix -o /tmp "$(dirname "$(find {mp}/NBIAFS-Bench -name '*.dcm' | head -1)")"
Stop it with Ctrl-C here, or: nbiafs umount {mp}"""


def run(args: argparse.Namespace) -> int:
    from nbiafs.fuse.mount import check_mountpoint
    from nbiafs.server import ArchiveServer, ServerConfig

    mountpoint = check_mountpoint(args.mountpoint)
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

        run_mount(settings, on_ready=on_ready)
        print("nbiafs demo: unmounted, server stopped", flush=True)
    finally:
        srv.stop()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return 0

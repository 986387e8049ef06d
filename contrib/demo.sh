#!/usr/bin/env bash
# Set up what is missing (contrib/setup.sh), then mount the demo: the bundled archive server with its synthetic
# archive on loopback, mounted in the foreground at MOUNTPOINT (default /tmp/tcia) until Ctrl-C or
# `.venv/bin/nbiafs umount MOUNTPOINT` from another shell.
#
#   bash contrib/demo.sh [MOUNTPOINT [nbiafs demo options, e.g. --layout uid]]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mountpoint=${1:-/tmp/tcia}
shift $(($# > 0 ? 1 : 0))

bash "$repo/contrib/setup.sh"

case $mountpoint in /*) ;; *) mountpoint=$PWD/$mountpoint ;; esac
[ "$mountpoint" = / ] || mountpoint=${mountpoint%/}

# A demo that was killed leaves a dead mount ("Transport endpoint is not connected"): clear it.
dead_nbiafs_mount() {
  awk -v target="$1" '{
      for (i = 7; i <= NF && $i != "-"; i++) {}
      path = $5; gsub(/\\040/, " ", path)
      if (path == target && $(i + 1) == "fuse.nbiafs") found = 1
    } END { exit !found }' /proc/self/mountinfo 2>/dev/null && ! stat -- "$1" >/dev/null 2>&1
}
if dead_nbiafs_mount "$mountpoint"; then
  echo "demo: clearing the dead mount at $mountpoint (fusermount3 -uz)" >&2
  fusermount3 -uz -- "$mountpoint"
fi
mkdir -p -- "$mountpoint"
exec "$repo/.venv/bin/nbiafs" demo "$mountpoint" "$@"

#!/usr/bin/env bash
# Set up everything nbiafs needs on Debian or Ubuntu, doing only what is missing; safe to run again.
#
#   bash contrib/setup.sh        (contrib/demo.sh and tests/run run it first)
#
# 1. Debian packages: fuse3 (fusermount3, and libfuse3 as a dependency: libfuse3-3, or libfuse3-4 on Debian 13),
#    python3 and python3-venv if there is no Python able to make a venv, and the tools the demo and the tests
#    use: attr (getfattr), dcmtk (dcmdump), dcm2niix. As root: `apt-get update`, then `apt-get install` of the
#    missing ones. As another user: prints the command an administrator must run, and stops if fuse3 or Python
#    is missing (the other tools are optional).
# 2. .venv at the top of the clone, with nbiafs installed editable and its test tools (pip install -e
#    '.[test]'), again whenever pyproject.toml changed since the last install.
#
# PYTHON=python3.12 bash contrib/setup.sh picks the interpreter for a new .venv (default: python3; 3.10 or newer).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
venv=$repo/.venv
stamp=$venv/.nbiafs-installed

say() { printf 'setup: %s\n' "$*" >&2; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

python_ok() {
  # A Python 3.10+ that can create a venv with pip (Debian puts ensurepip in python3-venv).
  command -v "$python" >/dev/null 2>&1 &&
    "$python" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null
}

apt_packages() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    say "not Debian or Ubuntu: install fuse3 (libfuse 3), python3 with venv, attr, dcmtk and dcm2niix yourself"
    return 0
  fi
  local required=() optional=()
  installed fuse3 || required+=(fuse3)
  if [ ! -x "$venv/bin/python" ] && ! python_ok; then
    required+=(python3 python3-venv)
  fi
  for pkg in attr dcmtk dcm2niix; do
    installed "$pkg" || optional+=("$pkg")
  done
  local missing=("${required[@]}" "${optional[@]}")
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    return 0
  fi
  say "not root: ask an administrator to run, once:"
  say "  apt-get update && apt-get install -y ${missing[*]}"
  if [ ${#required[@]} -gt 0 ]; then
    say "then run this command again (${required[*]} cannot be done without)"
    exit 1
  fi
  say "going on without ${optional[*]} (used by the demo's hints and by some tests, which skip)"
}

make_venv() {
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    2>/dev/null; then
    return 0
  fi
  if ! python_ok; then
    say "$python is missing, older than 3.10 or cannot make a venv (Debian/Ubuntu: apt-get install python3-venv;"
    say "an older system: PYTHON=python3.11 or any python 3.10+ on PATH)"
    exit 1
  fi
  say "creating $venv ($("$python" -c 'import sys; print("Python %d.%d" % sys.version_info[:2])'))"
  "$python" -m venv --clear "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  rm -f "$stamp"
}

install_nbiafs() {
  local want
  want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/nbiafs" ]; then
    return 0
  fi
  say "installing nbiafs and its test tools into $venv (pip install -e '.[test]')"
  (cd "$repo" && "$venv/bin/python" -m pip install -q -e '.[test]')
  printf '%s\n' "$want" >"$stamp"
}

check_fuse() {
  if [ ! -e /dev/fuse ]; then
    say "warning: there is no /dev/fuse, so nothing can be mounted (in a container: --device /dev/fuse"
    say "  --cap-add SYS_ADMIN; elsewhere: modprobe fuse, as root)"
  elif [ ! -r /dev/fuse ] || [ ! -w /dev/fuse ]; then
    say "warning: $(id -un) cannot open /dev/fuse, so nothing can be mounted (see docs/troubleshooting.md)"
  fi
}

apt_packages
make_venv
install_nbiafs
check_fuse

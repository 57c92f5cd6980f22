#!/usr/bin/env bash
# Set up everything bollmin needs on a fresh Debian/Ubuntu machine, then run something.
#
#   ./bootstrap.sh demo [--speed N]   set up, then run the offline demo (bot + dashboard)
#   ./bootstrap.sh test [PYTEST ARGS] set up, then run the full test suite
#
# As root it installs the Debian packages it needs (python3-venv; for the tests also
# chromium, systemd-container, debootstrap, shellcheck, sqlite3). Then it creates .venv with
# Python >= 3.11 and installs the pinned requirements (skipped when already up to date).
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")"
what=${1:-}
case "$what" in
  demo|test) shift ;;
  -h|--help|"")
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    if [ -n "$what" ]; then exit 0; else exit 2; fi ;;
  *) echo "bootstrap.sh: unknown command '$what' (use demo or test)" >&2; exit 2 ;;
esac

find_python() {
  local candidate
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

apt_install() {
  # Install the named Debian packages that are missing (root only).
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  pkgs=(python3-venv ca-certificates)
  if [ "$what" = test ]; then
    pkgs+=(chromium fonts-wqy-microhei systemd-container debootstrap shellcheck sqlite3)
  fi
  apt_install "${pkgs[@]}"
fi

PY=$(find_python) || {
  echo "bootstrap.sh: Python >= 3.11 not found. On Ubuntu 22.04: sudo apt-get install python3.11 python3.11-venv" >&2
  exit 2
}

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $PY"
  "$PY" -m venv .venv || {
    echo "bootstrap.sh: 'python -m venv' failed: run as root (sudo) or install python3-venv first" >&2
    exit 2
  }
fi

req=requirements.txt
[ "$what" = test ] && req=requirements-dev.txt
stamp=.venv/.installed-$(cat requirements.txt "$req" | sha256sum | cut -c1-16)-$what
if [ ! -f "$stamp" ]; then
  echo "==> installing $req into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
  touch "$stamp"
fi

if [ "$what" = demo ]; then
  exec .venv/bin/python bollmin.py demo "$@"
fi
exec .venv/bin/python -m pytest "$@"

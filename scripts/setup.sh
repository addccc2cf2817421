#!/usr/bin/env bash
# Sets up .venv/ in the repository root with alwayson installed (editable) and its dev tools.
# Safe to run again: it only does what is missing. Sourced by demo.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

python_ok() {  # a Python >= 3.11 with venv and ensurepip
  "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

world_runnable() {  # workloads run as an unprivileged user when we are root
  [ "$(id -u)" != 0 ] && return 0
  local real; real="$(readlink -f "$(command -v "$1")")"
  su -s /bin/sh nobody -c "test -x '$real'" 2>/dev/null || \
    setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$real" 2>/dev/null
}

pick_python() {
  local candidates=("${PYTHON:-}" python3 python3.13 python3.12 python3.11 /usr/bin/python3)
  for py in "${candidates[@]}"; do
    [ -n "$py" ] && command -v "$py" >/dev/null || continue
    if python_ok "$py" && world_runnable "$py"; then command -v "$py"; return 0; fi
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  if ! PY="$(pick_python)"; then
    say "installing python3-venv (Debian/Ubuntu)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    PY="$(pick_python)" || { echo "no Python >= 3.11 with venv found; install python3.11+ first" >&2; exit 1; }
  fi
  say "creating .venv with $PY ($("$PY" --version))"
  rm -rf .venv
  "$PY" -m venv .venv
fi

if ! command -v etcd >/dev/null && [ ! -x /usr/bin/etcd ]; then
  say "installing etcd (Debian/Ubuntu etcd-server): the store every site shares"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  # The package enables a system-wide etcd on 127.0.0.1:2379; alwayson runs its own members.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

stamp=.venv/.alwayson-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing alwayson and its tools into .venv (pip)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
say "ready: $ROOT/.venv/bin/alwayson"

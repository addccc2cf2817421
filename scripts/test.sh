#!/usr/bin/env bash
# Sets everything up and runs every check: lint, format, types, layers, unit, integration, e2e.
# Extra arguments go to pytest (e.g. scripts/test.sh -k spec, or -m soak for soak runs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# wrk is the load generator of the zero-drop tests: one that is not part of alwayson.
if ! command -v wrk >/dev/null; then
  say "installing wrk (apt-get)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
# Chromium for the dashboard's browser test; promtool and amtool for the export test.
say "installing Chromium (apt-get) and promtool/amtool (unpacked, no daemons) if missing"
bash "$ROOT/scripts/install-browser.sh"
bash "$ROOT/scripts/install-promtools.sh"
say "ruff (lint + format)"
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
say "mypy --strict src"
.venv/bin/mypy src
say "import-linter (layer order of ARCHITECTURE.md)"
.venv/bin/lint-imports
say "pytest"
# Two workers: most of a test's time is waiting on real processes, not CPU (one process
# used 10 CPU-minutes in 15 minutes of wall time on 2 cores).
# A folder of this checkout's own for pytest's temporary files (pytest empties it when a
# run starts): pytest makes /tmp/pytest-of-$USER private (0700) whenever any pytest
# session starts, which would lock the unprivileged workloads of a platform that another
# session is running out of their files.
BASETEMP="/tmp/alwayson-tests-$(id -u)-$(printf %s "$ROOT" | cksum | cut -d' ' -f1)"
mkdir -p "$BASETEMP" && chmod 755 "$BASETEMP"
# The 25 slowest tests are listed at the end: the run must stay under 20 minutes.
exec .venv/bin/pytest -q -n "${PYTEST_WORKERS:-2}" --dist worksteal --durations=25 --basetemp "$BASETEMP" "$@"

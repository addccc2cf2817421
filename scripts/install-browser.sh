#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test (tests/e2e/test_dashboard.py),
# once: does nothing when /usr/bin/chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
printf '\033[1m==> %s\033[0m\n' "installing chromium (apt-get)" >&2
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
test -x /usr/bin/chromium

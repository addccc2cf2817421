#!/usr/bin/env bash
# promtool and amtool, the checkers of Prometheus and Alertmanager configuration, for the
# export tests. Taken from Debian's packages without installing them (no daemons start):
# the .deb files are downloaded and unpacked under .tools/. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.tools"
if [ -x "$DEST/usr/bin/promtool" ] && [ -x "$DEST/usr/bin/amtool" ]; then
  exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus prometheus-alertmanager >/dev/null 2>&1; then
  as_root apt-get update -qq
  apt-get download prometheus prometheus-alertmanager >/dev/null
fi
mkdir -p "$DEST"
for deb in ./*.deb; do
  dpkg-deb -x "$deb" "$DEST"
done
"$DEST/usr/bin/promtool" --version >/dev/null
"$DEST/usr/bin/amtool" --version >/dev/null
echo "promtool and amtool in $DEST/usr/bin" >&2

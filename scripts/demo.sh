#!/usr/bin/env bash
# Sets everything up and brings the sample digital bank up across two sites, then walks one
# customer through the registration journey via the front door.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
SPEC=examples/digital-bank/alwayson.yaml
.venv/bin/alwayson up "$SPEC"
printf '\n\033[1m==> registering a customer through the front door\033[0m\n' >&2
.venv/bin/python examples/digital-bank/register.py --front-door http://127.0.0.1:8080
cat <<MSG

The bank keeps running in the background. Dashboard: http://127.0.0.1:7070/
(token: $(cat examples/digital-bank/.alwayson/token 2>/dev/null || echo 'see examples/digital-bank/.alwayson/token')). Try:
  .venv/bin/alwayson status -f $SPEC
  .venv/bin/alwayson db status -f $SPEC
  .venv/bin/alwayson alerts -f $SPEC
  .venv/bin/alwayson report health --since 1h --html health.html -f $SPEC
  .venv/bin/alwayson logs onboarding --site jakarta -f $SPEC
  .venv/bin/alwayson scale accounts 3 --site jakarta -f $SPEC && .venv/bin/alwayson plan -f $SPEC
  .venv/bin/alwayson down -f $SPEC
MSG

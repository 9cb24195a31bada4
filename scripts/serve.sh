#!/usr/bin/env bash
# One command from a fresh clone to a running server: set up the virtual environment, migrate, serve.
# Arguments go to `renkei serve` (e.g. --demo, --port 8000, --data-dir ./renkei-data).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup.sh" | tail -n 1)"
exec "$venv/bin/renkei" serve "$@"

#!/usr/bin/env bash
# The production topology on this machine (nginx with TLS, one identity-service process, two share-service
# processes, PostgreSQL, Redis): see scripts/topology.py. `scripts/topology.sh up` serves until Ctrl-C;
# `scripts/topology.sh check` starts it, checks it through nginx and tears it down. Installs nginx (apt-get) when
# missing, which needs root.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RENKEI_VENV:-$root/.venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    venv="$("$root/scripts/setup.sh" | tail -n 1)"
fi
exec "$venv/bin/python" "$root/scripts/topology.py" "$@"

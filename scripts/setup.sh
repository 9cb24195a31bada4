#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs Renkei into it.
# RENKEI_VENV chooses where (default: .venv beside this repository); EXTRAS=test adds the test tools.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RENKEI_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Renkei needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
spec="$root"
[ -n "${EXTRAS:-}" ] && spec="$root[$EXTRAS]"
# Reinstall only when the project's metadata changed since the last install.
stamp="$venv/.renkei-installed-${EXTRAS:-base}"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --editable "$spec"
  touch "$stamp"
fi
echo "$venv"

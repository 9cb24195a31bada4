#!/usr/bin/env bash
# One command from a fresh clone to a passing test suite. PostgreSQL (127.0.0.1:5432) and Redis
# (127.0.0.1:6379) tests skip with a reason when those servers are absent — unless CI=true, where they must run.
# Extra arguments go to pytest (e.g. -k login, -x).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(EXTRAS=test "$root/scripts/setup.sh" | tail -n 1)"
cd "$root"
exec "$venv/bin/python" -m pytest -n "${RENKEI_TEST_WORKERS:-2}" "$@"

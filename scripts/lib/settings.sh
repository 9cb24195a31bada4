# Shared by scripts/backup.sh and scripts/restore.sh (sourced after they define die and env_file).

# setting NAME: the variable from the environment, else its last assignment in the env file (KEY=VALUE lines as
# systemd reads them, optionally quoted), else empty. The file is parsed, never sourced: it is not shell.
setting() {
  local name="$1" value="${!1:-}"
  if [ -z "$value" ] && [ -n "$env_file" ]; then
    value="$(sed -n "s/^[[:space:]]*$name=//p" "$env_file" | tail -n 1)"
    value="${value%\"}"; value="${value#\"}"; value="${value%\'}"; value="${value#\'}"
  fi
  printf '%s' "$value"
}

# A libpq URI from an SQLAlchemy URL: postgresql+psycopg://… → postgresql://…
libpq_url() { printf '%s' "$1" | sed -E 's#^postgres(ql)?(\+[a-z0-9_]+)?://#postgresql://#'; }

pg_tool() {
  local tool="$1" dir
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN/$tool"; return; fi
  if command -v "$tool" > /dev/null; then command -v "$tool"; return; fi
  for dir in /usr/lib/postgresql/*/bin; do [ -x "$dir/$tool" ] && { echo "$dir/$tool"; return; }; done
  die "$tool not found (install postgresql-client, or set PG_BIN)"
}

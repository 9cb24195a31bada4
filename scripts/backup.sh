#!/usr/bin/env bash
# Back up a Renkei deployment: both databases, the key files and the attachment blobs, into one timestamped
# directory with a SHA-256 manifest. Restore with scripts/restore.sh; the procedure around both is in
# deploy/runbooks/backup-restore.md.
#
#   scripts/backup.sh [--env /etc/renkei/renkei.env] [DEST]      (DEST: default ./renkei-backups)
#
# Configuration is the services' own: RENKEI_AUTH_DATABASE_URL and RENKEI_SHARE_DATABASE_URL (PostgreSQL: pg_dump
# -Fc; unset: the SQLite files under the data directory), RENKEI_DATA_DIR, RENKEI_KEY_DIR, RENKEI_BLOB_DIR, taken
# from the environment, else from --env FILE (the systemd EnvironmentFile), else the services' defaults.
#
# The backup holds the key files, so it is as sensitive as the keys themselves: the database alone is useless
# (every resource is encrypted under keys that are not in it), and database plus keys is every patient's record.
# The directory is created 0700; keys.tar is a file of its own so that it can be sent to a different store than
# the dumps (runbook).
set -euo pipefail
umask 077

die() { echo "backup: $*" >&2; exit 1; }

env_file=""
dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --env) env_file="${2:?--env needs a file}"; shift 2 ;;
    --env=*) env_file="${1#--env=}"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$dest" ] || die "one destination only"; dest="$1"; shift ;;
  esac
done
dest="${dest:-./renkei-backups}"

# setting, libpq_url, pg_tool
# shellcheck source=lib/settings.sh
. "$(dirname "$0")/lib/settings.sh"

[ -z "$env_file" ] || [ -r "$env_file" ] || die "cannot read $env_file"
data_dir="$(setting RENKEI_DATA_DIR)"; data_dir="${data_dir:-./renkei-data}"
key_dir="$(setting RENKEI_KEY_DIR)"; key_dir="${key_dir:-$data_dir/keys}"
blob_dir="$(setting RENKEI_BLOB_DIR)"; blob_dir="${blob_dir:-$data_dir/blobs}"

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$dest/renkei-$stamp"
mkdir -p "$dest"
mkdir -m 0700 "$out" || die "$out exists"
complete=no
trap '[ "$complete" = yes ] || { echo "backup: failed; removing the incomplete $out" >&2; rm -rf "$out"; }' EXIT

{
  echo "created=$stamp"
  echo "host=$(hostname)"
} > "$out/backup.info"

# 1. The databases first. Everything a row refers to is written before the row commits (a blob before its
# Binary row, a KEK file before any data key wrapped under it), so keys and blobs copied *after* the dumps hold
# everything the dumps need.
for service in auth share; do
  var="RENKEI_$(echo "$service" | tr a-z A-Z)_DATABASE_URL"
  url="$(setting "$var")"
  case "$url" in
    postgres*)
      # -Fc: compressed, restorable object by object, and pg_restore --clean can replace an existing schema.
      "$(pg_tool pg_dump)" --format=custom --no-password --file="$out/$service.dump" --dbname="$(libpq_url "$url")"
      echo "$service=postgresql" >> "$out/backup.info"
      ;;
    ""|sqlite*)
      if [ -n "$url" ]; then file="${url#sqlite:///}"; else file="$data_dir/$service.db"; fi
      [ -f "$file" ] || die "no SQLite database at $file (set $var or RENKEI_DATA_DIR)"
      # SQLite's online backup: a consistent copy even while the service writes (WAL included).
      python3 - "$file" "$out/$service.sqlite" <<'PY'
import sqlite3, sys
source, target = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])
with target:
    source.backup(target)
source.close(); target.close()
PY
      echo "$service=sqlite" >> "$out/backup.info"
      ;;
    *) die "$var is neither PostgreSQL nor SQLite: $url" ;;
  esac
done

# 2. The key files. Keys given in the environment (a secret store, a Kubernetes Secret) are not files: say so
# loudly, because a backup without them cannot be read.
from_env=""
for var in RENKEI_AUTH_MASTER_KEY RENKEI_SHARE_KEKS RENKEI_SHARE_INDEX_KEY RENKEI_VAPID_PRIVATE_KEY \
           RENKEI_LOG_PSEUDONYM_KEY; do
  [ -z "$(setting "$var")" ] || from_env="$from_env $var"
done
if [ -d "$key_dir" ]; then
  tar -C "$key_dir" -cf "$out/keys.tar" .
  echo "keys=$(tar -tf "$out/keys.tar" | grep -c -v '/$' || true) file(s) from $key_dir" >> "$out/backup.info"
elif [ -z "$from_env" ]; then
  die "no key directory at $key_dir and no keys in the environment: nothing could decrypt this backup"
fi
if [ -n "$from_env" ]; then
  echo "keys_from_environment=${from_env# }" >> "$out/backup.info"
  echo "backup: WARNING:${from_env} come from the environment and are NOT in this backup;" \
       "keep them with it from your secret store (deploy/runbooks/backup-restore.md)" >&2
fi

# 3. The attachment blobs (encrypted content of Binary resources).
if [ -d "$blob_dir" ]; then
  tar -C "$blob_dir" -cf "$out/blobs.tar" .
fi

# 4. The manifest: every file's SHA-256. restore.sh refuses a backup whose files do not match it.
(cd "$out" && find . -maxdepth 1 -type f ! -name MANIFEST.sha256 -printf '%f\n' | LC_ALL=C sort \
  | xargs sha256sum -- > MANIFEST.sha256)
complete=yes
echo "$out"

#!/usr/bin/env bash
# Restore a backup made by scripts/backup.sh: verify it against its manifest, restore both databases (PostgreSQL:
# pg_restore --clean into the databases the configuration names; SQLite: the files under the data directory), the
# key files and the attachment blobs. Stop every Renkei process first; the procedure is in
# deploy/runbooks/backup-restore.md.
#
#   scripts/restore.sh [--env /etc/renkei/renkei.env] [--verify-only] BACKUP_DIR
#
# Configuration as for backup.sh (environment, else --env FILE, else the services' defaults). The target
# PostgreSQL databases must exist (createdb, as their owning role); whatever they hold is replaced.
#
# Nothing is changed unless every file matches the manifest and the manifest lists every file. Key files are
# never overwritten in place: a key directory already holding different keys is moved aside (to
# <key_dir>.before-restore-<time>), because a key destroyed is data destroyed.
set -euo pipefail
umask 077

die() { echo "restore: $*" >&2; exit 1; }

env_file=""
backup=""
verify_only=no
while [ $# -gt 0 ]; do
  case "$1" in
    --env) env_file="${2:?--env needs a file}"; shift 2 ;;
    --env=*) env_file="${1#--env=}"; shift ;;
    --verify-only) verify_only=yes; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$backup" ] || die "one backup directory only"; backup="$1"; shift ;;
  esac
done
[ -n "$backup" ] || die "usage: restore.sh [--env FILE] [--verify-only] BACKUP_DIR"
[ -d "$backup" ] || die "$backup is not a directory"
[ -z "$env_file" ] || [ -r "$env_file" ] || die "cannot read $env_file"

# setting, libpq_url, pg_tool
# shellcheck source=lib/settings.sh
. "$(dirname "$0")/lib/settings.sh"

# 1. The manifest: every listed file has its checksum, and no file is unlisted (nothing slipped in).
[ -f "$backup/MANIFEST.sha256" ] || die "$backup has no MANIFEST.sha256: not a backup made by backup.sh"
(cd "$backup" && sha256sum --check --strict --quiet MANIFEST.sha256) \
  || die "$backup does not match its manifest: a file was altered, truncated or removed; not restoring"
unlisted="$(cd "$backup" && find . -maxdepth 1 -type f ! -name MANIFEST.sha256 -printf '%f\n' | LC_ALL=C sort \
  | comm -23 - <(awk '{ sub(/^\*/, "", $2); print $2 }' MANIFEST.sha256 | LC_ALL=C sort))"
[ -z "$unlisted" ] || die "$backup holds files its manifest does not list: $unlisted; not restoring"
echo "restore: $backup matches its manifest"
[ "$verify_only" = no ] || exit 0

data_dir="$(setting RENKEI_DATA_DIR)"; data_dir="${data_dir:-./renkei-data}"
key_dir="$(setting RENKEI_KEY_DIR)"; key_dir="${key_dir:-$data_dir/keys}"
blob_dir="$(setting RENKEI_BLOB_DIR)"; blob_dir="${blob_dir:-$data_dir/blobs}"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"

# 2. The databases.
for service in auth share; do
  var="RENKEI_$(echo "$service" | tr a-z A-Z)_DATABASE_URL"
  url="$(setting "$var")"
  if [ -f "$backup/$service.dump" ]; then
    case "$url" in postgres*) ;; *) die "$backup holds a PostgreSQL dump of $service but $var is not PostgreSQL" ;; esac
    # --clean --if-exists: drop what the database holds first, so the result is the backup, not a merge.
    # One transaction: a failure leaves the database as it was. The append-only triggers of the audit tables
    # refuse UPDATE, DELETE and TRUNCATE, not DROP and COPY, so a restore passes them without switching them off.
    "$(pg_tool pg_restore)" --clean --if-exists --single-transaction --exit-on-error --no-password \
      --dbname="$(libpq_url "$url")" "$backup/$service.dump"
  elif [ -f "$backup/$service.sqlite" ]; then
    case "$url" in ""|sqlite*) ;; *) die "$backup holds an SQLite $service database but $var is $url" ;; esac
    if [ -n "$url" ]; then file="${url#sqlite:///}"; else file="$data_dir/$service.db"; fi
    mkdir -p "$(dirname "$file")"
    # A stale write-ahead log beside the restored file would be replayed into it.
    rm -f "$file-wal" "$file-shm"
    cp "$backup/$service.sqlite" "$file.restoring" && mv -f "$file.restoring" "$file"
  else
    die "$backup holds no $service database"
  fi
  echo "restore: $service database restored"
done

# 3. The key files.
if [ -f "$backup/keys.tar" ]; then
  staged="$(mktemp -d "${TMPDIR:-/tmp}/renkei-keys.XXXXXX")"
  trap 'rm -rf "$staged"' EXIT
  tar -C "$staged" -xpf "$backup/keys.tar"
  if [ -d "$key_dir" ] && [ -n "$(ls -A "$key_dir")" ] && ! diff -r -q "$staged" "$key_dir" > /dev/null; then
    mv "$key_dir" "$key_dir.before-restore-$stamp"
    echo "restore: the key directory held other keys; kept as $key_dir.before-restore-$stamp"
  fi
  mkdir -p -m 0700 "$key_dir"
  tar -C "$key_dir" -xpf "$backup/keys.tar"
  chmod 0700 "$key_dir"
  echo "restore: key files restored into $key_dir"
fi
if grep -q '^keys_from_environment=' "$backup/backup.info" 2>/dev/null; then
  echo "restore: NOTE: $(sed -n 's/^keys_from_environment=//p' "$backup/backup.info") came from the environment" \
       "when this backup was made; the services need those same values to read it"
fi

# 4. The attachment blobs. Blob ids are never reused, so extracting over existing blobs changes none of them.
if [ -f "$backup/blobs.tar" ]; then
  mkdir -p -m 0700 "$blob_dir"
  tar -C "$blob_dir" -xpf "$backup/blobs.tar"
  echo "restore: attachment blobs restored into $blob_dir"
fi
echo "restore: done. Run \`renkei migrate\` (a backup from an older release is brought up to date), start the" \
     "services, then \`renkei audit verify\` with your kept anchors"

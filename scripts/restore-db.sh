#!/usr/bin/env bash
# Restore a backup made by scripts/backup-db.sh. Destructive: it replaces the
# objects in the database with those of the archive.
#
#   scripts/restore-db.sh [--context CTX] [--release NAME] [--db-user U] [--db-name D] [--yes] [--while-connected] <namespace> <file>
#
# Asks to type the namespace to confirm; without a terminal it refuses unless
# --yes is given. Restores in one transaction (all of it, or nothing). Refuses
# while other sessions (the app's pods) are connected to the database, unless
# --while-connected: scale the backend to 0 first. In-chart PostgreSQL:
# `pg_restore` in the database pod through `kubectl exec -i`; with
# DATABASE_URL set, pg_restore runs here (its password kept out of argv).
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { printf 'restore-db: error: %s\n' "$*" >&2; exit 1; }

context="" release="" db_user=colony db_name=colony yes="" while_connected=""
while [ $# -gt 0 ]; do
  case "$1" in
    --context) context=${2:?--context needs a value}; shift 2 ;;
    --release) release=${2:?--release needs a value}; shift 2 ;;
    --db-user) db_user=${2:?--db-user needs a value}; shift 2 ;;
    --db-name) db_name=${2:?--db-name needs a value}; shift 2 ;;
    --yes|-y) yes=1; shift ;;
    --while-connected) while_connected=1; shift ;;
    -h|--help) usage ;;
    -*) printf 'restore-db: unknown option %s\n' "$1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || usage
namespace=$1 file=$2
[[ $namespace =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "namespace \"$namespace\" is not a valid DNS-1123 label"
[ -f "$file" ] || die "$file does not exist"
pg_restore --list "$file" > /dev/null || die "$file is not a pg_dump archive"

if [ -z "$yes" ]; then
  [ -t 0 ] || die "restoring replaces the data of $namespace; there is no terminal to confirm on, so pass --yes"
  printf 'This replaces the database of %s with %s.\nType the namespace to confirm: ' "$namespace" "$file" >&2
  read -r answer
  [ "$answer" = "$namespace" ] || die "not confirmed; nothing was changed"
fi

kubectl_args=(--namespace "$namespace")
[ -n "$context" ] && kubectl_args=(--context "$context" "${kubectl_args[@]}")

# shellcheck source=scripts/lib/pg-url.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pg-url.sh"

others_sql="SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
refuse_if_connected() {
  local others=$1
  [ -n "$while_connected" ] && return
  [ "$others" = 0 ] && return
  die "$others other session(s) are connected to the database (the app's pods?): a restore under them mixes old and new data; scale the backend to 0 first (kubectl scale deployment --replicas=0 …), or pass --while-connected"
}

if [ -n "${DATABASE_URL:-}" ]; then
  split_password "$DATABASE_URL"
  refuse_if_connected "$(psql -XAtq --dbname="$dbname" -c "$others_sql")"
  pg_restore --single-transaction --clean --if-exists --no-owner --dbname="$dbname" "$file" || die "pg_restore failed; nothing was restored"
else
  selector=app.kubernetes.io/component=database
  [ -n "$release" ] && selector="$selector,app.kubernetes.io/instance=$release"
  pod=$(kubectl "${kubectl_args[@]}" get pods --selector "$selector" -o name | sed -n 1p)
  [ -n "$pod" ] || die "no database pod labelled $selector in namespace $namespace; for an external database set DATABASE_URL"
  refuse_if_connected "$(kubectl "${kubectl_args[@]}" exec "${pod#pod/}" -- psql --no-psqlrc --no-align --tuples-only \
    --username "$db_user" --dbname "$db_name" --command="$others_sql")"
  kubectl "${kubectl_args[@]}" exec -i "${pod#pod/}" -- pg_restore --single-transaction --clean --if-exists --no-owner \
    --username "$db_user" --dbname "$db_name" < "$file" || die "pg_restore in $pod failed; nothing was restored"
fi
printf 'restore-db: restored %s into %s\n' "$file" "$namespace" >&2

#!/usr/bin/env bash
# Restore a backup made by scripts/backup-db.sh. Destructive: it replaces the
# objects in the database with those of the archive.
#
#   scripts/restore-db.sh [--context CTX] [--release NAME] [--db-user U] [--db-name D] [--yes] <namespace> <file>
#
# Asks to type the namespace to confirm; without a terminal it refuses unless
# --yes is given. In-chart PostgreSQL: `pg_restore` in the database pod
# through `kubectl exec -i`; with DATABASE_URL set, pg_restore runs here.
set -euo pipefail

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { printf 'restore-db: error: %s\n' "$*" >&2; exit 1; }

context="" release="" db_user=colony db_name=colony yes=""
while [ $# -gt 0 ]; do
  case "$1" in
    --context) context=${2:?--context needs a value}; shift 2 ;;
    --release) release=${2:?--release needs a value}; shift 2 ;;
    --db-user) db_user=${2:?--db-user needs a value}; shift 2 ;;
    --db-name) db_name=${2:?--db-name needs a value}; shift 2 ;;
    --yes|-y) yes=1; shift ;;
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

if [ -n "${DATABASE_URL:-}" ]; then
  pg_restore --clean --if-exists --no-owner --dbname="$DATABASE_URL" "$file" || die "pg_restore failed"
else
  selector=app.kubernetes.io/component=database
  [ -n "$release" ] && selector="$selector,app.kubernetes.io/instance=$release"
  pod=$(kubectl "${kubectl_args[@]}" get pods --selector "$selector" -o name | sed -n 1p)
  [ -n "$pod" ] || die "no database pod labelled $selector in namespace $namespace; for an external database set DATABASE_URL"
  kubectl "${kubectl_args[@]}" exec -i "${pod#pod/}" -- pg_restore --clean --if-exists --no-owner \
    --username "$db_user" --dbname "$db_name" < "$file" || die "pg_restore in $pod failed"
fi
printf 'restore-db: restored %s into %s\n' "$file" "$namespace" >&2

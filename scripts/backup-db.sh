#!/usr/bin/env bash
# Back up Colony's database to a custom-format pg_dump archive.
#
#   scripts/backup-db.sh [--context CTX] [--release NAME] [--in-chart] [--db-user U] [--db-name D] <namespace> [out-dir]
#
# In-chart PostgreSQL: finds the database pod by its labels
# (app.kubernetes.io/component=database, and app.kubernetes.io/instance=NAME
# with --release) and runs `pg_dump -Fc` in it through `kubectl exec`, as
# the role and database of --db-user/--db-name (the pod's POSTGRES_USER and
# POSTGRES_DB; `cargo xtask` passes them). External database: set
# DATABASE_URL and pg_dump runs here instead; --in-chart ignores it.
#
# Writes <out-dir>/<namespace>-<UTC timestamp, ns>-<random>.dump (mode 0600; out-dir
# defaults to the current directory), checks it with `pg_restore --list`,
# and prints its path as the last line. On any failure it exits non-zero and
# leaves no file under the final name.
set -euo pipefail

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { printf 'backup-db: error: %s\n' "$*" >&2; exit 1; }

context="" release="" db_user=colony db_name=colony in_chart=""
while [ $# -gt 0 ]; do
  case "$1" in
    --context) context=${2:?--context needs a value}; shift 2 ;;
    --release) release=${2:?--release needs a value}; shift 2 ;;
    --db-user) db_user=${2:?--db-user needs a value}; shift 2 ;;
    --db-name) db_name=${2:?--db-name needs a value}; shift 2 ;;
    --in-chart) in_chart=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) printf 'backup-db: unknown option %s\n' "$1" >&2; usage ;;
    *) break ;;
  esac
done
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
namespace=$1
out_dir=${2:-.}
[[ $namespace =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "namespace \"$namespace\" is not a valid DNS-1123 label"

kubectl_args=(--namespace "$namespace")
[ -n "$context" ] && kubectl_args=(--context "$context" "${kubectl_args[@]}")

umask 077
mkdir -p "$out_dir"
# Unique even for two backups in the same second: nanoseconds plus a
# random suffix; each run writes its own partial file and only a checked
# archive gets the final name. The name is chosen and the traps are set
# before the file exists, so an interrupt at any moment leaves no partial
# file (mktemp would create it before its name could be known here).
stamp=$(date -u +%Y%m%dT%H%M%S.%NZ)
suffix=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
partial="$out_dir/.$namespace-$stamp-$suffix.partial"
final="$out_dir/$namespace-$stamp-$suffix.dump"
trap 'rm -f "$partial"' EXIT
# An interrupt ends the script through its EXIT trap: no partial file stays.
trap 'exit 130' INT
trap 'exit 143' TERM
if ! (set -C; : > "$partial") 2>/dev/null; then
  trap - EXIT # not ours: leave it
  die "$partial already exists"
fi
[ -e "$final" ] && die "$final already exists"

# shellcheck source=scripts/lib/pg-url.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pg-url.sh"

if [ -n "${DATABASE_URL:-}" ] && [ -z "$in_chart" ]; then
  printf 'backup-db: pg_dump of the external database (DATABASE_URL)\n' >&2
  split_password "$DATABASE_URL"
  pg_dump -Fc --dbname="$dbname" > "$partial" || die "pg_dump failed"
else
  selector=app.kubernetes.io/component=database
  [ -n "$release" ] && selector="$selector,app.kubernetes.io/instance=$release"
  pod=$(kubectl "${kubectl_args[@]}" get pods --selector "$selector" -o name | sed -n 1p)
  [ -n "$pod" ] || die "no database pod labelled $selector in namespace $namespace; for an external database set DATABASE_URL"
  printf 'backup-db: pg_dump in %s\n' "$pod" >&2
  kubectl "${kubectl_args[@]}" exec "${pod#pod/}" -- pg_dump -Fc --username "$db_user" "$db_name" > "$partial" \
    || die "pg_dump in $pod failed"
fi

[ -s "$partial" ] || die "pg_dump wrote nothing"
pg_restore --list "$partial" > /dev/null || die "the dump is not a readable archive (pg_restore --list failed)"
chmod 600 "$partial"
if [ -e "$final" ]; then
  trap - EXIT
  die "$final appeared meanwhile; this backup is kept as $partial"
fi
mv "$partial" "$final"
trap - EXIT
printf '%s\n' "$final"

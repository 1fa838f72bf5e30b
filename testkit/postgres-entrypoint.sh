#!/bin/sh
# The test bed's PostgreSQL image entrypoint: what the official `postgres`
# image's docker-entrypoint.sh does that this project relies on. With
# `postgres` as the command and an empty $PGDATA: initdb with
# POSTGRES_USER (default postgres) as the superuser and POSTGRES_PASSWORD
# (required, as the official image requires it), password authentication
# over TCP, the database POSTGRES_DB (default: the user's name); then the
# server runs as the `postgres` user, listening on every address, with the
# command's other arguments (`postgres -c lock_timeout=5s`). Any other
# command runs as given.
set -eu

if [ "${1:-}" != postgres ]; then
  exec "$@"
fi
shift

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "Error: Database is uninitialized and superuser password is not specified." >&2
    echo "       You must specify POSTGRES_PASSWORD to a non-empty value for the superuser." >&2
    exit 1
  fi
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  chown postgres "$pwfile"
  runuser -u postgres -- initdb --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\";" |
      runuser -u postgres -- postgres --single -D "$PGDATA" -j postgres >/dev/null
  fi
  echo "PostgreSQL init process complete; ready for start up."
fi

exec runuser -u postgres -- postgres -c listen_addresses='*' "$@"

# Sourced by backup-db.sh and restore-db.sh: PostgreSQL URLs without their
# password in any argv (`ps` shows argv to every user).
# shellcheck shell=bash

# split_password URL: sets `dbname` to URL without its password and exports
# the password, percent-decoded, as PGPASSWORD. The password runs to the
# last `@` (a `/` or `@` typed into one stays in it); xtask's
# alembic::database::split_password does the same.
split_password() {
  dbname=$1
  if [[ $dbname =~ ^(postgres(ql)?://)([^:@/]*):(.*)@([^@]*)$ ]]; then
    PGPASSWORD=$(printf '%b' "${BASH_REMATCH[4]//%/\\x}")
    export PGPASSWORD
    dbname="${BASH_REMATCH[1]}${BASH_REMATCH[3]}@${BASH_REMATCH[5]}"
  fi
}

#!/usr/bin/env bash
# See the main job run on this machine, with no cluster:
#
#   scripts/test-bed.sh demo           bring the bed up if needed, then run the demo
#   scripts/test-bed.sh demo --clean   remove what the demo made
#
# It copies testdata/colony (a miniature Colony monorepo, in its pre-activity-log
# era) with this workspace's chart and scripts into a fresh git repository,
# loads a pre-Alembic schema with rows into a database of the test bed, makes a
# simulated cluster in front of it, and runs the real commands a user would:
# doctor, deploy, status, a new migration and a second deploy, a deploy with
# nothing changed, a rollback to the baseline, verify.
#
# Only the Kubernetes API server is simulated (`kubectl` and `helm` are the
# test bed's colony-sim, at the process boundary). Docker, the registry,
# PostgreSQL, Alembic, `helm template`, run-migrations and the backup are real.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BED_DIR=${COLONY_TEST_BED_DIR:-/tmp/colony-test-bed}
DEMO=${COLONY_DEMO_DIR:-$BED_DIR/demo}
DATABASE=colony_demo
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }
# Bold headings on a terminal only; plain text in logs and CI.
if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD="" PLAIN=""; fi
heading() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$PLAIN"; }
say() { printf '%s\n' "$*"; }

bed_env() {
  [ -f "$BED_DIR/env" ] || die "the test bed is not up: run scripts/test-bed.sh up (or scripts/test-bed.sh demo)"
  # shellcheck disable=SC1091
  source "$BED_DIR/env"
}

psql_bed() { psql "$COLONY_TEST_DATABASE_URL/$1" -XAtq -v ON_ERROR_STOP=1 "${@:2}"; }

# The simulated pods' containers in the bed's Docker.
remove_pods() {
  local ids
  ids=$(docker ps --all --quiet --filter "label=colony-sim.state=$DEMO/cluster" 2>/dev/null) || return 0
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086 # one id per word
    docker rm --force $ids >/dev/null
  fi
}

clean() {
  if [ -f "$BED_DIR/env" ]; then
    bed_env
    psql_bed postgres -c "DROP DATABASE IF EXISTS $DATABASE" >/dev/null 2>&1 || true
    remove_pods
  fi
  rm -rf "$DEMO"
  say "demo: removed $DEMO, its pods' containers and the database $DATABASE"
}

build_tools() {
  heading "Building the tools (cargo build: xtask, run-migrations, colony-sim)"
  (cd "$ROOT" && cargo build --quiet -p xtask -p backend-migrations -p testkit --bins)
}

# The Colony monorepo as it was before the activity log: only 0001_baseline.
make_repo() {
  local repo=$DEMO/colony
  cp -r "$ROOT/testdata/colony" "$repo"
  cp -r "$ROOT/helm" "$ROOT/scripts" "$repo/"
  rm "$repo/backend/alembic/versions/0002_activity_and_comments.py"
  # The backend image runs Alembic through uv, as Colony's does; this
  # machine renders the SQL preview with its own Alembic.
  sed -i 's/^\[environments.colony-dev\]$/&\nalembic_command = "uv run --no-sync alembic"/' "$repo/deploy.toml"
  printf '\n[environments.colony-dev.migrations]\npreview_command = "alembic"\n' >> "$repo/deploy.toml"
  git -C "$repo" init -q
  git_commit "Colony with Alembic's baseline (the pre-Alembic schema, stamped)"
}

git_commit() {
  git -C "$DEMO/colony" add -A
  git -C "$DEMO/colony" -c user.name="Colony demo" -c user.email=demo@colony.invalid \
    commit -q -m "$1"
}

make_database() {
  psql_bed postgres -c "DROP DATABASE IF EXISTS $DATABASE" -c "CREATE DATABASE $DATABASE" >/dev/null 2>&1
  psql_bed "$DATABASE" -f "$ROOT/testdata/colony/pre-alembic.sql" >/dev/null
}

# The simulated cluster, the user's values file, a `cargo xtask` that works
# in the demo repository, and the variables a user needs to go on by hand.
make_environment() {
  local sim_bin
  sim_bin=$("$TARGET/debug/colony-sim" init "$DEMO/cluster" homelab "$COLONY_TEST_DATABASE_URL/$DATABASE")
  mkdir -p "$DEMO/home/homelab/colony-dev" "$DEMO/bin"
  printf 'backend:\n  replicas: 2\n' > "$DEMO/home/homelab/colony-dev/my-values.yaml"
  # cargo runs `cargo-xtask xtask ARGS` for `cargo xtask ARGS` outside this workspace.
  printf '#!/bin/sh\nshift\nexec %q "$@"\n' "$TARGET/debug/xtask" > "$DEMO/bin/cargo-xtask"
  chmod +x "$DEMO/bin/cargo-xtask"
  strip -o "$DEMO/run-migrations" "$TARGET/debug/run-migrations"
  cat > "$DEMO/env.sh" <<EOF
export PATH=$DEMO/bin:$sim_bin:$COLONY_TEST_VENV/bin:\$PATH
export RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup} CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export HOME=$DEMO/home
export COLONY_SIM_STATE=$DEMO/cluster
export COLONY_CONFIG=deploy.toml
export COLONY_REGISTRY=$COLONY_TEST_REGISTRY/demo
export COLONY_RUN_MIGRATIONS_BIN=$DEMO/run-migrations
export DOCKER_HOST=$DOCKER_HOST
cd $DEMO/colony
EOF
}

# run TITLE COMMAND…: a heading, then the command as the user types it.
run() {
  heading "$1"
  shift
  say "\$ $*"
  (
    # shellcheck disable=SC1091
    source "$DEMO/env.sh"
    "$@"
  )
}

banner() {
  say "Only the Kubernetes API server is simulated: \`kubectl\` and \`helm\` are the test bed's"
  say "colony-sim, at the process boundary. Docker, the registry, PostgreSQL, Alembic,"
  say "\`helm template\`, run-migrations and the backup are real."
}

demo() {
  bed_env
  command -v strip >/dev/null || die "strip (binutils) is needed"
  heading "Colony deploy demo in $DEMO"
  banner
  build_tools
  remove_pods
  rm -rf "$DEMO"
  mkdir -p "$DEMO"
  make_repo
  make_database
  make_environment
  say "database $DATABASE: $(psql_bed "$DATABASE" -c 'SELECT count(*) FROM households') households, \
$(psql_bed "$DATABASE" -c 'SELECT count(*) FROM chores') chores, no alembic_version (a pre-Alembic schema)"

  run "1. Every prerequisite, with a fix for each" cargo xtask doctor colony-dev
  run "2. The first deploy: images, Helm, the init containers stamp the old schema, verify" \
    cargo xtask deploy colony-dev --yes
  run "3. The release, its deploy record, the database's revision, the pods and the digest each runs" \
    cargo xtask status colony-dev
  local containers
  mapfile -t containers < <(docker ps --all --quiet --filter "label=colony-sim.state=$DEMO/cluster")
  run "3b. Each pod is containers of the pushed image in the bed's Docker: the init containers ran the pinned digest" \
    docker inspect --format '{{.Name}}  {{.Config.Image}}  {{.State.Status}} (exit {{.State.ExitCode}})' "${containers[@]}"
  local pod
  # shellcheck disable=SC1091
  pod=$(source "$DEMO/env.sh" && kubectl --context homelab -n colony-dev get pods -l app.kubernetes.io/component=backend -o name | sed -n 1p)
  run "3c. The stamp, made from inside that image by its run-migrations and its own Alembic (through uv)" \
    kubectl --context homelab -n colony-dev logs "${pod#pod/}" -c run-migrations

  heading "4a. A commit that adds a migration (0002: the activity log and comments)"
  cp "$ROOT/testdata/colony/backend/alembic/versions/0002_activity_and_comments.py" \
    "$DEMO/colony/backend/alembic/versions/"
  git_commit "Add the activity log and comments"
  say "\$ git commit -m 'Add the activity log and comments'"
  run "4b. The second deploy: the plan names the migration, a backup first, a new Helm revision" \
    cargo xtask deploy colony-dev --yes
  run "5. Deploy again with nothing changed: no Helm revision, no backup, just verify" \
    cargo xtask deploy colony-dev --yes
  run "6a. Roll the schema back to the baseline, then the app to the revision that expects it" \
    cargo xtask rollback colony-dev --to 0001_baseline --yes
  run "6b. Verify on its own: it expects what the running release expects" \
    cargo xtask verify colony-dev

  heading "Done"
  banner
  say ""
  say "Go on by hand (the repository, cluster and database stay):"
  sed 's/^/  /' "$DEMO/env.sh"
  say "  cargo xtask status"
  say ""
  say "Remove it all: scripts/test-bed.sh demo --clean"
}

case "${1:-}" in
  --clean) clean ;;
  "") demo ;;
  *) echo "usage: scripts/demo.sh [--clean]" >&2; exit 2 ;;
esac

//! Every command and flag, declared in one place (rust-analyzer's xtask style).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Deploy Colony (backend, frontend, PostgreSQL) to Kubernetes with its database migrations, in one command.",
    long_about = "Deploy Colony (backend, frontend, PostgreSQL) to Kubernetes with its database migrations, in one command.\n\n\
        `deploy` builds and pushes both images, backs the database up, runs `helm upgrade --install` with the \
        image digests pinned, watches the rollout and verifies that the migrations ran. Environments are \
        described in deploy.toml at the root of the checkout.",
    after_help = "Examples:\n  \
        cargo xtask deploy colony-dev --dry-run   print the plan, touch nothing\n  \
        cargo xtask doctor                        check every prerequisite, with fixes\n  \
        cargo xtask verify colony-dev             check the running release's migrations\n  \
        cargo xtask rollback --to 0001_baseline   downgrade the schema, then the app",
    version,
    // Help wraps to the terminal (or COLUMNS), at most 100 columns.
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Echo every command in full (Helm's and kubectl's argv, unshortened).
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
    /// Say only warnings, errors and the result: no progress lines, no
    /// echoed commands (a refusal, a failure and the summary are still said).
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build, push, back up, `helm upgrade --install`, watch the rollout, verify.
    #[command(
        long_about = "Build, push, back up, `helm upgrade --install`, watch the rollout, verify.\n\n\
        First it reads (and changes nothing): git, the registry's digests for this commit's tags, the \
        release and its deploy record, the database's revision in a running pod. From those it decides \
        a plan and prints it: which migrations will run, whether a backup is needed, every command. \
        Then it asks, and runs exactly those steps. `--dry-run` prints the same plan and stops.\n\n\
        When the registry already holds this commit's images with the digests the release runs, and \
        the chart and values files are unchanged, there is nothing to deploy: no Helm revision, no \
        backup; the running release is verified instead (`--force` deploys anyway).",
        after_help = "Examples:\n  \
        cargo xtask deploy colony-dev --dry-run\n  \
        cargo xtask deploy colony-dev --dry-run --json | jq .steps\n  \
        cargo xtask deploy colony-dev --yes\n  \
        COLONY_REGISTRY=127.0.0.1:5000 cargo xtask deploy colony-dev --dry-run\n\n\
        --dry-run --json keys: schema_version, command, environment, facts{…}, missing[], decision (deploy | nothing to deploy), \
        reason, schema[], migrations, manifests (changes: revision, objects[] (object, change: added | removed | changed, \
        fields[]) | unavailable: why), steps[] (kind, title, alongside_previous, items[] (type run: argv, expect | type note: text)).\n\
        --json keys (a run): schema_version, environment, namespace, release, decision, reason, helm_revision, alembic, backup, \
        rehearsal (postgres, restored_tables, restored_rows, upgrade[], downgrade[] (direction, from, to, took), \
        locks[] (table, held), downgrade_proven, took; null when not rehearsed), stamped, verified, images[], facts_seconds, steps[] (name, seconds, note)."
    )]
    Deploy(DeployArgs),
    /// Build the backend and frontend images through the Docker Engine API.
    #[command(
        after_help = "Tags are immutable: the commit's short sha, with a content-hash suffix when the \
        build context has uncommitted changes. An image whose tag the registry already holds is skipped.\n\n\
        Builds use the daemon's BuildKit, as `docker build` does (RUN --mount=type=cache|bind, COPY --chmod, \
        images.<c>.target and .network in deploy.toml); DOCKER_BUILDKIT=0 selects the legacy builder, which \
        refuses BuildKit syntax before anything is built.\n\n\
        Examples:\n  cargo xtask build colony-dev\n  DOCKER_HOST=unix:///tmp/docker.sock cargo xtask build --jobs 1\n  \
        DOCKER_BUILDKIT=0 cargo xtask build"
    )]
    Build(ImageArgs),
    /// Build (unless the registry has the tag) and push both images; print their digests.
    #[command(
        after_help = "Credentials come from the Docker config (DOCKER_CONFIG or ~/.docker/config.json: \
        auths, credHelpers, credsStore), as `docker login` writes them. Each image is pushed as soon as it \
        is built; a transient registry answer (5xx, a blob it does not know yet, a broken connection) is \
        tried again up to 4 times; one build and push of a tag at a time on this machine.\n\n\
        Examples:\n  cargo xtask push colony-dev\n  COLONY_REGISTRY=127.0.0.1:5000 cargo xtask push"
    )]
    Push(ImageArgs),
    /// Back up the environment's database with scripts/backup-db.sh.
    #[command(after_help = "Examples:\n  cargo xtask backup colony-dev\n  \
        cargo xtask backup colony-dev --json | jq -r .path\n\n\
        --json keys: schema_version, environment, path, bytes, seconds.")]
    Backup(EnvArgs),
    /// Check that the newest pods run the expected Alembic head and that their migrations completed.
    #[command(
        long_about = "Check that the newest pods run the expected Alembic head and that their migrations completed.\n\n\
        The expected head is the running release's: the record a rollback left for the current Helm \
        revision, else that revision's deploy record, else (said so in the output) the head of the \
        checkout's versions directory. `--expect` overrides all of them.",
        after_help = "Examples:\n  cargo xtask verify\n  cargo xtask verify colony-dev --json\n  \
        cargo xtask verify colony-dev --expect 0001_baseline"
    )]
    Verify(VerifyArgs),
    /// Downgrade the schema in the running release (after a backup), then roll the app back.
    #[command(
        long_about = "Downgrade the schema in the running release (after a backup), then roll the app back.\n\n\
        The whole plan is decided before anything changes: the target revision; the Helm revision the \
        app returns to (the newest earlier `deployed`/`superseded` revision whose deploy record names \
        the target as its head, or the one given with --app-revision, e.g. a revision installed by hand \
        before this tool); the backup; `alembic downgrade` in a pod of the current release (its scripts \
        know how to go down); `helm rollback`; a record of the expected head for verify; verify. When \
        it cannot finish, it refuses with nothing changed (exit 2). A target equal to the database's \
        revision is nothing to do (exit 0).",
        after_help = "Examples:\n  \
        cargo xtask rollback --to 0001_baseline --dry-run\n  \
        cargo xtask rollback --to 0001_baseline --dry-run --json | jq .steps\n  \
        cargo xtask rollback colony-dev --to 0001_baseline --app-revision 1 --yes\n  \
        cargo xtask rollback colony-dev --steps 1 --yes\n\n\
        --dry-run --json keys: as deploy's plan (decision rollback, schema[]: the revisions dropped; or decision refused, with missing[]; \
        or decision nothing to do, without steps, which a run with --json prints too).\n\
        --json keys (a run): schema_version, environment, from, target, app_revision, helm_revision, backup, verified, \
        steps[] (name, seconds, note)."
    )]
    Rollback(RollbackArgs),
    /// Show the SQL the checkout's pending migrations will run on the environment's database, and the risks in it.
    #[command(
        long_about = "Show the SQL the checkout's pending migrations will run on the environment's database, \
        and the risks in it.\n\n\
        The same preview a deploy shows before it asks: the database's revision is read from a ready \
        backend pod (`alembic current`), or named with --from (no cluster needed); Alembic renders the \
        SQL from there to the checkout's head in offline mode (`alembic upgrade FROM:TO --sql`, with the \
        environment's migrations.preview_command, default alembic_command, run in the directory of \
        alembic.ini with a placeholder DATABASE_URL: nothing connects); Squawk's rules flag what \
        takes a lock, rewrites a table, destroys data or breaks the old pods, with the safer form. \
        A migration that cannot render offline (one that queries) says so and the others still show.\n\n\
        deploy.toml, per environment:\n  \
        [environments.colony-dev.migrations]\n  \
        preview_command = \"uv run alembic\"\n  \
        strict = true                      # findings refuse deploys (exit 2), like --strict-migrations\n  \
        disabled_rules = [\"ban-drop-column\"]\n  \
        enabled_rules = [\"prefer-text-field\"]   # style and timeout rules are off by default",
        after_help = "Examples:\n  cargo xtask migrations colony-dev\n  \
        cargo xtask migrations --from 0001_baseline\n  \
        cargo xtask migrations --from base --strict   # in CI, on every new migration\n\n\
        Rendering the SQL runs this checkout's env.py and migrations on this machine (deploy's plan does too, \
        even with --dry-run), with only PATH, HOME, the locale and the variables migrations.preview_env names.\n\n\
        --json keys: schema_version, environment, database, database_source, head, migrations (state: no-migrations | \
        upgrade | unavailable; from, to, stamp, command[], revisions[] (id, message, sql, no_preview), \
        findings[] (revision, rule, impact, statement, why, safer))."
    )]
    Migrations(MigrationsArgs),
    /// Show the release history with each revision's deploy record, the schema revision and the pods.
    #[command(after_help = "Examples:\n  cargo xtask status colony-dev\n  \
        cargo xtask status colony-dev --json | jq .database\n\n\
        --json keys: schema_version, environment, namespace, release, installed, history[] (revision, status, updated, \
        description, chart, record{git_sha, alembic_head, backup_file, inputs_hash, backend_image, \
        frontend_image}), replicaset, pods[] (name, state), database (state: revision | failed | unknown, \
        with revision/pod, exit_code/error, or why).")]
    Status(StatusArgs),
    /// Rehearse the pending migrations on a restore of a fresh backup, without deploying.
    #[command(
        after_help = "A fresh backup of the environment's database is restored into a throwaway PostgreSQL; the \
        backend image of this commit (already in the registry: `cargo xtask push`) runs its run-migrations there, \
        downgrades to the database's revision and upgrades again. Each revision is timed, the longest ACCESS \
        EXCLUSIVE lock per table reported. Nothing of the release changes; the backup file stays.\n\n\
        Examples:\n  cargo xtask rehearse colony-dev\n  cargo xtask rehearse --dry-run\n  \
        cargo xtask rehearse colony-dev --json | jq .rehearsal.locks\n\n\
        --json keys: schema_version, environment, backup, rehearsal (as deploy's), steps[] (name, seconds, note)."
    )]
    Rehearse(RehearseArgs),
    /// Show who holds the environment's deploy lock; `--break` removes a stale one.
    #[command(
        after_help = "deploy and rollback hold a lock per environment while they change it (a Kubernetes Lease         `colony-deploy-<release>` in the namespace, naming user@host, pid, command, git sha, start and the step         it is at). It is renewed while they run and released at their end, on an error and on Ctrl-C; a second         deploy or rollback refuses (exit 2, nothing changed) or waits with --wait-for-lock. A holder killed         with -9 stops renewing: its lock is stale after `lock_stale_after` (deploy.toml, 60s by default) and         the next command takes it over. --break removes the lock whoever holds it (it asks first): only for         a holder you know is gone.\n\n\
        Exit status: 0 free, 3 held by a live holder, 4 stale.\n\n\
        Examples:\n  cargo xtask lock colony-dev\n  cargo xtask lock --json\n  cargo xtask lock colony-dev --break\n\n\
        --json keys: schema_version, environment, lease, state (free | held | stale), holder (identity, command, \
        git_sha, started, step), renewed_seconds_ago, stale_after_seconds."
    )]
    Lock(LockArgs),
    /// Check every prerequisite (Docker, registry, kubectl and its context, helm, disk) and say how to fix each.
    #[command(
        after_help = "Examples:\n  cargo xtask doctor\n  cargo xtask doctor colony-dev --json\n\n\
        --json keys: schema_version, passed (bool), checks[] (name, level: ok | warn | fail, detail, fix)."
    )]
    Doctor(EnvArgs),
}

/// Which environment, and the overrides of its deploy.toml entry.
/// Precedence: flag, then COLONY_* variable, then deploy.toml.
#[derive(Debug, Clone, Default, Args)]
pub struct EnvOverrides {
    /// The environments file [default: deploy.toml at the root of the checkout].
    #[arg(long, env = "COLONY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kubernetes namespace.
    #[arg(long, env = "COLONY_NAMESPACE")]
    pub namespace: Option<String>,
    /// Helm release name.
    #[arg(long, env = "COLONY_RELEASE")]
    pub release: Option<String>,
    /// The kube context that must be current.
    #[arg(long, env = "COLONY_KUBE_CONTEXT")]
    pub kube_context: Option<String>,
    /// Image registry, host[:port][/path].
    #[arg(long, env = "COLONY_REGISTRY")]
    pub registry: Option<String>,
    /// Helm values file (repeatable; replaces the configured list).
    /// COLONY_VALUES takes a comma-separated list.
    #[arg(
        short = 'f',
        long = "values",
        env = "COLONY_VALUES",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    pub values: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Environment from deploy.toml, e.g. colony-dev.
    pub env: String,
    /// Print every step and command line, touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Deploy the images already in the registry for this commit instead of building.
    #[arg(long)]
    pub skip_build: bool,
    /// Skip the database backup (refused unless --yes is also given).
    #[arg(long)]
    pub no_backup: bool,
    /// Deploy even when nothing changed (a new Helm revision and a backup).
    #[arg(long)]
    pub force: bool,
    /// Refuse (exit 2, nothing changed) when Squawk finds a risk in the
    /// migrations' SQL, or when pending migrations could not be linted or
    /// rehearsed [deploy.toml: migrations.strict].
    #[arg(long)]
    pub strict_migrations: bool,
    /// Do not rehearse pending migrations on a restore of the backup
    /// before Helm [deploy.toml: rehearsal.enabled = false].
    #[arg(long)]
    pub no_rehearsal: bool,
    /// Print the summary (or, with --dry-run, the plan) as JSON.
    #[arg(long)]
    pub json: bool,
    /// The run-migrations binary to layer into the backend image
    /// [default: `cargo build --release` it from this workspace].
    #[arg(long, env = "COLONY_RUN_MIGRATIONS_BIN", value_name = "FILE")]
    pub migrations_binary: Option<PathBuf>,
    /// When another deploy or rollback holds the environment's lock, wait up
    /// to this long (`90s`, `10m`) for it, then plan on what it left.
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait_for_lock: Option<std::time::Duration>,
    /// With --dry-run: also write the plan and the facts it was decided from
    /// to FILE, for review; `--plan FILE` applies exactly it.
    #[arg(long, value_name = "FILE", requires = "dry_run")]
    pub plan_out: Option<PathBuf>,
    /// Apply the plan in FILE (from --plan-out) exactly: refused, changing
    /// nothing, if a fact it was decided from (commit, release, database,
    /// digests, chart and values) or the plan itself differs now.
    #[arg(long, value_name = "FILE", conflicts_with = "plan_out")]
    pub plan: Option<PathBuf>,
    /// Promote: deploy the images another environment runs, by the digests
    /// its release recorded (no build, no push); the checkout must be at
    /// their commit (its migrations are previewed, linted and rehearsed).
    #[arg(long, value_name = "ENV", conflicts_with = "skip_build")]
    pub images_from: Option<String>,
    #[command(flatten)]
    pub env_overrides: EnvOverrides,
}

/// `--wait-for-lock`: a duration as deploy.toml's timeouts are written.
fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_timeout("--wait-for-lock", text)
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Environment from deploy.toml [default: the file's default_environment].
    pub env: Option<String>,
    /// Remove the lock whoever holds it (asks first; --yes without a terminal).
    #[arg(long = "break")]
    pub break_it: bool,
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub env_overrides: EnvOverrides,
}

#[derive(Debug, Args)]
pub struct RehearseArgs {
    /// Environment from deploy.toml [default: the file's default_environment].
    pub env: Option<String>,
    /// Print the plan, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result (or, with --dry-run, the plan) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub env_overrides: EnvOverrides,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    /// Environment from deploy.toml [default: the file's default_environment].
    pub env: Option<String>,
    /// Print JSON (keys listed below); progress goes to stderr.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub env_overrides: EnvOverrides,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Environment from deploy.toml [default: the file's default_environment].
    pub env: Option<String>,
    /// Print JSON (keys listed below); nothing else on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub env_overrides: EnvOverrides,
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Environment from deploy.toml [default: the file's default_environment].
    pub env: Option<String>,
    /// How many images build (and push) at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// The run-migrations binary to layer into the backend image
    /// [default: `cargo build --release` it from this workspace].
    #[arg(long, env = "COLONY_RUN_MIGRATIONS_BIN", value_name = "FILE")]
    pub migrations_binary: Option<PathBuf>,
    /// Print the result (tags, digests, timings) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub env_overrides: EnvOverrides,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Environment from deploy.toml [default: the file's default_environment].
    pub env: Option<String>,
    /// Expect this Alembic revision instead of the running release's recorded head.
    #[arg(long, value_name = "REVISION")]
    pub expect: Option<String>,
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub env_overrides: EnvOverrides,
}

#[derive(Debug, Args)]
pub struct MigrationsArgs {
    /// Environment from deploy.toml [default: the file's default_environment].
    pub env: Option<String>,
    /// Preview from this revision (`base`: an empty database) instead of
    /// reading the database's revision from the cluster.
    #[arg(long, value_name = "REVISION")]
    pub from: Option<String>,
    /// Exit 2 when Squawk finds a risk.
    #[arg(long)]
    pub strict: bool,
    /// Print the preview as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub env_overrides: EnvOverrides,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["to", "steps"]))]
pub struct RollbackArgs {
    /// Environment from deploy.toml [default: the file's default_environment].
    pub env: Option<String>,
    /// Alembic revision to downgrade to, e.g. 0001_baseline.
    #[arg(long, value_name = "REVISION")]
    pub to: Option<String>,
    /// Downgrade this many revisions below the database's current revision.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: Option<u32>,
    /// The Helm revision the app returns to, when no earlier revision recorded
    /// the target head (e.g. one installed by hand before this tool).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub app_revision: Option<u32>,
    /// Print the plan, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan (with --dry-run) or the result as JSON; the progress
    /// goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// When another deploy or rollback holds the environment's lock, wait up
    /// to this long for it, then plan on what it left.
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait_for_lock: Option<std::time::Duration>,
    #[command(flatten)]
    pub env_overrides: EnvOverrides,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rollback_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["xtask", "rollback"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "rollback", "--to", "a", "--steps", "1"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "rollback", "--steps", "0"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "rollback", "--to", "0001_baseline"]).is_ok());
    }
}

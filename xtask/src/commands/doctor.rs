//! `cargo xtask doctor [<env>]`: one line per prerequisite, each with the
//! command that fixes it. Exit 1 when something required is missing.

use std::path::{Path, PathBuf};

use anyhow::Result;
use xshell::{cmd, Shell};

use crate::cli::EnvArgs;
use crate::config::{self, Component, Environment};
use backend_migrations::redact;

use crate::cluster::helm;
use crate::images::registry::{self, DaemonView};
use crate::images::{self, builder, docker, runner};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Works, but worth knowing; does not fail the doctor.
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Prerequisite {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

impl Prerequisite {
    fn ok(name: &'static str, detail: impl Into<String>) -> Prerequisite {
        Prerequisite {
            name,
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Prerequisite {
        Prerequisite {
            name,
            level: Level::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Prerequisite {
        Prerequisite {
            name,
            level: Level::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

const TEST_BED_HINT: &str =
    "for the test bed: scripts/test-bed.sh up && eval \"$(scripts/test-bed.sh env)\"";
/// Below this, a database backup may not fit.
const MIN_FREE_BYTES: u64 = 1 << 30;

pub fn run(args: EnvArgs) -> Result<()> {
    let sh = Shell::new()?;
    let env = config::load(args.env.as_deref(), &args.env_overrides);
    let mut checks = vec![match &env {
        Ok(env) => Prerequisite::ok(
            "config",
            format!(
                "environment {} from {}",
                env.name,
                env.config_file.display()
            ),
        ),
        Err(e) => Prerequisite::fail(
            "config",
            format!("{e:#}"),
            "fix deploy.toml, or pass --config / an environment name",
        ),
    }];
    checks.push(docker_check());
    checks.push(git_check(&sh));
    checks.push(helm_check(&sh));
    checks.push(kubectl_check(&sh, env.as_ref().ok()));
    checks.push(pg_restore_check(&sh));
    if let Ok(env) = &env {
        // Not checkable from here (it runs inside the image); shown so that
        // a wrong one is noticed before verify or rollback need it.
        checks.push(Prerequisite::ok(
            "alembic",
            format!(
                "run in the backend image as `{}` (alembic_command in {})",
                env.alembic_command.join(" "),
                env.config_file.display()
            ),
        ));
        checks.push(sql_preview_check(env));
        // `docker info` once, for both (an unanswering daemon costs its timeout).
        let daemon = docker::registry_view_blocking().ok();
        checks.push(builder_check(env, daemon.as_ref()));
        checks.push(runner_check(env, daemon.as_ref()));
        checks.push(registry_check(env, daemon.as_ref()));
        checks.push(rehearsal_check(env));
        checks.push(disk_check(&sh, &env.backup_dir));
    }
    if args.json {
        crate::report::print_json(&to_json(&checks))?;
    } else {
        print!("{}", render(&checks));
    }
    let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} prerequisite(s) missing; each FAIL line above says how to fix it");
    }
    Ok(())
}

/// `doctor --json`: `passed` and each check's name, level, detail and fix.
#[derive(serde::Serialize)]
pub struct DoctorJson<'a> {
    passed: bool,
    checks: Vec<CheckJson<'a>>,
}

#[derive(serde::Serialize)]
struct CheckJson<'a> {
    name: &'a str,
    /// `ok`, `warn` or `fail`.
    level: &'static str,
    detail: &'a str,
    fix: &'a Option<String>,
}

pub fn to_json(checks: &[Prerequisite]) -> DoctorJson<'_> {
    DoctorJson {
        passed: checks.iter().all(|c| c.level != Level::Fail),
        checks: checks
            .iter()
            .map(|c| CheckJson {
                name: c.name,
                level: match c.level {
                    Level::Ok => "ok",
                    Level::Warn => "warn",
                    Level::Fail => "fail",
                },
                detail: &c.detail,
                fix: &c.fix,
            })
            .collect(),
    }
}

pub fn render(checks: &[Prerequisite]) -> String {
    let mut out = String::new();
    for check in checks {
        let level = match check.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        out.push_str(&format!(
            "{level:<5} {:<11} {}\n",
            check.name,
            check.detail.replace('\n', "\n                  ")
        ));
        if let Some(fix) = &check.fix {
            out.push_str(&format!("                  fix: {fix}\n"));
        }
    }
    out
}

fn docker_check() -> Prerequisite {
    let host = docker::daemon_address();
    let fix = format!("start the Docker daemon (systemctl start docker) or point DOCKER_HOST at one; {TEST_BED_HINT}");
    let answer = crate::runtime::block_on(async {
        let docker = docker::probe().await?;
        docker
            .version()
            .await
            .map_err(|e| redact::mask_all(&crate::error::with_causes(&e)))
    });
    match answer {
        Ok(version) => Prerequisite::ok(
            "docker",
            format!(
                "Docker Engine {} (API {}) at {host}",
                version.version.unwrap_or_default(),
                version.api_version.unwrap_or_default()
            ),
        ),
        Err(e) => Prerequisite::fail("docker", format!("no Docker daemon at {host}: {e}"), fix),
    }
}

/// Alembic on this machine, for the deploy plan's SQL preview. Missing is a
/// warning: the deploy works, its plan only lacks the SQL.
fn sql_preview_check(env: &Environment) -> Prerequisite {
    let command = env.migrations.preview_command.join(" ");
    let program = &env.migrations.preview_command[0];
    let found = Path::new(program).is_file() || runner::on_path(program);
    if found {
        Prerequisite::ok(
            "sql preview",
            format!("`{command}` renders the migrations' SQL offline (migrations.preview_command, default alembic_command)"),
        )
    } else {
        Prerequisite::warn(
            "sql preview",
            format!("`{program}` is not on PATH: deploy plans will show no SQL preview and no Squawk findings"),
            format!(
                "install Alembic here (`pip install alembic`, or `uv`), or set migrations.preview_command in {}",
                env.config_file.display()
            ),
        )
    }
}

/// BuildKit or the legacy builder, and whether each Dockerfile can be built
/// with it (a deploy that must build one is refused otherwise).
fn builder_check(env: &Environment, daemon: Option<&DaemonView>) -> Prerequisite {
    let choice = builder::choose_here(daemon);
    // A missing Dockerfile is the images' own line, not the builder's.
    let refusals: Vec<String> = env
        .images
        .iter()
        .filter_map(|image| {
            let needs = images::dockerfile_needs(env, image).ok()?;
            Some(builder::image_refusals(image, &choice, &needs, daemon))
        })
        .flatten()
        .collect();
    let mut detail = format!("{} ({})", choice.builder, choice.why);
    let store_and_session = daemon.is_some_and(DaemonView::builds_by_session_into_containerd);
    if images::pushes_from_build(
        images::Mode::Push,
        env.image_push,
        choice.builder,
        store_and_session,
    ) {
        detail.push_str(
            "; it pushes each image from its build (the daemon's containerd image store)",
        );
    }
    match (refusals.is_empty(), choice.builder) {
        (false, _) => Prerequisite::fail("builder", refusals.join("; "), "see the line above"),
        (true, builder::Builder::Legacy) => Prerequisite::warn(
            "builder",
            detail,
            "Dockerfiles with BuildKit syntax (RUN --mount, COPY --chmod, heredocs) are refused with it",
        ),
        (true, builder::Builder::BuildKit) => Prerequisite::ok("builder", detail),
    }
}

/// Which run-migrations binary a build would put in the backend image, or
/// why none can be had (then a deploy that must build it is refused).
fn runner_check(env: &Environment, daemon: Option<&DaemonView>) -> Prerequisite {
    let prebuilt = std::env::var_os("COLONY_RUN_MIGRATIONS_BIN").map(PathBuf::from);
    let plan = runner::decide(
        env.image(Component::Backend).platform.as_ref(),
        daemon.and_then(|d| d.platform.as_ref()),
        prebuilt.as_deref(),
    );
    match plan {
        Ok(plan) => match plan.source {
            runner::Source::Build { .. }
                if std::env::var_os("CARGO").is_none() && !runner::on_path("cargo") =>
            {
                Prerequisite::warn(
                    "runner",
                    plan.describe(),
                    "cargo is not on PATH to build it: run through `cargo xtask`, or set COLONY_RUN_MIGRATIONS_BIN",
                )
            }
            _ => Prerequisite::ok("runner", plan.describe()),
        },
        Err(why) => Prerequisite::fail(
            "runner",
            why,
            "see the README's Platforms section, or set COLONY_RUN_MIGRATIONS_BIN to a prebuilt binary",
        ),
    }
}

/// Pings the registry the way pushes reach it, and says which scheme and why.
fn registry_check(env: &Environment, daemon: Option<&DaemonView>) -> Prerequisite {
    let access = registry::access_for(&env.registry, daemon);
    let client = match registry::RegistryClient::new(&env.registry, None, &access) {
        Ok(client) => client,
        Err(e) => return Prerequisite::fail("registry", e.to_string(), certs_d_fix()),
    };
    let how = |scheme: &str| {
        if scheme == "http" {
            format!("over plain HTTP, because {}", access.why)
        } else {
            format!(
                "over HTTPS, trusting {}, because {}",
                client.trust(),
                access.why
            )
        }
    };
    match client.ping() {
        Ok(status) => Prerequisite::ok(
            "registry",
            format!(
                "{} answers the registry API{} {}",
                env.registry,
                if status == 401 {
                    " (login required)"
                } else {
                    ""
                },
                how(client.scheme())
            ),
        ),
        Err(e) => Prerequisite::fail(
            "registry",
            crate::error::with_causes(&e),
            format!(
                "check `registry` for {} in {} (or COLONY_REGISTRY); {TEST_BED_HINT}",
                env.name,
                env.config_file.display()
            ),
        ),
    }
}

/// What to do about a certs.d directory the TLS settings cannot use.
fn certs_d_fix() -> String {
    format!(
        "as dockerd reads {}/<host:port>/: CAs in *.crt files, a client certificate as NAME.cert with its NAME.key",
        crate::images::trust::SYSTEM_CERTS_D
    )
}

/// The rehearsal's PostgreSQL image: off, in the daemon, or to be pulled
/// (the first rehearsal then waits for the pull; a registry the daemon
/// cannot reach fails it).
fn rehearsal_check(env: &Environment) -> Prerequisite {
    if !env.rehearsal.enabled {
        return Prerequisite::ok(
            "rehearsal",
            format!(
                "off (rehearsal.enabled = false in {})",
                env.config_file.display()
            ),
        );
    }
    if let crate::config::RehearsalEngine::Local { bin_dir } = &env.rehearsal.engine {
        return local_rehearsal_check(bin_dir.as_deref());
    }
    let Some(image) = &env.rehearsal.image else {
        return Prerequisite::ok(
            "rehearsal",
            "postgres:<major of the server each backup comes from> (set rehearsal.image to pin one)",
        );
    };
    let present = crate::runtime::block_on(async {
        let docker = docker::connect().await.ok()?;
        docker::inspect(&docker, image).await.ok()
    });
    match present {
        Some(Some(_)) => Prerequisite::ok("rehearsal", format!("{image}, in the Docker daemon")),
        Some(None) => Prerequisite::warn(
            "rehearsal",
            format!("{image} is not in the Docker daemon: the first rehearsal pulls it"),
            format!("docker pull {image}"),
        ),
        None => Prerequisite::warn(
            "rehearsal",
            format!("{image}: the Docker daemon does not answer, so it could not be looked for"),
            "see the docker line",
        ),
    }
}

/// The local engine: which PostgreSQL versions this machine can run (the
/// deploy picks the backup's major among them), a user to run them as when
/// root, and a Docker daemon here to mount the socket into.
fn local_rehearsal_check(bin_dir: Option<&std::path::Path>) -> Prerequisite {
    use crate::database::local;
    let found: Vec<String> = match bin_dir {
        Some(dir) => local::version_in(dir)
            .map(|v| format!("PostgreSQL {v} in {}", dir.display()))
            .into_iter()
            .collect(),
        None => local::installed()
            .into_iter()
            .map(|b| format!("PostgreSQL {} in {}", b.version, b.dir.display()))
            .collect(),
    };
    let host = docker::endpoint().host;
    let problem = if found.is_empty() {
        Some((
            "no initdb and pg_ctl found (rehearsal.engine = \"local\")".to_string(),
            "install postgresql-<major> (the server's major version), set rehearsal.bin_dir, or use engine = \"container\"".to_string(),
        ))
    } else if !host.starts_with("unix://") {
        Some((
            format!(
                "rehearsal.engine = \"local\" needs a Docker daemon on this machine; it is at {}",
                redact::mask_all(&host)
            ),
            "use engine = \"container\" with a remote daemon".to_string(),
        ))
    } else if nix::unistd::geteuid().is_root()
        && !matches!(nix::unistd::User::from_name("postgres"), Ok(Some(_)))
    {
        Some((
            "running as root, and there is no user postgres to run PostgreSQL as".to_string(),
            "run as another user or create the user postgres".to_string(),
        ))
    } else {
        None
    };
    match problem {
        Some((what, fix)) => Prerequisite::fail("rehearsal", what, fix),
        None => Prerequisite::ok(
            "rehearsal",
            format!(
                "local engine: {} (the backup's major version is used)",
                found.join(", ")
            ),
        ),
    }
}

fn git_check(sh: &Shell) -> Prerequisite {
    match cmd!(sh, "git --version").quiet().ignore_stderr().read() {
        Ok(version) => Prerequisite::ok("git", version),
        Err(_) => Prerequisite::fail(
            "git",
            "git not found on PATH (image tags come from the commit)",
            "apt-get install git",
        ),
    }
}

fn helm_check(sh: &Shell) -> Prerequisite {
    let fix = format!("install Helm 3 or 4 (https://helm.sh/docs/intro/install/); {TEST_BED_HINT} puts one in PATH");
    match helm::detect_version(sh) {
        Some(version) if version.major >= 3 => {
            Prerequisite::ok("helm", format!("{} (Helm {})", version.text, version.major))
        }
        Some(version) => Prerequisite::fail(
            "helm",
            format!("{} is too old: Helm 3 or 4 is needed", version.text),
            fix,
        ),
        None => Prerequisite::fail("helm", "helm not found on PATH", fix),
    }
}

fn kubectl_check(sh: &Shell, env: Option<&Environment>) -> Prerequisite {
    let version = cmd!(sh, "kubectl version --client -o json")
        .quiet()
        .ignore_stderr()
        .read();
    let Ok(version) = version else {
        return Prerequisite::fail(
            "kubectl",
            "kubectl not found on PATH",
            format!("install kubectl (https://kubernetes.io/docs/tasks/tools/); {TEST_BED_HINT}"),
        );
    };
    let version = serde_json::from_str::<serde_json::Value>(&version)
        .ok()
        .and_then(|v| v["clientVersion"]["gitVersion"].as_str().map(String::from))
        .unwrap_or_else(|| "unknown version".into());
    let current = cmd!(sh, "kubectl config current-context")
        .quiet()
        .ignore_stderr()
        .read()
        .ok();
    let wanted = env.map(|e| {
        let context = &e.kube_context;
        let exists = cmd!(sh, "kubectl config get-contexts {context} -o name")
            .quiet()
            .ignore_stderr()
            .read()
            .is_ok_and(|name| name.trim() == e.kube_context);
        (e.name.as_str(), e.kube_context.as_str(), exists)
    });
    context_check(&version, current.as_deref(), wanted)
}

/// The environment's kube context must be in the kubeconfig; another
/// current context is only noted (every call names the context). `wanted`:
/// (environment, its context, whether the kubeconfig has it). Pure.
pub fn context_check(
    version: &str,
    current: Option<&str>,
    wanted: Option<(&str, &str, bool)>,
) -> Prerequisite {
    match (current, wanted) {
        (_, Some((env, wanted, false))) => Prerequisite::fail(
            "kubectl",
            format!("{version}; {env} deploys to context {wanted:?}, which the kubeconfig does not have"),
            "fix kube_context in deploy.toml, or add the context (`kubectl config get-contexts` lists them)",
        ),
        (Some(current), Some((_, wanted, true))) if current == wanted => {
            Prerequisite::ok("kubectl", format!("{version}; current context {current}"))
        }
        (current, Some((env, wanted, true))) => Prerequisite::ok(
            "kubectl",
            format!(
                "{version}; {env} deploys to context {wanted} (current context: {}; every call names {wanted}, \
                 so no use-context is needed)",
                current.unwrap_or("not set")
            ),
        ),
        (Some(current), None) => {
            Prerequisite::ok("kubectl", format!("{version}; current context {current}"))
        }
        (None, None) => Prerequisite::warn(
            "kubectl",
            format!("{version}; no current context"),
            "kubectl config use-context <name>",
        ),
    }
}

fn pg_restore_check(sh: &Shell) -> Prerequisite {
    match cmd!(sh, "pg_restore --version")
        .quiet()
        .ignore_stderr()
        .read()
    {
        Ok(version) => Prerequisite::ok("pg_restore", format!("{version} (checks every backup)")),
        Err(_) => Prerequisite::fail(
            "pg_restore",
            "pg_restore not found on PATH: backups cannot be checked",
            "apt-get install postgresql-client",
        ),
    }
}

fn disk_check(sh: &Shell, backup_dir: &Path) -> Prerequisite {
    let existing = nearest_existing(backup_dir);
    let output = cmd!(sh, "df -Pk {existing}").quiet().ignore_stderr().read();
    match output.ok().as_deref().and_then(parse_df_available_bytes) {
        Some(bytes) if bytes >= MIN_FREE_BYTES => Prerequisite::ok(
            "disk",
            format!(
                "{} free for backups in {}",
                crate::images::human_bytes(bytes),
                backup_dir.display()
            ),
        ),
        Some(bytes) => Prerequisite::warn(
            "disk",
            format!(
                "only {} free for backups in {}",
                crate::images::human_bytes(bytes),
                backup_dir.display()
            ),
            "free some space, or set backup_dir in deploy.toml to a larger disk",
        ),
        None => Prerequisite::warn(
            "disk",
            format!("cannot tell the free space of {}", existing.display()),
            "check that df works",
        ),
    }
}

fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// The "Available" column of `df -Pk` (1024-byte blocks), in bytes. Pure.
pub fn parse_df_available_bytes(output: &str) -> Option<u64> {
    let line = output.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_current_context_is_noted_and_a_missing_one_fails() {
        let other = context_check(
            "v1.33.9",
            Some("prod"),
            Some(("colony-dev", "homelab", true)),
        );
        assert_eq!(other.level, Level::Ok);
        assert!(
            other.detail.contains("current context: prod")
                && other.detail.contains("no use-context"),
            "{}",
            other.detail
        );
        assert_eq!(
            context_check("v1", Some("homelab"), Some(("colony-dev", "homelab", true))).level,
            Level::Ok
        );
        let missing = context_check("v1", Some("prod"), Some(("colony-dev", "homelab", false)));
        assert_eq!(missing.level, Level::Fail);
        assert!(
            missing.detail.contains("does not have"),
            "{}",
            missing.detail
        );
    }

    #[test]
    fn parses_df() {
        let output = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n/dev/vda 263174212 11234 83886080 13% /\n";
        assert_eq!(parse_df_available_bytes(output), Some(83886080 * 1024));
        assert_eq!(parse_df_available_bytes("nonsense"), None);
        assert_eq!(crate::images::human_bytes(3 << 30), "3.00 GiB");
    }
}

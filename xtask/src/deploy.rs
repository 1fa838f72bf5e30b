//! `cargo xtask deploy <env>`: preflight, images and backup at once, `helm
//! upgrade --install` with digests pinned while we watch the rollout
//! ourselves, then verify and a summary. `--dry-run` prints the plan only.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use xshell::Shell;

use crate::cli::DeployArgs;
use crate::config::{self, Environment};
use crate::error::input_error;
use crate::helm::{DeployRecord, PinnedImage};
use crate::images::{self, ImageReport, Stage};
use crate::plan::{self, DeployFacts, ImageFacts};
use crate::release::{self, ReleaseState};
use crate::rollout::{self, Assessment};
use crate::{backup, cluster, git, helm, verify, versions};

pub fn run(args: DeployArgs) -> Result<()> {
    let env = config::load(Some(&args.env), &args.env_overrides)?;
    if args.no_backup && !args.yes {
        return Err(input_error(
            "--no-backup deploys without a way back if a migration goes wrong; pass --yes with it to confirm",
        ));
    }
    if !args.dry_run {
        env.require_values_files()?;
    }
    let sh = Shell::new()?;
    let facts = gather_facts(&sh, &env)?;
    let plan = plan::deploy_plan(&env, &facts);
    if args.dry_run {
        print!("{}", plan.render());
        return Ok(());
    }
    if !plan.missing.is_empty() {
        return Err(input_error(format!(
            "cannot deploy {}:\n  - {}\n  `cargo xtask deploy {} --dry-run` shows the whole plan",
            env.name,
            plan.missing.join("\n  - "),
            env.name
        )));
    }
    confirm(&env, &facts, args.yes)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        tokio::select! {
            result = deploy(&env, &args, &facts) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!(
                "interrupted: child processes were stopped. If Helm had started, the release may be left pending: \
                 `cargo xtask status {}` shows it", env.name
            )),
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary.to_json(&env))?);
    } else {
        print!("{}", summary.render(&env));
    }
    Ok(())
}

/// Deploying changes a cluster: ask on a terminal, else require `--yes`.
fn confirm(env: &Environment, facts: &DeployFacts, yes: bool) -> Result<()> {
    let sha = facts.commit.as_ref().map_or("?", |c| c.short.as_str());
    crate::confirm::confirm(
        yes,
        &format!(
            "deploying {} changes context {} namespace {}",
            env.name, env.kube_context, env.namespace
        ),
        &format!(
            "Deploy commit {sha} to {} (context {}, namespace {})?",
            env.name, env.kube_context, env.namespace
        ),
    )
}

/// One timed step of the summary.
#[derive(Debug, Clone)]
struct Step {
    name: &'static str,
    took: Duration,
    note: String,
}

struct Summary {
    steps: Vec<Step>,
    images: Vec<ImageReport>,
    backup: Option<backup::Backup>,
    helm_revision: u32,
    alembic: String,
    checks: Vec<verify::Check>,
    /// The runner's detection line when it stamped a pre-Alembic schema.
    stamped: Option<String>,
}

async fn deploy(env: &Environment, args: &DeployArgs, facts: &DeployFacts) -> Result<Summary> {
    let mut steps = Vec::new();
    let started = Instant::now();
    let helm_major = facts
        .helm
        .as_ref()
        .map(|h| h.major)
        .ok_or_else(|| anyhow!("helm is not installed: `cargo xtask doctor`"))?;
    let expected_head = facts.expected_head.clone().map_err(input_error)?;
    let commit = facts
        .commit
        .clone()
        .ok_or_else(|| anyhow!("no git commit to deploy"))?;
    let env_for_checks = env.clone();
    let release_state = tokio::task::spawn_blocking(move || -> Result<ReleaseState> {
        release::check_context(&env_for_checks)?;
        release::check_not_pending(&env_for_checks)
    })
    .await??;
    steps.push(Step {
        name: "preflight",
        took: started.elapsed(),
        note: preflight_note(&release_state),
    });

    // Images and backup at once; Helm starts only when both succeeded.
    let stage_started = Instant::now();
    let options = images::Options {
        stage: if args.skip_build {
            Stage::UseExisting
        } else {
            Stage::Push
        },
        jobs: 2,
        migrations_binary: args.migrations_binary.clone(),
    };
    let backup_wanted = !args.no_backup
        && (release_state != ReleaseState::NotInstalled
            || std::env::var_os("DATABASE_URL").is_some());
    // The plan already read the tags from git (and checked every context).
    let tags: Vec<(&'static str, String)> = env
        .images
        .iter()
        .map(|image| {
            let tag = facts
                .images
                .iter()
                .find(|f| f.component == image.component)
                .and_then(|f| f.tag.clone());
            (image.component, tag.unwrap_or_default())
        })
        .collect();
    let images_task = images::run(env, &tags, &options);
    let backup_task = async {
        if !backup_wanted {
            return Ok(None);
        }
        let env = env.clone();
        tokio::task::spawn_blocking(move || backup::take(&env))
            .await?
            .map(Some)
    };
    let (image_reports, backup) = tokio::join!(images_task, backup_task);
    let image_reports = image_reports
        .context("the image stage failed, so Helm was not run and the cluster is unchanged")?;
    let backup =
        backup.context("the backup failed, so Helm was not run and the cluster is unchanged")?;
    steps.push(Step {
        name: "images",
        took: stage_started.elapsed(),
        note: image_reports
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r.component,
                    if r.push == images::StepOutcome::Skipped("in registry") {
                        "in registry"
                    } else {
                        "pushed"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    });
    steps.push(Step {
        name: "backup",
        took: backup.as_ref().map_or(Duration::ZERO, |b| b.took),
        note: match (&backup, backup_wanted) {
            (Some(b), _) => b.path.display().to_string(),
            (None, _) if args.no_backup => "skipped (--no-backup)".into(),
            (None, _) => "skipped: first install, no database to back up yet".into(),
        },
    });

    // Helm, with our own rollout watch alongside.
    let pinned: Vec<PinnedImage> = image_reports
        .iter()
        .map(|r| PinnedImage {
            component: r.component.to_string(),
            repository: r.repository.clone(),
            tag: r.tag.clone(),
            digest: r.digest.clone().unwrap_or_default(),
        })
        .collect();
    let record = DeployRecord {
        git_sha: commit.sha.clone(),
        alembic_head: expected_head.clone(),
        backup_file: backup
            .as_ref()
            .map(|b| b.path.display().to_string())
            .unwrap_or_default(),
    };
    let argv = helm::upgrade_install_args(env, &pinned, &record, helm_major);
    let helm_started = Instant::now();
    run_helm_watching_rollout(env, &argv).await?;
    steps.push(Step {
        name: "helm upgrade",
        took: helm_started.elapsed(),
        note: "--install, digests pinned".into(),
    });

    let rollout_started = Instant::now();
    let timeout =
        crate::config::parse_duration(&env.helm_timeout).unwrap_or(Duration::from_secs(600));
    match rollout::watch(env, 0, false, timeout, |_| {}).await? {
        Assessment::Complete => {}
        Assessment::Failed { pod, problem } => {
            bail!("{}", rollout::explain_failure(env, &pod, &problem))
        }
        Assessment::Waiting(why) => bail!("the rollout did not complete: {why}"),
    }
    steps.push(Step {
        name: "rollout",
        took: rollout_started.elapsed(),
        note: "newest ReplicaSet ready, no old pods".into(),
    });

    let verify_started = Instant::now();
    let env_for_verify = env.clone();
    let head = expected_head.clone();
    let (facts, checks) = tokio::task::spawn_blocking(move || -> Result<_> {
        let facts = verify::gather(&env_for_verify, head)?;
        let checks = verify::evaluate(&env_for_verify, &facts);
        Ok((facts, checks))
    })
    .await??;
    if checks.iter().any(|c| !c.ok) {
        eprint!("{}", verify::render(env, &facts, &checks));
        bail!("the deploy finished but verify failed: see the checks above");
    }
    steps.push(Step {
        name: "verify",
        took: verify_started.elapsed(),
        note: "all checks passed".into(),
    });
    let helm_revision = match release::state(env)? {
        ReleaseState::Installed { revision, .. } => revision,
        ReleaseState::NotInstalled => 0,
    };
    Ok(Summary {
        steps,
        images: image_reports,
        backup,
        helm_revision,
        alembic: format!("{expected_head} (head)"),
        stamped: facts.detection_line(),
        checks,
    })
}

fn preflight_note(state: &ReleaseState) -> String {
    match state {
        ReleaseState::NotInstalled => "context ok; first install".into(),
        ReleaseState::Installed { status, revision } => {
            format!("context ok; release at revision {revision} ({status})")
        }
    }
}

/// Runs `helm upgrade --install` and watches the newest ReplicaSet at the
/// same time: a pod that will not recover stops Helm (SIGTERM, so it can
/// mark the release failed) and the deploy, within seconds.
async fn run_helm_watching_rollout(env: &Environment, argv: &[String]) -> Result<()> {
    let before = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || cluster::Backend::read(&env))
            .await?
            .map(|b| rollout::newest_revision(&b))
            .unwrap_or(0)
    };
    eprintln!("$ {}", plan::display_argv(argv));
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start helm")?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let output = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        if let Some(mut out) = stdout {
            let _ = out.read_to_string(&mut text).await;
        }
        if let Some(mut err) = stderr {
            let _ = err.read_to_string(&mut text).await;
        }
        text
    });
    let timeout =
        crate::config::parse_duration(&env.helm_timeout).unwrap_or(Duration::from_secs(600));
    let watch = rollout::watch(env, before, true, timeout, |_| {});
    tokio::pin!(watch);
    let status = tokio::select! {
        status = child.wait() => status?,
        assessment = &mut watch => match assessment? {
            Assessment::Failed { pod, problem } => {
                stop(&mut child).await;
                let helm_said = output.await.unwrap_or_default();
                let explanation = rollout::explain_failure(env, &pod, &problem);
                bail!(
                    "the rollout failed, so Helm was stopped:\n{explanation}\nhelm said:\n{}\n\
                     The database is untouched unless the failing migration committed; `cargo xtask status {}` shows the release",
                    indent(helm_said.trim()),
                    env.name
                );
            }
            // Complete (or timed out) before Helm returned: let Helm finish.
            _ => child.wait().await?,
        },
    };
    let said = output.await.unwrap_or_default();
    if !status.success() {
        bail!("helm upgrade failed ({status}):\n{}", indent(said.trim()));
    }
    Ok(())
}

/// SIGTERM first (Helm marks the release failed and exits), then SIGKILL.
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Summary {
    fn render(&self, env: &Environment) -> String {
        let total: Duration = self.steps.iter().map(|s| s.took).sum();
        let mut out = format!(
            "\nDeployed {} to {}/{}: Helm revision {}, Alembic {}\n\n",
            env.name, env.kube_context, env.namespace, self.helm_revision, self.alembic
        );
        for step in &self.steps {
            out.push_str(&format!(
                "  {:<13} {:>6.1} s  {}\n",
                step.name,
                step.took.as_secs_f64(),
                step.note
            ));
        }
        out.push_str(&format!(
            "  {:<13} {:>6.1} s\n\n",
            "total",
            total.as_secs_f64()
        ));
        for image in &self.images {
            out.push_str(&format!(
                "  {:<9} {}\n",
                image.component,
                image
                    .digest
                    .as_ref()
                    .map_or(String::new(), |d| format!("{}@{d}", image.repository))
            ));
        }
        if let Some(backup) = &self.backup {
            out.push_str(&format!("  {:<9} {}\n", "backup", backup.path.display()));
        }
        if let Some(line) = &self.stamped {
            out.push_str(&format!("  {:<9} {line}\n", "stamp"));
        }
        out.push_str(&format!(
            "  {:<9} {}/{} checks passed\n",
            "verify",
            self.checks.iter().filter(|c| c.ok).count(),
            self.checks.len()
        ));
        out
    }

    fn to_json(&self, env: &Environment) -> serde_json::Value {
        json!({
            "environment": env.name,
            "namespace": env.namespace,
            "release": env.release,
            "helm_revision": self.helm_revision,
            "alembic": self.alembic,
            "backup": self.backup.as_ref().map(|b| b.path.display().to_string()),
            "stamped": self.stamped,
            "images": images::to_json(&self.images),
            "steps": self.steps.iter().map(|s| json!({"name": s.name, "seconds": s.took.as_secs_f64(), "note": s.note})).collect::<Vec<_>>(),
        })
    }
}

/// Reads what the plan depends on: git, the build contexts, the Alembic
/// versions, the installed Helm. Reads only; changes nothing.
pub fn gather_facts(sh: &Shell, env: &Environment) -> Result<DeployFacts> {
    let commit = git::head(sh, &env.root);
    let mut images = Vec::new();
    for image in &env.images {
        let context_dir = env.root.join(&image.context);
        let tag = match &commit {
            Some(commit) => Some(git::image_tag(
                commit,
                &git::context_state(sh, &env.root, &image.context)?,
            )),
            None => None,
        };
        images.push(ImageFacts {
            component: image.component.to_string(),
            tag,
            context_exists: context_dir.is_dir(),
            dockerfile_exists: context_dir.join(&image.dockerfile).is_file(),
        });
    }
    Ok(DeployFacts {
        commit,
        images,
        expected_head: versions::expected_head(env),
        helm: helm::detect_version(sh),
        chart_exists: env.root.join(&env.chart).join("Chart.yaml").is_file(),
        backup_script_exists: env.root.join(backup::SCRIPT).is_file(),
    })
}

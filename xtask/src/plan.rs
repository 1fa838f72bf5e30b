//! The deploy plan: every step and command line, decided from the
//! environment and a few facts gathered beforehand. Pure, so `--dry-run`
//! prints exactly what a deploy would run and tests can snapshot it.

use std::fmt::Write as _;

use crate::config::Environment;
use crate::git::Commit;
use crate::helm::{self, DeployRecord, HelmVersion, PinnedImage};
use crate::kube;

/// What was learned about the checkout and the machine before planning.
#[derive(Debug, Clone)]
pub struct DeployFacts {
    pub commit: Option<Commit>,
    pub images: Vec<ImageFacts>,
    /// The head declared by the Alembic versions directory, or why unknown.
    pub expected_head: Result<String, String>,
    pub helm: Option<HelmVersion>,
    pub chart_exists: bool,
    pub backup_script_exists: bool,
}

#[derive(Debug, Clone)]
pub struct ImageFacts {
    pub component: String,
    /// None when there is no commit to tag from.
    pub tag: Option<String>,
    pub context_exists: bool,
    pub dockerfile_exists: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub env_name: String,
    pub facts: Vec<(&'static str, String)>,
    /// What a real deploy needs and this checkout or machine lacks.
    pub missing: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub title: String,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone)]
pub enum Item {
    /// A process, as argv, and what its output must show.
    Run {
        argv: Vec<String>,
        expect: Option<String>,
    },
    /// Work done in-process (Docker Engine API calls) or a rule.
    Note(String),
}

const FAILURE_STATES: &str =
    "Init:CrashLoopBackOff, Init:Error, ErrImagePull, ImagePullBackOff, CrashLoopBackOff";

pub fn deploy_plan(env: &Environment, facts: &DeployFacts) -> Plan {
    let sha = facts
        .commit
        .as_ref()
        .map_or("<no commit>".to_string(), |c| c.short.clone());
    let head = facts
        .expected_head
        .clone()
        .unwrap_or_else(|_| "<unknown>".into());
    let helm_major = facts.helm.as_ref().map_or(4, |h| h.major);
    let pinned = pinned_images(env, facts);
    let record = DeployRecord {
        git_sha: facts
            .commit
            .as_ref()
            .map_or("<no commit>".into(), |c| c.sha.clone()),
        alembic_head: head.clone(),
        backup_file: "<path printed by the backup>".into(),
    };
    let run = |argv: Vec<String>, expect: Option<&str>| Item::Run {
        argv,
        expect: expect.map(String::from),
    };
    let note = |text: String| Item::Note(text);

    let mut build_items = Vec::new();
    let mut push_items = Vec::new();
    for (image, pinned) in env.images.iter().zip(&pinned) {
        let context = image.context.display();
        build_items.push(note(format!(
            "{:<8} context {context}/, Dockerfile {context}/{} -> {}:{}",
            image.component,
            image.dockerfile.display(),
            pinned.repository,
            pinned.tag,
        )));
        if !image.build_args.is_empty() {
            // Keys only: values may be tokens.
            let keys: Vec<&str> = image.build_args.keys().map(String::as_str).collect();
            build_items.push(note(format!("           build args: {}", keys.join(", "))));
        }
        if image.component == "backend" {
            build_items.push(note(
                "           then layer the run-migrations binary on top (FROM that image, COPY run-migrations)".into(),
            ));
        }
        if image.also_tag_latest {
            build_items.push(note(format!(
                "           also tagged {}:latest",
                pinned.repository
            )));
        }
        push_items.push(note(format!(
            "{:<8} {}:{}",
            image.component, pinned.repository, pinned.tag
        )));
    }
    build_items.push(note(
        "an image whose tag the registry already holds is neither built nor pushed".into(),
    ));
    push_items.push(note(
        "each digest (sha256:…) is read back from the registry and pinned in step 5".into(),
    ));

    let pod = "<newest backend pod>";
    let steps = vec![
        Step {
            title: "Preflight (changes nothing)".into(),
            items: vec![
                run(kube::current_context_args(), Some(&format!("{} (refuse otherwise)", env.kube_context))),
                run(helm::status_args(env), Some("not pending-install/upgrade/rollback (refuse otherwise)")),
                note("Docker Engine API: ping and negotiate the API version (DOCKER_HOST or the default socket)".into()),
            ],
        },
        Step {
            title: "Build both images at once (Docker Engine API)".into(),
            items: build_items,
        },
        Step {
            title: "Push both images at once".into(),
            items: push_items,
        },
        Step {
            title: "Back up the database (alongside steps 2-3; must succeed before step 5)".into(),
            items: vec![run(crate::backup::script_args(env), Some("last line: the backup file's path"))],
        },
        Step {
            title: "Install or upgrade the release, digests pinned".into(),
            items: vec![run(helm::upgrade_install_args(env, &pinned, &record, helm_major), None)],
        },
        Step {
            title: "Watch the rollout of the newest ReplicaSet (alongside Helm)".into(),
            items: vec![
                run(kube::backend_replicasets_args(env), Some("newest ReplicaSet's pod-template-hash")),
                run(kube::pods_of_replicaset_args(env, "<hash>"), Some("all pods Ready")),
                note(format!(
                    "stop at once on {FAILURE_STATES}: print the failing container's log, exit code and the pod's events"
                )),
            ],
        },
        Step {
            title: "Verify the newest pods".into(),
            items: vec![
                run(kube::alembic_current_args(env, pod), Some(&format!("{head} (head)"))),
                run(kube::migrations_log_args(env, pod), Some("last line: Migrations complete.")),
            ],
        },
    ];

    Plan {
        env_name: env.name.clone(),
        facts: vec![
            (
                "environment",
                format!("{} (from {})", env.name, env.config_file.display()),
            ),
            (
                "cluster",
                format!(
                    "context {}, namespace {}, release {}",
                    env.kube_context, env.namespace, env.release
                ),
            ),
            ("registry", env.registry.clone()),
            ("git commit", sha),
            (
                "Alembic head",
                format!("{head} (from {})", env.alembic_versions.display()),
            ),
            (
                "helm",
                facts
                    .helm
                    .as_ref()
                    .map_or("not found; planned for Helm 4".to_string(), |h| {
                        h.text.clone()
                    }),
            ),
        ],
        missing: missing(env, facts),
        steps,
    }
}

fn pinned_images(env: &Environment, facts: &DeployFacts) -> Vec<PinnedImage> {
    env.images
        .iter()
        .map(|image| {
            let tag = facts
                .images
                .iter()
                .find(|f| f.component == image.component)
                .and_then(|f| f.tag.clone())
                .unwrap_or_else(|| "<no commit to tag from>".into());
            PinnedImage {
                component: image.component.to_string(),
                repository: image.reference.clone(),
                tag,
                digest: format!("<digest of the pushed {} image>", image.component),
            }
        })
        .collect()
}

fn missing(env: &Environment, facts: &DeployFacts) -> Vec<String> {
    let mut missing = Vec::new();
    for path in env.missing_values_files() {
        missing.push(format!("values file {} does not exist", path.display()));
    }
    for (image, found) in env.images.iter().zip(&facts.images) {
        if !found.context_exists {
            missing.push(format!(
                "{} build context {}/ does not exist (this workspace expects to sit at the root of the Colony \
                 monorepo; or set images.{}.context in {})",
                image.component,
                image.context.display(),
                image.component,
                env.config_file.display()
            ));
        } else if !found.dockerfile_exists {
            missing.push(format!(
                "{} Dockerfile {}/{} does not exist",
                image.component,
                image.context.display(),
                image.dockerfile.display()
            ));
        }
    }
    if let Err(why) = &facts.expected_head {
        missing.push(format!("expected Alembic head unknown: {why}"));
    }
    if facts.commit.is_none() {
        missing.push(
            "no git commit to tag the images from (run inside the checkout, after a first commit)"
                .into(),
        );
    }
    if !facts.chart_exists {
        missing.push(format!("chart {} does not exist", env.chart));
    }
    if !facts.backup_script_exists {
        missing.push(format!("{} does not exist", crate::backup::SCRIPT));
    }
    missing
}

impl Plan {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Deploy plan for {} (dry run: nothing below is executed)\n",
            self.env_name
        );
        for (key, value) in &self.facts {
            let _ = writeln!(out, "  {key:<13}{value}");
        }
        if !self.missing.is_empty() {
            let _ = writeln!(
                out,
                "\nMissing (a real deploy stops here until these are fixed):"
            );
            for item in &self.missing {
                let _ = writeln!(out, "  ! {item}");
            }
        }
        for (number, step) in self.steps.iter().enumerate() {
            let _ = writeln!(out, "\n{}. {}", number + 1, step.title);
            for item in &step.items {
                match item {
                    Item::Run { argv, expect } => {
                        let _ = writeln!(out, "   $ {}", display_argv_wrapped(argv, "       "));
                        if let Some(expect) = expect {
                            let _ = writeln!(out, "     expect: {expect}");
                        }
                    }
                    // An indented note continues the one above it.
                    Item::Note(text) if text.starts_with(' ') => {
                        let _ = writeln!(out, "   {text}");
                    }
                    Item::Note(text) => {
                        let _ = writeln!(out, "   - {text}");
                    }
                }
            }
        }
        out
    }
}

/// An argv as a shell would need it typed: plain words as they are, the
/// rest in single quotes. Display only; processes get the argv itself.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| shell_quote(arg))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Like `display_argv`, but a long command is continued (` \\`) before
/// each option, so that every `-f` and `--set-string` reads on its own line.
fn display_argv_wrapped(argv: &[String], indent: &str) -> String {
    let one_line = display_argv(argv);
    if one_line.len() <= 160 {
        return one_line;
    }
    let mut out = String::new();
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 {
            let option_starts = i > 2 && arg.starts_with('-') && !argv[i - 1].starts_with("--set");
            out.push_str(if option_starts { " \\\n" } else { " " });
            if option_starts {
                out.push_str(indent);
            }
        }
        out.push_str(&shell_quote(arg));
    }
    out
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_only_where_needed() {
        let argv: Vec<String> = ["helm", "--set-string", "a.b=<x y>", "it's", ""]
            .map(String::from)
            .to_vec();
        assert_eq!(
            display_argv(&argv),
            r"helm --set-string 'a.b=<x y>' 'it'\''s' ''"
        );
    }
}

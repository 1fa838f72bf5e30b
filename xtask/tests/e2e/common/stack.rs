//! A whole stack for end-to-end tests: the Colony fixture repo, the bed's
//! registry, Docker and PostgreSQL, and a simulated cluster in front of them.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use testkit::sim::SimCluster;
use testkit::{ColonyRepo, TestBed};

use super::{xtask, Run};

pub const CONTEXT: &str = "homelab";
pub const NAMESPACE: &str = "colony-dev";

pub struct Stack {
    pub repo: ColonyRepo,
    pub sim: SimCluster,
    pub database_url: String,
    pub home: tempfile::TempDir,
    /// The bed's registry with a path of this stack's own: the fixture's
    /// commit (and so its tags) is the same in every test, and tests run at
    /// once, so a shared repository would have them build and push the same
    /// tag together.
    pub registry: String,
}

impl Stack {
    /// A fresh database (or one made by `setup_sql`) behind a new cluster.
    pub fn new(setup_sql: Option<&str>) -> Stack {
        let bed = TestBed::get();
        let database_url = bed.create_database("stack");
        if let Some(file) = setup_sql {
            bed.psql_file(&database_url, &testkit::workspace_root().join(file));
        }
        let repo = ColonyRepo::create();
        repo.use_repositories("e2e-colony");
        let home = tempfile::tempdir().unwrap();
        let values = home.path().join("homelab/colony-dev/my-values.yaml");
        std::fs::create_dir_all(values.parent().unwrap()).unwrap();
        std::fs::write(&values, "backend:\n  replicas: 2\n").unwrap();
        let sim = SimCluster::new(CONTEXT, &database_url);
        let registry = format!("{}/{}", bed.registry, super::unique("stack"));
        Stack {
            repo,
            sim,
            database_url,
            home,
            registry,
        }
    }

    pub fn values_file(&self) -> PathBuf {
        self.home.path().join("homelab/colony-dev/my-values.yaml")
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.home.path().join("backups")
    }

    /// The environment every process of the stack runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        let bed = TestBed::get();
        // The deploying machine has Alembic (the SQL preview runs it
        // offline), as the runbook's authoring section assumes.
        let path = format!(
            "{}:{}:{}",
            self.sim.bin_dir().display(),
            bed.venv.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut env = vec![
            ("PATH".to_string(), path),
            ("HOME".to_string(), self.home.path().display().to_string()),
            ("DOCKER_HOST".to_string(), bed.docker_host.clone()),
            ("COLONY_CONFIG".to_string(), "deploy.toml".to_string()),
            ("COLONY_REGISTRY".to_string(), self.registry.clone()),
            (
                "COLONY_RUN_MIGRATIONS_BIN".to_string(),
                testkit::run_migrations_binary().display().to_string(),
            ),
        ];
        env.extend(self.sim.env());
        env
    }

    pub fn xtask(&self, args: &[&str]) -> Run {
        self.xtask_with(args, &[])
    }

    /// `xtask` with some of the stack's variables replaced (or added).
    pub fn xtask_with(&self, args: &[&str], overrides: &[(&str, &str)]) -> Run {
        let mut env = self.env();
        env.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
        env.extend(
            overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        xtask(self.repo.root(), args, &env)
    }

    /// `cargo xtask ARGS` as on a terminal: a pty, through `script`, in
    /// this stack's repo and environment; the screen is its stdout.
    pub fn on_a_pty(&self, args: &str) -> std::process::Command {
        let command = format!("{} {args}", env!("CARGO_BIN_EXE_xtask"));
        let mut script = std::process::Command::new("script");
        script
            .args(["-qefc", &command, "/dev/null"])
            .current_dir(self.repo.root())
            .env_clear()
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm")
            .envs(self.env());
        script
    }

    /// `cargo xtask ARGS` on a pty that answers `word` to its question,
    /// once `meanwhile` has returned (it runs while the command does): the
    /// exit code and the screen.
    pub fn answer_on_a_pty(
        &self,
        args: &str,
        word: &str,
        meanwhile: impl FnOnce(),
    ) -> (Option<i32>, String) {
        use std::io::Write;
        let mut question = self
            .on_a_pty(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        meanwhile();
        let mut stdin = question.stdin.take().unwrap();
        stdin.write_all(format!("{word}\n").as_bytes()).unwrap();
        let output = question.wait_with_output().unwrap();
        drop(stdin);
        let screen = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), screen)
    }

    /// Builds and pushes the repo's images; returns `pinned` references by component.
    pub fn push_images(&self) -> Vec<(String, String, String, String)> {
        let run = self.xtask(&["push", "--json"]);
        assert_eq!(run.code, 0, "push failed:\n{}", run.all());
        let document: Value = serde_json::from_str(&run.stdout).unwrap();
        document["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["component"].as_str().unwrap().to_string(),
                    r["repository"].as_str().unwrap().to_string(),
                    r["tag"].as_str().unwrap().to_string(),
                    r["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The values the release's `revision` was given (`helm get values`):
    /// what the deploy wrote, as Helm parsed it.
    pub fn helm_values(&self, revision: u32) -> serde_json::Value {
        let output = Command::new("helm")
            .args([
                "get",
                "values",
                "colony",
                "--revision",
                &revision.to_string(),
                "-o",
                "json",
            ])
            .args(["--namespace", NAMESPACE, "--kube-context", CONTEXT])
            .current_dir(self.repo.root())
            .envs(self.env())
            .output()
            .expect("helm (simulated) runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON values")
    }

    /// `helm upgrade --install` through the simulated cluster, as a user
    /// following the runbook would, with the pushed images pinned.
    pub fn helm_install(&self, extra: &[&str]) -> std::process::Output {
        let images = self.push_images();
        let mut args: Vec<String> = [
            "upgrade",
            "--install",
            "colony",
            "./helm/colony",
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--kube-context",
            CONTEXT,
            "-f",
        ]
        .map(String::from)
        .to_vec();
        args.push(self.values_file().display().to_string());
        for (component, repository, tag, digest) in images {
            for (key, value) in [("repository", repository), ("tag", tag), ("digest", digest)] {
                args.push("--set-string".into());
                args.push(format!("{component}.image.{key}={value}"));
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let output = Command::new("helm")
            .args(&args)
            .current_dir(self.repo.root())
            .envs(self.env())
            .output()
            .expect("helm (simulated) runs");
        self.sim.settle();
        output
    }

    /// Runs Alembic on the host against the stack's database, with the
    /// fixture's scripts.
    pub fn alembic(&self, args: &[&str]) -> String {
        let output = Command::new(&TestBed::get().alembic)
            .args(args)
            .current_dir(testkit::workspace_root().join("testdata/colony/backend"))
            .env("DATABASE_URL", &self.database_url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "alembic {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Commits a third revision whose upgrade raises: a build whose init
    /// container will crash-loop.
    pub fn commit_broken_migration(&self) {
        std::fs::write(
            self.repo.root().join("backend/alembic/versions/0003_broken.py"),
            "revision = '0003_broken'\ndown_revision = '0002_activity_and_comments'\n\n\
             def upgrade():\n    raise RuntimeError('this migration is broken on purpose')\n\n\ndef downgrade():\n    pass\n",
        )
        .unwrap();
        self.repo.git(&["add", "-A"]);
        self.repo.git(&["commit", "-q", "-m", "broken migration"]);
    }

    pub fn psql(&self, sql: &str) -> String {
        TestBed::get().psql(&self.database_url, sql)
    }

    /// The calls recorded by the simulated cluster, one `tool arg arg…` string each.
    pub fn calls(&self) -> Vec<String> {
        self.sim
            .calls()
            .into_iter()
            .map(|(tool, argv)| format!("{tool} {}", argv.join(" ")))
            .collect()
    }
}

/// Asserts that `wanted` appear in `calls` in this order (others may come between).
pub fn assert_in_order(calls: &[String], wanted: &[&str]) {
    let mut position = 0;
    for want in wanted {
        match calls[position..].iter().position(|c| c.contains(want)) {
            Some(found) => position += found + 1,
            None => panic!(
                "no call containing {want:?} after position {position} in:\n{}",
                calls.join("\n")
            ),
        }
    }
}

/// Whether a recorded call (`tool arg…`) can change the cluster or the
/// database: Helm's install/upgrade/rollback/uninstall, kubectl's writes,
/// and any `exec` but the read-only ones the tool uses for facts.
pub fn is_mutating(call: &str) -> bool {
    const HELM_WRITES: &[&str] = &["upgrade", "install", "rollback", "uninstall", "delete"];
    const KUBECTL_WRITES: &[&str] = &[
        "annotate", "apply", "create", "delete", "patch", "replace", "scale", "label", "edit",
        "rollout", "set",
    ];
    let words: Vec<&str> = call.split_whitespace().collect();
    match words.first() {
        Some(&"helm") => words.iter().any(|w| HELM_WRITES.contains(w)),
        Some(&"kubectl") => {
            if let Some(position) = words.iter().position(|w| *w == "--") {
                let command = &words[position + 1..];
                let read_only = match command {
                    ["alembic", "current", ..] => true,
                    [runner, "status", ..] => runner.ends_with("run-migrations"),
                    _ => false,
                };
                return !read_only;
            }
            words.iter().any(|w| KUBECTL_WRITES.contains(w))
        }
        _ => true,
    }
}

/// Asserts that none of `calls` could change anything.
pub fn assert_no_mutating_call(calls: &[String]) {
    let mutating: Vec<&String> = calls.iter().filter(|c| is_mutating(c)).collect();
    assert!(
        mutating.is_empty(),
        "mutating calls where none may run:\n{}",
        mutating
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

impl Stack {
    /// The calls recorded after the first `from`.
    pub fn calls_since(&self, from: usize) -> Vec<String> {
        self.calls().into_iter().skip(from).collect()
    }

    /// Helm revisions of the release so far.
    /// `helm upgrade --install` calls so far.
    pub fn helm_upgrades(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.starts_with("helm upgrade --install"))
            .count()
    }

    pub fn helm_revisions(&self) -> usize {
        self.sim
            .state()
            .releases
            .get(&format!("{NAMESPACE}/colony"))
            .map_or(0, Vec::len)
    }

    /// Commits the monorepo as it was before migration 0002 (the baseline
    /// era); `git revert HEAD` brings 0002 back.
    pub fn commit_baseline_era(&self) {
        self.repo.git(&[
            "rm",
            "-q",
            "backend/alembic/versions/0002_activity_and_comments.py",
        ]);
        self.repo.git(&["commit", "-q", "-m", "baseline era"]);
    }

    /// Commits a new Alembic revision `id` (down from `down`) whose
    /// `upgrade()` body is `body`.
    pub fn commit_revision(&self, id: &str, down: &str, message: &str, body: &str) {
        self.commit_revision_both_ways(id, down, message, body, "    pass");
    }

    /// `commit_revision` with a `downgrade()` body too.
    pub fn commit_revision_both_ways(
        &self,
        id: &str,
        down: &str,
        message: &str,
        body: &str,
        downgrade: &str,
    ) {
        let script = format!(
            "\"\"\"{message}\n\nRevision ID: {id}\nRevises: {down}\n\"\"\"\n\
             import sqlalchemy as sa\nfrom alembic import op\n\n\
             revision = \"{id}\"\ndown_revision = \"{down}\"\n\n\n\
             def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n{downgrade}\n"
        );
        let path = format!("backend/alembic/versions/{id}.py");
        std::fs::write(self.repo.root().join(&path), script).unwrap();
        self.repo.git(&["add", &path]);
        self.repo.git(&["commit", "-q", "-m", message]);
    }

    /// Backup files written so far.
    pub fn backups(&self) -> usize {
        std::fs::read_dir(self.backup_dir()).map_or(0, |d| d.count())
    }

    /// The step names of a `--json` output (a plan or a run's summary).
    pub fn step_names(json_text: &str) -> Vec<String> {
        let value: Value = serde_json::from_str(json_text)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{json_text}"));
        value["steps"]
            .as_array()
            .expect("a steps array")
            .iter()
            .map(|s| {
                s["kind"]
                    .as_str()
                    .or_else(|| s["name"].as_str())
                    .expect("a step kind or name")
                    .to_string()
            })
            .collect()
    }
}

//! Every bad input gets its message and exit code 2, and nothing runs:
//! the tools a deploy would call are recorders that log any call.

mod common;

use common::{xtask, Run};
use testkit::{ColonyRepo, ToolDir};

const RECORDED: &[&str] = &["helm", "kubectl", "docker", "git", "pg_dump", "alembic"];

struct Case {
    repo: ColonyRepo,
    tools: ToolDir,
    home: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let repo = ColonyRepo::create();
        let home = tempfile::tempdir().unwrap();
        let values = home.path().join("homelab/colony-dev/my-values.yaml");
        std::fs::create_dir_all(values.parent().unwrap()).unwrap();
        std::fs::write(&values, "{}\n").unwrap();
        Case {
            repo,
            tools: ToolDir::new(&[], &[]).with_recorders(RECORDED),
            home,
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        let config = self.repo.config();
        let env = [
            ("PATH", self.tools.path().to_str().unwrap()),
            ("HOME", self.home.path().to_str().unwrap()),
            ("COLONY_CONFIG", config.to_str().unwrap()),
        ];
        xtask(self.repo.root(), args, &env)
    }

    /// The command failed as bad input, said `message`, and ran nothing.
    fn assert_refused(&self, args: &[&str], message: &str) {
        let run = self.run(args);
        assert_eq!(run.code, 2, "{args:?} should exit 2:\n{}", run.all());
        assert!(
            run.stderr.contains(message),
            "{args:?}: expected {message:?} in:\n{}",
            run.stderr
        );
        assert!(
            run.stdout.is_empty(),
            "{args:?} printed a plan or result:\n{}",
            run.stdout
        );
        assert_eq!(
            self.tools.calls(),
            Vec::<String>::new(),
            "{args:?} ran a tool"
        );
    }
}

#[test]
fn unknown_environment_lists_the_known_ones() {
    Case::new().assert_refused(
        &["deploy", "prod", "--dry-run"],
        "unknown environment \"prod\"",
    );
    Case::new().assert_refused(&["verify", "prod"], "defines colony-dev");
}

#[test]
fn unknown_keys_are_errors() {
    let case = Case::new();
    let config = std::fs::read_to_string(case.repo.config()).unwrap();
    std::fs::write(
        case.repo.config(),
        config.replace(
            "release = \"colony\"",
            "release = \"colony\"\nrelase = \"x\"",
        ),
    )
    .unwrap();
    case.assert_refused(
        &["deploy", "colony-dev", "--dry-run"],
        "unknown field `relase`",
    );
}

#[test]
fn names_that_are_not_dns_1123() {
    let case = Case::new();
    case.assert_refused(
        &[
            "deploy",
            "colony-dev",
            "--dry-run",
            "--namespace",
            "Colony_Dev",
        ],
        "namespace \"Colony_Dev\" is not a valid DNS-1123 label",
    );
    case.assert_refused(
        &["deploy", "colony-dev", "--dry-run", "--release", "colony-"],
        "release name \"colony-\" is not a valid Helm release name",
    );
}

#[test]
fn a_values_file_that_does_not_exist() {
    Case::new().assert_refused(
        &[
            "deploy",
            "colony-dev",
            "--values",
            "/nonexistent/my-values.yaml",
        ],
        "values file /nonexistent/my-values.yaml does not exist",
    );
}

#[test]
fn an_empty_registry() {
    Case::new().assert_refused(
        &["deploy", "colony-dev", "--dry-run", "--registry", ""],
        "registry is empty",
    );
}

#[test]
fn a_missing_environments_file() {
    let case = Case::new();
    std::fs::remove_file(case.repo.config()).unwrap();
    case.assert_refused(&["status"], "cannot read the environments file");
}

#[test]
fn rollback_targets_and_confirmation() {
    let case = Case::new();
    case.assert_refused(
        &["rollback", "--to", "0003_nope", "--yes"],
        "unknown revision \"0003_nope\": the versions directory declares 0001_baseline, 0002_activity_and_comments",
    );
    case.assert_refused(
        &["rollback", "--to", "0001;reboot", "--yes"],
        "is not a valid Alembic revision id",
    );
    // The test's stdin is not a terminal: no prompt, a refusal.
    case.assert_refused(&["rollback", "--to", "0001_baseline"], "pass --yes");
}

#[test]
fn image_stages_refuse_a_missing_dockerfile_before_running_anything() {
    let case = Case::new();
    std::fs::remove_file(case.repo.root().join("frontend/Dockerfile")).unwrap();
    for stage in ["build", "push"] {
        case.assert_refused(&[stage], "frontend Dockerfile");
    }
}

//! Every bad input gets its message and exit code 2, and nothing runs:
//! the tools a deploy would call are recorders that log any call.

use crate::common::{xtask, Run};
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
        self.run_with(args, &[])
    }

    fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let config = self.repo.config();
        let mut env = vec![
            ("PATH", self.tools.path().to_str().unwrap()),
            ("HOME", self.home.path().to_str().unwrap()),
            ("COLONY_CONFIG", config.to_str().unwrap()),
        ];
        env.extend_from_slice(extra);
        xtask(self.repo.root(), args, &env)
    }

    /// Replaces `from` with `to` in deploy.toml.
    fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.repo.config()).unwrap();
        assert!(text.contains(from), "deploy.toml has no {from:?}");
        std::fs::write(self.repo.config(), text.replacen(from, to, 1)).unwrap();
    }

    /// The command failed as bad input, said `message`, and ran nothing.
    fn assert_refused(&self, args: &[&str], message: &str) {
        self.assert_refused_with(args, &[], message);
    }

    fn assert_refused_with(&self, args: &[&str], extra: &[(&str, &str)], message: &str) {
        let run = self.run_with(args, extra);
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

/// The reliability table's configuration rows (README, "Reliability"):
/// flags, COLONY_* variables and deploy.toml values that are refused with
/// exit 2, a message naming the input and where it came from, and nothing run.
#[test]
fn bad_flags_variables_and_settings_are_refused_naming_their_source() {
    let plan = ["deploy", "colony-dev", "--dry-run"];
    let with = |extra: &[&str]| -> Vec<String> {
        plan.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let flag_cases: &[(&[&str], &str)] = &[
        (
            &["--release", "Colony"],
            "'C' is not allowed (lowercase letters, digits and '-' only) (from --release)",
        ),
        (
            &[
                "--release",
                "a-release-name-that-is-far-too-long-for-helm-to-accept-it",
            ],
            "is not a valid Helm release name",
        ),
        (
            &["--kube-context", "home lab"],
            "kube context \"home lab\" must be non-empty, without spaces",
        ),
        (
            &["--kube-context=-homelab"],
            "kube context \"-homelab\" must not start with '-' (from --kube-context)",
        ),
        (
            &["--registry", "https://registry.example"],
            "without a scheme",
        ),
        (
            &["--registry", "u:s3cr3t@registry.example:5000"],
            "must not contain credentials",
        ),
        (
            &["--registry", "registry.example:5000/Team"],
            "is not a valid host[:port][/path]",
        ),
        (
            &["--registry", "registry example"],
            "is not a valid host[:port][/path]",
        ),
        (
            &["--namespace", "colony.dev"],
            "'.' is not allowed (lowercase letters, digits and '-' only) (from --namespace)",
        ),
    ];
    let case = Case::new();
    for (extra, message) in flag_cases {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        case.assert_refused(&args, message);
        assert!(
            !case.run(&args).all().contains("s3cr3t"),
            "a password was shown"
        );
    }

    let variable_cases: &[(&str, &str, &str)] = &[
        (
            "COLONY_NAMESPACE",
            "a b",
            "namespace \"a b\" is not a valid DNS-1123 label",
        ),
        ("COLONY_NAMESPACE", "a b", "(from COLONY_NAMESPACE)"),
        ("COLONY_RELEASE", "-x", "(from COLONY_RELEASE)"),
        (
            "COLONY_KUBE_CONTEXT",
            "-kubeconfig=/etc/x",
            "must not start with '-' (from COLONY_KUBE_CONTEXT)",
        ),
        (
            "COLONY_REGISTRY",
            "ftp://r",
            "without a scheme (from COLONY_REGISTRY)",
        ),
    ];
    for (variable, value, message) in variable_cases {
        case.assert_refused_with(&plan, &[(variable, value)], message);
    }

    let setting_cases: &[(&str, &str, &str)] = &[
        (
            "namespace = \"colony-dev\"",
            "namespace = \"Colony\"",
            "(from deploy.toml)",
        ),
        (
            "release = \"colony\"",
            "release = \"colony\"\nhelm_timeout = \"10mh\"",
            "helm_timeout \"10mh\" is not a duration",
        ),
        (
            "release = \"colony\"",
            "release = \"colony\"\nhelm_timeout = \"1h99999999999999999m\"",
            "helm_timeout \"1h99999999999999999m\"",
        ),
        (
            "release = \"colony\"",
            "release = \"colony\"\nhelm_timeout = \"99999999999999999999s\"",
            "helm_timeout \"99999999999999999999s\"",
        ),
        (
            "release = \"colony\"",
            "release = \"colony\"\nhelm_timeout = \"500ms\"",
            "is not a whole number of seconds",
        ),
        (
            "release = \"colony\"",
            "release = \"colony\"\nhelm_timeout = \"25h\"",
            "is out of bounds",
        ),
        (
            "release = \"colony\"",
            "release = \"colony\"\nhelm_timeout = 600",
            "invalid type",
        ),
        (
            "build_args = { APP_ENV = \"dev\" }",
            "build_args = { APP_ENV = \"dev\" }\nrepository = \"Bad_Repo\"",
            "image repository \"Bad_Repo\" is invalid",
        ),
        (
            "default_environment = \"colony-dev\"",
            "default_environment = \"colony-dev\"\n[environments",
            "is not a valid environments file",
        ),
    ];
    for (from, to, message) in setting_cases {
        let case = Case::new();
        case.edit_config(from, to);
        case.assert_refused(&plan, message);
    }

    let case = Case::new();
    case.edit_config("default_environment = \"colony-dev\"", "");
    case.assert_refused(&["verify"], "no environment given and");
    case.assert_refused_with(
        &["deploy", "colony-dev"],
        &[("COLONY_VALUES", "/nonexistent/a.yaml,/nonexistent/b.yaml")],
        "values file /nonexistent/a.yaml does not exist",
    );
    case.assert_refused(
        &["deploy", "colony-dev", "--no-backup"],
        "pass --yes with it to confirm",
    );
    case.assert_refused(
        &["verify", "colony-dev", "--expect", "0002;ls"],
        "is not a valid Alembic revision id",
    );
    case.assert_refused(
        &["status", "--config", "/nonexistent/deploy.toml"],
        "cannot read the environments file",
    );
}

/// clap's own refusals are bad input too: exit 2, the usage, nothing run.
#[test]
fn malformed_command_lines_are_usage_errors() {
    let case = Case::new();
    for args in [
        &["deploy"][..],
        &["rollback", "--steps", "0"][..],
        &["rollback", "--to", "0001_baseline", "--steps", "1"][..],
        &["rollback", "--app-revision", "x", "--to", "0001_baseline"][..],
        &["build", "--jobs", "0"][..],
        &["deploy", "colony-dev", "--frobnicate"][..],
        &["launch"][..],
    ] {
        let run = case.run(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.all());
        assert!(run.stderr.starts_with("error:"), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("--help"), "{args:?}: {}", run.stderr);
        assert_eq!(
            case.tools.calls(),
            Vec::<String>::new(),
            "{args:?} ran a tool"
        );
    }
}

/// `--help` as a terminal of 80 columns shows it (COLUMNS=80, clap's
/// wrap_help): no line wider than 100 characters.
#[test]
fn help_wraps_at_the_terminal_s_width() {
    let repo = testkit::ColonyRepo::create();
    for args in [
        &["--help"][..],
        &["deploy", "--help"],
        &["rollback", "--help"],
    ] {
        let run = crate::common::xtask(repo.root(), args, &[("COLUMNS", "80")]);
        assert_eq!(run.code, 0, "{}", run.all());
        let widest = run
            .stdout
            .lines()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0);
        assert!(
            widest <= 100,
            "{args:?}: a line of {widest} characters:\n{}",
            run.stdout
        );
        assert!(run.stdout.lines().count() > 10, "{}", run.stdout);
    }
}

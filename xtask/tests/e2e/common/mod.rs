//! Running the real `xtask` binary the way a user does, with a controlled
//! environment: nothing of the developer's own PATH, HOME or COLONY_*
//! variables leaks into a test.

pub mod background;
pub mod stack;

use std::path::Path;
use std::process::{Command, Output};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Asserts that `text` contains `needle`, showing the whole text when not.
#[track_caller]
pub fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
}

/// Nothing of the rehearsal whose start `stderr` shows is left: no
/// container labelled with its name (the database's and each one run
/// beside it), no local engine's directory. Panics if none started.
#[track_caller]
pub fn assert_no_rehearsal_left(stderr: &str) {
    let name = stderr
        .split("started a throwaway PostgreSQL ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no rehearsal started:\n{stderr}"));
    let output = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=colony-deploy.rehearsal={name}"),
            "--format",
            "{{.Names}}",
        ])
        .env("DOCKER_HOST", &testkit::TestBed::get().docker_host)
        .output()
        .unwrap();
    assert!(output.status.success());
    let left = String::from_utf8_lossy(&output.stdout);
    assert!(
        left.trim().is_empty(),
        "{name}'s containers left behind:\n{left}"
    );
    assert!(
        !std::env::temp_dir().join(name).exists(),
        "{name}'s directory was left behind"
    );
}

/// `prefix-<pid>-<counter>-<nanos>`: a name no other test of this run,
/// nor of an earlier run on the same bed, has used.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// Runs `xtask args…` with exactly `envs` (plus LANG=C.UTF-8) in `cwd`.
pub fn xtask(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("LANG", "C.UTF-8");
    for (key, value) in envs {
        command.env(key, value);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("xtask runs");
    Run {
        code: status.code().expect("xtask exited, not killed"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Compares `actual` with the reviewed insta snapshot
/// `tests/snapshots/<name>.snap`. A change is reviewed with `cargo insta
/// review`, or accepted with `INSTA_UPDATE=always cargo test` and read in
/// the diff; under CI nothing is written.
pub fn assert_snapshot(name: &str, actual: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(name, actual));
}

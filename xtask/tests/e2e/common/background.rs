//! The real `xtask` started in the background, as a user in another
//! terminal would: its output read while it runs, signalled as a terminal's
//! Ctrl-C (the process group) or a `kill`.

use std::time::{Duration, Instant};

use super::stack::Stack;

pub struct Started {
    child: std::process::Child,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub fn start_deploy(stack: &Stack) -> Started {
    start(stack, &["deploy", "colony-dev", "--yes"])
}

pub fn start(stack: &Stack, args: &[&str]) -> Started {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(stack.repo.root())
        .env_clear()
        .env("LANG", "C.UTF-8")
        .envs(stack.env())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    Started {
        child,
        stderr,
        _dir: dir,
    }
}

impl Started {
    pub fn stderr(&self) -> String {
        let stdout =
            std::fs::read_to_string(self.stderr.with_file_name("stdout")).unwrap_or_default();
        format!(
            "{}{stdout}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    pub fn wait_for(&self, what: impl Fn() -> bool, describe: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !what() {
            assert!(
                Instant::now() < deadline,
                "never saw {describe}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `signal` to the whole group (a terminal's Ctrl-C) or to xtask alone.
    pub fn signal(&self, signal: i32, group: bool) {
        let pid = self.child.id() as i32;
        let target = if group { -pid } else { pid };
        assert_eq!(unsafe_free_kill(target, signal), 0, "kill failed");
    }

    pub fn exit_code(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "xtask did not exit:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// kill(2) through the `kill` command: the test needs no `unsafe`.
fn unsafe_free_kill(target: i32, signal: i32) -> i32 {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(target.to_string())
        .status()
        .unwrap();
    status.code().unwrap_or(-1)
}

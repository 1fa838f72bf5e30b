//! `DOCKER_HOST=ssh://…` through bollard, which starts an ssh master
//! (`ssh -M -f`, `ControlPersist=yes`) for each connection in openssh's
//! control directory under `$XDG_STATE_HOME`. A connection the pool still
//! holds, or one cut while its master starts, would leave that master
//! running after the command: this process gets a control directory of its
//! own, and every master left in it at the end is told to exit. A master
//! still starting then (the runtime dropped its `launch_master`, and with
//! it the directory its socket was to be in) has no socket to be told
//! through: it is stopped by its process id.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The control directory of this process's ssh masters.
pub struct Masters {
    dir: tempfile::TempDir,
}

/// For an ssh endpoint, a private control directory, made the one openssh
/// uses (`XDG_STATE_HOME`, read once, at the first connection). Call it
/// first thing in `main`, before any thread starts.
pub fn prepare() -> Option<Masters> {
    if !crate::images::docker::endpoint().host.starts_with("ssh://") {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("xtask-ssh-")
        .tempdir()
        .ok()?;
    // Only helm, kubectl, git and the scripts inherit it; none reads it.
    std::env::set_var("XDG_STATE_HOME", dir.path());
    Some(Masters { dir })
}

impl Masters {
    /// `ssh -O exit` to each master still running, SIGTERM to any ssh
    /// still starting in this directory, then the directory goes.
    pub fn close(self) {
        self.tell_masters_to_exit();
        stop_processes_naming(self.dir.path());
    }

    fn tell_masters_to_exit(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let control = entry.path().join("master");
            if is_control_socket(&entry.file_name().to_string_lossy(), &control) {
                let _ = Command::new("ssh")
                    .arg("-S")
                    .arg(&control)
                    .args(["-O", "exit", "colony-xtask"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// openssh's directories are `.ssh-connection<random>`, its socket `master`.
fn is_control_socket(name: &str, control: &Path) -> bool {
    name.starts_with(".ssh-connection") && control.exists()
}

/// SIGTERM to every process with an argument under `dir` (only this
/// process's ssh masters name its private directory), again until none is
/// left or two seconds passed: one seen before it forked into the
/// background may have a child by then. Linux's `/proc`; elsewhere nothing.
fn stop_processes_naming(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = processes_naming(dir);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn processes_naming(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| names_a_path_under(&cmdline, dir))
        })
        .collect()
}

/// Whether one of the NUL-separated arguments is a path inside `dir`.
fn names_a_path_under(cmdline: &[u8], dir: &Path) -> bool {
    cmdline
        .split(|&byte| byte == 0)
        .filter_map(|arg| std::str::from_utf8(arg).ok())
        .any(|arg| Path::new(arg).starts_with(dir) && Path::new(arg) != dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_names_the_directory_only_as_a_path_inside_it() {
        let dir = Path::new("/tmp/xtask-ssh-abc");
        let master = b"ssh\0-S\0/tmp/xtask-ssh-abc/.ssh-connection1/master\0-M\0";
        assert!(names_a_path_under(master, dir));
        // Another run's directory that shares the prefix is not this one's.
        let other = b"ssh\0-S\0/tmp/xtask-ssh-abcd/.ssh-connection1/master\0";
        assert!(!names_a_path_under(other, dir));
        assert!(!names_a_path_under(b"ssh\0builder\0", dir));
    }

    /// The case CI met: a master still starting when the command ends (its
    /// server has not even sent its banner), so it has no control socket.
    /// `close` stops it; left alone it would wait, then persist forever.
    #[test]
    fn a_master_still_starting_at_the_end_is_stopped() {
        // A port that completes the TCP handshake and never speaks.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port().to_string();
        let dir = tempfile::Builder::new()
            .prefix("xtask-ssh-")
            .tempdir()
            .unwrap();
        let connection = dir.path().join(".ssh-connection-test");
        std::fs::create_dir(&connection).unwrap();
        let mut master = Command::new("ssh")
            .arg("-E")
            .arg(connection.join("log"))
            .arg("-S")
            .arg(connection.join("master"))
            .args([
                "-M",
                "-f",
                "-N",
                "-o",
                "ControlPersist=yes",
                "-o",
                "BatchMode=yes",
            ])
            .args(["-p", &port, "127.0.0.1"])
            .stdin(Stdio::null())
            .spawn()
            .expect("the ssh client (openssh-client) runs");
        // ssh has read its arguments once its command line is visible.
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_naming(dir.path()).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(master.try_wait().unwrap(), None, "ssh is still starting");

        Masters { dir }.close();

        let status = master.try_wait().unwrap();
        assert!(status.is_some(), "the starting master was stopped");
    }
}

//! `DOCKER_HOST=ssh://…` through bollard, which starts an ssh master
//! (`ssh -M -f`, `ControlPersist=yes`) for each connection in openssh's
//! control directory under `$XDG_STATE_HOME`. A connection the pool still
//! holds, or one cut while its master starts, would leave that master
//! running after the command: this process gets a control directory of its
//! own, and every master left in it at the end is told to exit.

use std::path::Path;
use std::process::{Command, Stdio};

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
    /// `ssh -O exit` to each master still running, then the directory goes.
    pub fn close(self) {
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

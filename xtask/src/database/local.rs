//! The rehearsal's local engine: a throwaway PostgreSQL made with this
//! machine's `initdb` and `pg_ctl` in a temporary directory, listening on a
//! Unix socket only (no TCP port to collide with or expose). Containers of
//! the backend image reach it through that socket's directory, mounted in.
//! PostgreSQL refuses to run as root; as root the server runs as the user
//! `postgres`, as Debian's packages do.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::observe::LogLine;
use super::scratch::Finished;

/// Where the socket directory appears in a container beside the server.
pub const SOCKET_IN_CONTAINER: &str = "/run/colony-rehearsal";

/// A PostgreSQL installation's programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub dir: PathBuf,
    /// `15.8`, from `pg_ctl --version`.
    pub version: String,
}

impl std::fmt::Display for Binaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "local PostgreSQL {} ({})",
            self.version,
            self.dir.display()
        )
    }
}

/// The directory that holds `initdb` and `pg_ctl` for `major`: the
/// configured one, else Debian's `/usr/lib/postgresql/<major>/bin`, else
/// the one `pg_ctl` on PATH lives in. Its version must be `major`: a dump
/// restored into another major version is not what production will run.
pub fn find(configured: Option<&Path>, major: &str) -> Result<Binaries> {
    let candidates: Vec<PathBuf> = match configured {
        Some(dir) => vec![dir.to_path_buf()],
        None => [
            Some(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))),
            on_path("pg_ctl").and_then(|p| p.parent().map(Path::to_path_buf)),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    let mut seen = Vec::new();
    for dir in candidates {
        let Some(version) = version_in(&dir) else {
            seen.push(format!("{}: no initdb and pg_ctl", dir.display()));
            continue;
        };
        if major_of(&version) == major {
            return Ok(Binaries { dir, version });
        }
        seen.push(format!("{}: PostgreSQL {version}", dir.display()));
    }
    bail!(
        "the local rehearsal engine needs PostgreSQL {major}'s initdb and pg_ctl (the backup was dumped from {major}); found {}. Install postgresql-{major}, set rehearsal.bin_dir, or use engine = \"container\"",
        if seen.is_empty() { "none".to_string() } else { seen.join("; ") }
    )
}

/// Every installation `find` could pick without `rehearsal.bin_dir`:
/// Debian's `/usr/lib/postgresql/*/bin`, and the one on PATH.
pub fn installed() -> Vec<Binaries> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    if let Some(dir) = on_path("pg_ctl").and_then(|p| p.parent().map(Path::to_path_buf)) {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.into_iter()
        .filter_map(|dir| version_in(&dir).map(|version| Binaries { dir, version }))
        .collect()
}

/// `pg_ctl --version` of `dir`'s pg_ctl, when it has initdb too.
pub fn version_in(dir: &Path) -> Option<String> {
    if !dir.join("initdb").is_file() {
        return None;
    }
    let output = std::process::Command::new(dir.join("pg_ctl"))
        .arg("--version")
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

/// `pg_ctl (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)` → `15.8`.
pub fn parse_version(text: &str) -> Option<String> {
    let rest = text.split_once("(PostgreSQL)")?.1;
    let version = rest.split_whitespace().next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_string())
}

/// `15.8` → `15`; `17beta1` → `17`; `9.6.24` → `9.6` (before 10, the
/// major had two parts).
pub fn major_of(version: &str) -> String {
    let mut parts = version.split('.');
    let first = leading_digits(parts.next().unwrap_or_default());
    match first.parse::<u32>() {
        Ok(n) if n < 10 => format!(
            "{first}.{}",
            leading_digits(parts.next().unwrap_or_default())
        ),
        _ => first.to_string(),
    }
}

fn leading_digits(text: &str) -> &str {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    &text[..end]
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::fs::canonicalize(found).ok())
}

/// A running local server; `stop` (or drop) ends it and removes its files.
pub struct LocalServer {
    root: PathBuf,
    bin: PathBuf,
    /// The user the server runs as, when this process is root.
    owner: Option<nix::unistd::User>,
    stopped: bool,
}

impl LocalServer {
    /// initdb (trust, one superuser `user`), start on a socket only, create
    /// `database`. Tuned as the container engine's tmpfs is: nothing
    /// waits for a disk.
    pub async fn start(bin: &Binaries, name: &str, user: &str, database: &str) -> Result<Self> {
        let owner = server_user()?;
        let root = std::env::temp_dir().join(name);
        std::fs::create_dir(&root)
            .with_context(|| format!("creating {} for the rehearsal", root.display()))?;
        let mut server = LocalServer {
            root,
            bin: bin.dir.clone(),
            owner,
            stopped: false,
        };
        server.prepare_dirs()?;
        let data = server.root.join("data").display().to_string();
        let options = format!(
            "-h '' -k '{}' -c fsync=off -c full_page_writes=off -c synchronous_commit=off",
            server.socket_dir().display()
        );
        let log = server.root.join("server.log").display().to_string();
        let steps: [Vec<&str>; 2] = [
            vec![
                "initdb",
                "--no-sync",
                "-A",
                "trust",
                "-U",
                user,
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
                &data,
            ],
            vec![
                "pg_ctl", "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start",
            ],
        ];
        for argv in steps {
            let done = server.run_as_owner(&argv).await?;
            if done.code != 0 {
                // After a failed initdb no server runs; after a failed
                // start one may be half up, and `stop` ends it.
                server.stopped = argv[0] == "initdb";
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "{} failed (exit {}) for the rehearsal's local PostgreSQL:\n{}\n{}",
                    argv[0],
                    done.code,
                    done.text(),
                    tail(&log, 15)
                );
            }
        }
        let create = format!("CREATE DATABASE \"{database}\"");
        let created = server
            .exec(
                &[
                    "psql",
                    "--no-psqlrc",
                    "-U",
                    user,
                    "-d",
                    "postgres",
                    "-c",
                    &create,
                ],
                &[],
            )
            .await?;
        if created.code != 0 {
            bail!(
                "creating the rehearsal's database failed: {}",
                created.text()
            );
        }
        Ok(server)
    }

    /// The directory of the server's socket (mounted into containers).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("socket")
    }

    /// The root and socket directories, traversable by a container's user
    /// of any uid (the socket itself is 0777); owned by the server's user.
    fn prepare_dirs(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for dir in [self.root.clone(), self.socket_dir()] {
            if !dir.exists() {
                std::fs::create_dir(&dir)?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            if let Some(owner) = &self.owner {
                nix::unistd::chown(&dir, Some(owner.uid), Some(owner.gid))
                    .with_context(|| format!("giving {} to {}", dir.display(), owner.name))?;
            }
        }
        Ok(())
    }

    /// A client program of this installation (psql, pg_restore), as this
    /// process's user, connecting through the socket.
    pub async fn exec(&self, argv: &[&str], env: &[&str]) -> Result<Finished> {
        let mut command = self.command(argv);
        command.env("PGHOST", self.socket_dir());
        for pair in env {
            if let Some((key, value)) = pair.split_once('=') {
                command.env(key, value);
            }
        }
        collect(command, argv[0]).await
    }

    /// initdb and pg_ctl, as the server's user.
    async fn run_as_owner(&self, argv: &[&str]) -> Result<Finished> {
        let mut command = self.command(argv);
        if let Some(owner) = &self.owner {
            command
                .uid(owner.uid.as_raw())
                .gid(owner.gid.as_raw())
                .env("HOME", &self.root);
        }
        collect(command, argv[0]).await
    }

    fn command(&self, argv: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bin.join(argv[0]));
        command
            .args(&argv[1..])
            .current_dir(&self.root)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// `pg_ctl stop -m immediate` (the data is thrown away), then the
    /// directory. Blocking: it runs from `Drop` too.
    pub fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            let mut command = std::process::Command::new(self.bin.join("pg_ctl"));
            command
                .args(["-D", &self.root.join("data").display().to_string()])
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if let Some(owner) = &self.owner {
                use std::os::unix::process::CommandExt;
                command.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
            }
            let _ = command.status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Who runs the server: this process's user, or `postgres` when root.
fn server_user() -> Result<Option<nix::unistd::User>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some(user)),
        _ => bail!(
            "the local rehearsal engine runs PostgreSQL, which refuses to run as root, as the user postgres, and there is no such user here: run as another user, create it, or use engine = \"container\""
        ),
    }
}

/// Runs `command` to its end; stdout then stderr, as lines.
async fn collect(mut command: tokio::process::Command, program: &str) -> Result<Finished> {
    let started = Instant::now();
    let output = command
        .output()
        .await
        .with_context(|| format!("running {program} for the rehearsal"))?;
    let at = started.elapsed();
    let lines = [output.stdout, output.stderr]
        .iter()
        .flat_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(|text| LogLine {
                    at,
                    text: text.to_string(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(Finished {
        code: output.status.code().map_or(-1, i64::from),
        lines,
        ended: at,
    })
}

fn tail(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_majors_are_read_as_pg_ctl_prints_them() {
        assert_eq!(
            parse_version("pg_ctl (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)\n").as_deref(),
            Some("15.8")
        );
        assert_eq!(
            parse_version("pg_ctl (PostgreSQL) 17beta1").as_deref(),
            Some("17beta1")
        );
        assert_eq!(parse_version("something else"), None);
        assert_eq!(major_of("15.8"), "15");
        assert_eq!(major_of("17beta1"), "17");
        assert_eq!(major_of("9.6.24"), "9.6");
    }
}

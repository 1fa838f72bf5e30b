//! Running `alembic upgrade head` as a child process: output streamed line
//! by line (passwords masked), exit status kept, and a failure explained.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};

use crate::redact::mask_all;

/// How Alembic is invoked: `alembic`, `uv run alembic`, a path…
#[derive(Debug, Clone)]
pub struct AlembicCommand {
    pub program: String,
    pub leading_args: Vec<String>,
}

impl AlembicCommand {
    /// Splits on whitespace (`uv run alembic` → `uv` + [`run`, `alembic`]).
    pub fn parse(text: &str) -> Result<AlembicCommand, String> {
        let mut words = text.split_whitespace().map(String::from);
        let program = words.next().ok_or("--alembic-cmd is empty")?;
        Ok(AlembicCommand {
            program,
            leading_args: words.collect(),
        })
    }

    /// The program must exist before the database is touched (a stamp
    /// followed by "command not found" would leave half a run behind).
    pub fn check_resolves(&self, path: Option<&std::ffi::OsStr>) -> Result<(), String> {
        let executable = |candidate: &Path| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        let found = if self.program.contains('/') {
            executable(Path::new(&self.program))
        } else {
            path.is_some_and(|path| {
                std::env::split_paths(path).any(|dir| executable(&dir.join(&self.program)))
            })
        };
        if found {
            Ok(())
        } else {
            Err(format!(
                "--alembic-cmd: {:?} is not an executable{}; install Alembic in the image or set \
                 --alembic-cmd (RUN_MIGRATIONS_ALEMBIC_CMD), e.g. \"uv run --no-sync alembic\"",
                self.program,
                if self.program.contains('/') {
                    ""
                } else {
                    " on PATH"
                }
            ))
        }
    }
}

/// PGOPTIONS for Alembic: the runner's own (if any), then the lock timeout.
fn pg_options(lock_timeout: std::time::Duration) -> String {
    let own = std::env::var("PGOPTIONS").unwrap_or_default();
    let ours = format!("-c lock_timeout={}ms", lock_timeout.as_millis());
    if own.trim().is_empty() {
        ours
    } else {
        format!("{own} {ours}")
    }
}

/// Whether a failed run's output says a statement gave up waiting for a
/// lock (PostgreSQL's `lock_not_available`, 55P03).
pub fn timed_out_on_a_lock(tail: &[String]) -> bool {
    tail.iter().any(|line| {
        line.contains("LockNotAvailable")
            || line.contains("canceling statement due to lock timeout")
            || line.contains("lock_not_available")
    })
}

/// What a finished run left behind.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    /// The last lines of its output (stdout's, then stderr's), for explaining
    /// a failure; and the last "Running upgrade" line, which a long Python
    /// traceback would push out of the tail.
    pub tail: Vec<String>,
}

const TAIL_LINES: usize = 60;

/// Runs `<alembic> [-c config] <args…>` with DATABASE_URL set; forwards
/// SIGTERM/SIGINT to it (a pod being stopped) and waits for it to exit.
pub async fn run(
    command: &AlembicCommand,
    config: Option<&Path>,
    database_url: &str,
    args: &[&str],
    lock_timeout: std::time::Duration,
) -> Result<Outcome, String> {
    let mut process = Command::new(&command.program);
    process.args(&command.leading_args);
    if let Some(config) = config {
        process.arg("-c").arg(config);
    }
    process
        .args(args)
        .env("DATABASE_URL", database_url)
        // libpq (psycopg, psycopg2, asyncpg does not read it) applies these
        // to every session Alembic opens: a statement that waits longer
        // for a lock fails instead of queueing the app's queries behind it.
        .env("PGOPTIONS", pg_options(lock_timeout))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Alembic must not outlive the runner, even a runner killed with -9 (it
    // would go on migrating beside the next pod's runner): the kernel sends
    // it SIGTERM when its parent dies.
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one prctl system call, which is async-signal-safe.
    unsafe {
        process.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = process.spawn().map_err(|e| {
        format!(
            "cannot start `{}`: {e} (set --alembic-cmd to how Alembic runs in this image)",
            command.program
        )
    })?;
    let stdout = child
        .stdout
        .take()
        .map(|out| tokio::spawn(forward(out, false)));
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(forward(err, true)));

    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let status = tokio::select! {
        status = child.wait() => status.map_err(|e| e.to_string())?,
        _ = terminate.recv() => return Err(stop(&mut child, nix::sys::signal::Signal::SIGTERM).await),
        _ = interrupt.recv() => return Err(stop(&mut child, nix::sys::signal::Signal::SIGINT).await),
    };
    let mut tail = Vec::new();
    for task in [stdout, stderr].into_iter().flatten() {
        tail.extend(task.await.unwrap_or_default());
    }
    Ok(Outcome { status, tail })
}

/// How long Alembic gets to stop on the signal we got before it is killed.
const ALEMBIC_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Passes the signal on to Alembic and waits for it (then SIGKILL after a
/// grace period), so that the pod stops with nothing left running.
async fn stop(child: &mut tokio::process::Child, signal: nix::sys::signal::Signal) -> String {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
    if tokio::time::timeout(ALEMBIC_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    format!(
        "stopped by {signal} while Alembic was running; the signal was passed on to Alembic, and the \
         migration in progress was rolled back by PostgreSQL"
    )
}

/// Copies lines to our stdout/stderr as they come; keeps the last ones, and
/// the last "Running upgrade" line first of all.
async fn forward(stream: impl AsyncRead + Unpin, to_stderr: bool) -> Vec<String> {
    let mut lines = BufReader::new(stream).lines();
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut last_step: Option<String> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let line = mask_all(&line);
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        if line.contains("Running upgrade ") {
            last_step = Some(line.clone());
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    last_step.into_iter().chain(tail).collect()
}

/// Explains a failed `alembic upgrade head` from its output and the
/// revision the database is at afterwards. Pure.
pub fn explain_failure(tail: &[String], current: Option<&str>, stamped: bool) -> String {
    let failing = tail
        .iter()
        .rev()
        .find_map(|line| line.split("Running upgrade ").nth(1))
        .and_then(|step| step.split(" -> ").nth(1))
        .map(|to| to.split([',', ' ']).next().unwrap_or(to).to_string());
    let state = match (current, stamped) {
        (Some(rev), true) => {
            format!("The database was stamped (pre-Alembic schema) and is now at {rev}")
        }
        (Some(rev), false) => format!("The database is now at {rev}"),
        (None, _) => "The database has no Alembic revision yet".to_string(),
    };
    let migration = failing
        .as_deref()
        .map_or(String::new(), |rev| format!(" in {rev}"));
    if let Some(table) = tail.iter().find_map(|line| existing_relation(line)) {
        let (what, rev) = (
            table.clone(),
            failing.as_deref().unwrap_or("<that revision>"),
        );
        return format!(
            "alembic upgrade head failed{migration}: table {what} already exists. {state}. \
             {what} was probably created outside Alembic (e.g. by create_all from newer models). \
             If it already matches what {rev} creates, record that with `alembic stamp {rev}`; \
             otherwise back up, rename or drop {what}, and rerun."
        );
    }
    let last = tail
        .iter()
        .rev()
        .find(|l| l.contains("Error") || l.starts_with("FAILED"))
        .cloned();
    format!(
        "alembic upgrade head failed{migration}. {state}; each migration runs in its own transaction, so the failed one left nothing behind.{}",
        last.map_or(String::new(), |l| format!(" Last error: {l}"))
    )
}

/// `relation "activity_log" already exists` → `activity_log`.
fn existing_relation(line: &str) -> Option<String> {
    let rest = line.split("relation \"").nth(1)?;
    let (name, after) = rest.split_once('"')?;
    after
        .trim_start()
        .starts_with("already exists")
        .then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_on_whitespace() {
        let uv = AlembicCommand::parse("uv run alembic").unwrap();
        assert_eq!((uv.program.as_str(), uv.leading_args.len()), ("uv", 2));
        assert!(AlembicCommand::parse("  ").is_err());
    }

    #[test]
    fn a_duplicate_table_is_named_with_the_state_and_the_fix() {
        let tail: Vec<String> = [
            "INFO  [alembic.runtime.migration] Running upgrade 0001_baseline -> 0002_activity_and_comments, Activity log",
            "sqlalchemy.exc.ProgrammingError: (psycopg.errors.DuplicateTable) relation \"activity_log\" already exists",
        ]
        .map(String::from)
        .to_vec();
        let message = explain_failure(&tail, Some("0001_baseline"), true);
        assert!(
            message.contains(
                "failed in 0002_activity_and_comments: table activity_log already exists"
            ),
            "{message}"
        );
        assert!(
            message.contains("stamped (pre-Alembic schema) and is now at 0001_baseline"),
            "{message}"
        );
        assert!(
            message.contains("`alembic stamp 0002_activity_and_comments`"),
            "{message}"
        );
    }

    #[test]
    fn other_failures_keep_the_last_error() {
        let tail = vec!["RuntimeError: boom".to_string()];
        let message = explain_failure(&tail, None, false);
        assert!(
            message.contains("no Alembic revision yet")
                && message.contains("Last error: RuntimeError: boom"),
            "{message}"
        );
    }
}

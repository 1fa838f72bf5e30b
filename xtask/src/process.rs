//! The one process layer: every `helm`, `kubectl` and script the tool runs
//! goes through here (on duct). Arguments are argv vectors, never shell
//! strings; output is captured (stdout and stderr read together, so a child
//! never blocks on a full pipe) or streamed line by line in the order it
//! was written; exit codes are always returned to be checked; and a child is
//! stopped with SIGTERM, a grace period, then SIGKILL, without `unsafe`.
//!
//! Interrupts: `install_interrupts` turns the first Ctrl-C (SIGINT) or
//! SIGTERM into SIGTERM for every running child (Helm then records the
//! release as failed instead of leaving it pending) and a flag the commands
//! check between steps; a second one kills the children at once and exits.
//! xshell stays for the short read-only probes (git, `helm version`).

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backend_migrations::redact::mask_all;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What a finished process printed, and its exit code (-1: killed).
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    /// Masked: it goes into messages.
    pub stderr: String,
}

fn expression(argv: &[String]) -> duct::Expression {
    duct::cmd(&argv[0], &argv[1..]).stdin_null().unchecked()
}

fn cannot_start(argv: &[String]) -> String {
    format!(
        "cannot run {}: is it installed? (`cargo xtask doctor`)",
        argv[0]
    )
}

/// Runs `argv` to the end, capturing stdout and stderr apart.
pub fn capture(argv: &[String]) -> Result<Output> {
    capture_expression(argv, expression(argv))
}

/// `capture` with `vars` added to the environment (a password for libpq).
pub fn capture_with_env(argv: &[String], vars: &[(String, String)]) -> Result<Output> {
    let expression = vars.iter().fold(expression(argv), |e, (k, v)| e.env(k, v));
    capture_expression(argv, expression)
}

/// `capture` in directory `dir`, with only `keep` of this process's environment (those
/// set), plus `vars`: for running code that should not see the deployer's
/// secrets (the checkout's migrations, rendered offline).
pub fn capture_scrubbed(
    argv: &[String],
    dir: &std::path::Path,
    keep: &[&str],
    vars: &[(&str, &str)],
) -> Result<Output> {
    let mut env: std::collections::HashMap<String, String> = keep
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect();
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    capture_expression(argv, expression(argv).dir(dir).full_env(env))
}

fn capture_expression(argv: &[String], expression: duct::Expression) -> Result<Output> {
    start_expression(argv, expression)?.finish()
}

/// A capture started now and finished later, or never: a slow read begun
/// before it is known to be needed (verify's `alembic current` during the
/// facts). Dropped unfinished, its child is killed.
pub struct Started {
    handle: Option<duct::Handle>,
    _registered: Registered,
}

/// Starts `argv` capturing stdout and stderr apart; `finish` waits for it.
pub fn start_capture(argv: &[String]) -> Result<Started> {
    start_expression(argv, expression(argv))
}

fn start_expression(argv: &[String], expression: duct::Expression) -> Result<Started> {
    let handle = expression
        .stdout_capture()
        .stderr_capture()
        .start()
        .with_context(|| cannot_start(argv))?;
    Ok(Started {
        _registered: Registered::new(handle.pids()),
        handle: Some(handle),
    })
}

impl Started {
    /// Waits for the child to end; what it printed.
    pub fn finish(mut self) -> Result<Output> {
        let handle = self.handle.take().expect("a Started is finished once");
        let output = handle.into_output()?;
        Ok(Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: mask_all(&String::from_utf8_lossy(&output.stderr)),
        })
    }
}

impl Drop for Started {
    /// Not waited for: a grandchild (a `kubectl exec`'s remote command) may
    /// hold the pipes a little longer, and nobody needs its answer.
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.kill();
        }
    }
}

/// A running child whose output (stdout and stderr together, in order) is
/// read line by line.
pub struct Running {
    reader: Arc<duct::ReaderHandle>,
    _registered: Registered,
}

/// Starts `argv`; read its lines with `lines`, stop it with `terminate`.
pub fn spawn(argv: &[String]) -> Result<Running> {
    spawn_with(argv, &[])
}

/// `spawn` with `vars` added to the environment.
pub fn spawn_with(argv: &[String], vars: &[(String, String)]) -> Result<Running> {
    let reader = vars
        .iter()
        .fold(expression(argv), |e, (k, v)| e.env(k, v))
        .stderr_to_stdout()
        .reader()
        .with_context(|| cannot_start(argv))?;
    let registered = Registered::new(reader.pids());
    // Started as an interrupt arrived, after its handler signalled the
    // children it knew: this one stops too, instead of running on unseen
    // once we have exited.
    if interrupted().is_some() {
        signal_all(&reader.pids(), Signal::SIGTERM);
    }
    Ok(Running {
        reader: Arc::new(reader),
        _registered: registered,
    })
}

impl Running {
    /// Calls `on_line` with each line (masked) until the child closes its
    /// output; returns the exit code.
    pub fn lines(&self, mut on_line: impl FnMut(&str)) -> Result<i32> {
        let mut reader = BufReader::new(&*self.reader);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => on_line(&mask_all(line.trim_end_matches(['\n', '\r']))),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.wait()
    }

    /// `lines`, also returning every line.
    pub fn lines_collect(&self, mut on_line: impl FnMut(&str)) -> Result<(i32, Vec<String>)> {
        let mut all = Vec::new();
        let code = self.lines(|line| {
            on_line(line);
            all.push(line.to_string());
        })?;
        Ok((code, all))
    }

    fn wait(&self) -> Result<i32> {
        loop {
            if let Some(output) = self.reader.try_wait()? {
                return Ok(output.status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A handle for another thread to call `terminate` through.
    pub fn share(&self) -> Stopper {
        Stopper {
            reader: self.reader.clone(),
        }
    }
}

/// Stops a `Running` from another thread.
#[derive(Clone)]
pub struct Stopper {
    reader: Arc<duct::ReaderHandle>,
}

impl Stopper {
    /// SIGTERM, up to `grace` for the child to exit on its own, then SIGKILL.
    pub fn terminate(&self, grace: Duration) {
        signal_all(&self.reader.pids(), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.reader.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.reader.kill();
    }
}

/// Runs `argv`, showing each line of its output (masked) on stderr as it
/// comes, prefixed; returns the exit code and the lines.
pub fn stream(argv: &[String], prefix: &str) -> Result<(i32, Vec<String>)> {
    spawn(argv)?.lines_collect(|line| crate::progress::say(format!("{prefix}{line}")))
}

fn signal_all(pids: &[u32], signal: Signal) {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid as i32), signal);
    }
}

// ------------------------------------------------------------- interrupts

/// The children running now, for the interrupt handler.
fn children() -> &'static Mutex<Vec<u32>> {
    static CHILDREN: OnceLock<Mutex<Vec<u32>>> = OnceLock::new();
    CHILDREN.get_or_init(|| Mutex::new(Vec::new()))
}

/// Keeps a child's pids in the registry while it runs.
struct Registered(Vec<u32>);

impl Registered {
    fn new(pids: Vec<u32>) -> Registered {
        children().lock().expect("registry").extend(&pids);
        Registered(pids)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        children()
            .lock()
            .expect("registry")
            .retain(|pid| !self.0.contains(pid));
    }
}

/// The signal that interrupted us (SIGINT 2, SIGTERM 15), 0 when none.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// The interrupt that arrived, if any.
pub fn interrupted() -> Option<Interrupted> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(Interrupted { signal }),
    }
}

/// What `receiver` brings (None: its sender went away without a word),
/// unless an interrupt arrives first: a wait that Ctrl-C ends.
pub fn recv_unless_interrupted<T>(
    receiver: &std::sync::mpsc::Receiver<T>,
) -> Result<Option<T>, Interrupted> {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        if let Some(interrupt) = interrupted() {
            return Err(interrupt);
        }
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(value) => return Ok(Some(value)),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

/// An interrupt, as an error the commands return; `main` maps it to 130/143.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("interrupted by {}", self.name())]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    pub fn name(self) -> &'static str {
        if self.signal == libc::SIGTERM {
            "SIGTERM"
        } else {
            "SIGINT (Ctrl-C)"
        }
    }

    pub fn exit_code(self) -> i32 {
        128 + self.signal
    }
}

/// What a command says after an interrupt: the report replaces the error
/// chain (which would repeat the interrupt at every level), and the signal
/// gives the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{report}")]
pub struct Stopped {
    pub interrupt: Interrupted,
    pub report: String,
}

impl Stopped {
    /// `error`'s chain without the interrupt itself: where it happened.
    pub fn new(
        interrupt: Interrupted,
        error: &anyhow::Error,
        report: impl FnOnce(&str) -> String,
    ) -> Stopped {
        let during: Vec<String> = error
            .chain()
            .filter(|cause| !cause.is::<Interrupted>())
            .map(|cause| cause.to_string())
            .collect();
        Stopped {
            interrupt,
            report: report(&during.join(": ")),
        }
    }
}

/// From now on, the first SIGINT/SIGTERM stops the children with SIGTERM
/// (and is remembered); a second one kills them and exits at once.
/// Waits, at most `limit`, until every child this process started has
/// ended: after an interrupt, a step that was dropped (the in-process image
/// stage's group) may still have a child finishing its own cleanup (the
/// backup script removing its partial file), and exiting before it would
/// report a state that is not yet true.
pub fn wait_for_children(limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline
        && children().lock().map(|c| !c.is_empty()).unwrap_or(false)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to every child this process started, then a wait of at most
/// `grace` for them to end: for work given up on the way out (the builds
/// begun while a declined question waited), which must not outlive us.
pub fn terminate_children(grace: Duration) {
    let pids = children().lock().map(|c| c.clone()).unwrap_or_default();
    signal_all(&pids, Signal::SIGTERM);
    wait_for_children(grace);
}

pub fn install_interrupts() -> Result<()> {
    // Once per process: a second handler thread would count every signal twice.
    static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let first = INTERRUPTED
                .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            let pids = children().lock().map(|c| c.clone()).unwrap_or_default();
            // Signal first, then say so: stderr may be a closed pipe (a Ctrl-C
            // reaches `| tee` too), and writing there must not stop us.
            use std::io::Write;
            if first {
                signal_all(&pids, Signal::SIGTERM);
                let _ = writeln!(
                    std::io::stderr(),
                    "\n{}: stopping the running step (SIGTERM to its processes); press Ctrl-C again to kill them at once",
                    Interrupted { signal }
                );
            } else {
                signal_all(&pids, Signal::SIGKILL);
                let _ = writeln!(
                    std::io::stderr(),
                    "\nsecond interrupt: killing the running processes now"
                );
                std::process::exit(128 + signal);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_megabyte_of_stderr_does_not_block_and_order_is_kept() {
        let script = "head -c 1048576 /dev/zero | tr '\\0' x >&2; echo >&2; echo out-1; echo err-2 >&2; echo out-3";
        let captured = capture(&argv(&["sh", "-c", script])).unwrap();
        assert_eq!(captured.code, 0);
        assert!(captured.stderr.len() > 1_000_000);
        assert_eq!(
            captured.stdout.lines().collect::<Vec<_>>(),
            ["out-1", "out-3"]
        );

        let running = spawn(&argv(&["sh", "-c", script])).unwrap();
        let mut lines = Vec::new();
        let code = running.lines(|l| lines.push(l.to_string())).unwrap();
        assert_eq!(code, 0);
        let tail: Vec<&str> = lines
            .iter()
            .rev()
            .take(3)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            ["out-1", "err-2", "out-3"],
            "stdout and stderr in the order written"
        );
    }

    #[test]
    fn exit_codes_come_back_and_terminate_escalates() {
        assert_eq!(capture(&argv(&["sh", "-c", "exit 7"])).unwrap().code, 7);
        assert!(capture(&argv(&["/nonexistent/tool"])).is_err());
        // A child that ignores SIGTERM is killed after the grace period.
        let stubborn = spawn(&argv(&["sh", "-c", "trap '' TERM; sleep 30"])).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        stubborn.share().terminate(Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_ne!(stubborn.wait().unwrap(), 0);
        // One that honours it exits within the grace period.
        let polite = spawn(&argv(&["sleep", "30"])).unwrap();
        let started = Instant::now();
        polite.share().terminate(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn passwords_in_output_are_masked() {
        let out = capture(&argv(&["sh", "-c", "echo postgresql://u:s3cr3t@h/db >&2"])).unwrap();
        assert!(!out.stderr.contains("s3cr3t"), "{}", out.stderr);
        let (_, lines) = stream(&argv(&["sh", "-c", "echo password=s3cr3t"]), "").unwrap();
        assert_eq!(lines, ["password=***"]);
    }
}

// How an argv is shown (never how it runs: processes get the argv).

/// An argv as a shell would need it typed: plain words as they are, the
/// rest in single quotes. Display only; processes get the argv itself.
pub fn display_argv(argv: &[String]) -> String {
    let shown = argv
        .iter()
        .map(|arg| shell_quote(arg))
        .collect::<Vec<_>>()
        .join(" ");
    backend_migrations::redact::mask_all(&shown)
}

/// A command as echoed while it runs: whole with `verbose`, else up to its
/// first values option, then how much was left out (`--dry-run` and `-v`
/// show it all).
pub fn echo_argv(argv: &[String], verbose: bool) -> String {
    let whole = display_argv(argv);
    if verbose || whole.len() <= 120 {
        return whole;
    }
    let cut = argv
        .iter()
        .position(|a| a == "-f" || a.starts_with("--set"))
        .unwrap_or(argv.len());
    let shown = display_argv(&argv[..cut]);
    let pinned = argv.iter().any(|a| a.contains(".image.digest="));
    format!(
        "{shown} … ({} more arguments{}; -v shows all)",
        argv.len() - cut,
        if pinned { ", digests pinned" } else { "" }
    )
}

/// Like `display_argv`, but a long command is continued (` \\`) before
/// each option, so that every `-f` and `--set-string` reads on its own line.
pub fn display_argv_wrapped(argv: &[String], indent: &str) -> String {
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
mod display_tests {
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

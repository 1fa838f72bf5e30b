//! The simulated cluster's `kubectl` and `helm` (one executable, named by
//! the symlink it is called through), and its detached pod runner.

use std::process::ExitCode;

use testkit::sim::{helm, kubectl, pod, state::Dir};

fn main() -> ExitCode {
    // kubectl and helm are Go programs: a closed stdout (`| head -n 1`)
    // ends them by SIGPIPE, silently, where Rust's default would panic.
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let mut args = std::env::args();
    let invoked = args.next().unwrap_or_default();
    let argv: Vec<String> = args.collect();
    let tool = std::path::Path::new(&invoked)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if tool == "colony-sim" && argv.first().map(String::as_str) == Some("init") {
        return init(&argv[1..]);
    }
    let dir = match Dir::from_env() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let code = match (tool.as_str(), argv.first().map(String::as_str)) {
        (_, Some("pod-run")) => {
            match pod::run(&dir, argv.get(1).map(String::as_str).unwrap_or_default()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
        ("kubectl", _) => {
            dir.record_call("kubectl", &argv);
            kubectl::main(&dir, &argv)
        }
        ("helm", _) => {
            dir.record_call("helm", &argv);
            helm::main(&dir, &argv)
        }
        (other, _) => {
            eprintln!(
                "colony-sim must be called as kubectl or helm (or `colony-sim init`), not {other}"
            );
            2
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// `colony-sim init STATE_DIR CONTEXT DATABASE_URL`: a new simulated cluster
/// on the test bed; prints the directory to put first on PATH.
fn init(args: &[String]) -> ExitCode {
    let [state, context, database_url] = args else {
        eprintln!("usage: colony-sim init STATE_DIR CONTEXT DATABASE_URL");
        return ExitCode::from(2);
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("colony-sim: {e}");
            return ExitCode::from(1);
        }
    };
    let state = std::path::Path::new(state);
    let bin = state.join("bin");
    testkit::sim::init(state, &bin, context, database_url, &exe);
    println!("{}", bin.display());
    ExitCode::SUCCESS
}

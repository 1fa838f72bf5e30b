//! The simulated cluster's `kubectl` and `helm` (one executable, named by
//! the symlink it is called through), and its detached pod runner.

use std::process::ExitCode;

use testkit::sim::{helm, kubectl, pod, state::Dir};

fn main() -> ExitCode {
    let mut args = std::env::args();
    let invoked = args.next().unwrap_or_default();
    let argv: Vec<String> = args.collect();
    let tool = std::path::Path::new(&invoked)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
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
            eprintln!("colony-sim must be called as kubectl or helm, not {other}");
            2
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

//! The kubelet's part: running a pod's init containers on the host, in the
//! pod's unpacked image, with the real run-migrations, Alembic and database.

use std::fs::File;
use std::process::{Command, Stdio};

use super::cluster::{container_env, log_path, working_dir};
use super::image::find_in_image;
use super::state::Dir;

/// Starts `pod`'s init containers in a detached process (this same
/// executable, `pod-run`), so that `helm` returns while the pod starts.
pub fn start_detached(dir: &Dir, pod: &str) {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().expect("own path");
    let _ = Command::new(exe)
        .args(["pod-run", pod])
        .env("COLONY_SIM_STATE", &dir.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

/// Runs the init containers of `pod` one after the other; their combined
/// output becomes the container log and the exit status `init.exit`.
pub fn run(dir: &Dir, pod_name: &str) -> Result<(), String> {
    let config = dir.config()?;
    let state = dir.read();
    let pod = state
        .pods
        .iter()
        .find(|p| p.name == pod_name)
        .ok_or_else(|| format!("no pod {pod_name}"))?
        .clone();
    let pod_dir = dir.pod_dir(pod_name);
    std::fs::create_dir_all(&pod_dir).map_err(|e| e.to_string())?;
    let mut code = 0;
    for container in pod.spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = container["name"].as_str().unwrap_or("init").to_string();
        let log = File::create(log_path(dir, pod_name, &name)).map_err(|e| e.to_string())?;
        code = run_container(&config, &pod, &container, log);
        if code != 0 {
            break;
        }
    }
    std::fs::write(pod_dir.join("init.exit.partial"), code.to_string())
        .map_err(|e| e.to_string())?;
    std::fs::rename(pod_dir.join("init.exit.partial"), pod_dir.join("init.exit"))
        .map_err(|e| e.to_string())
}

fn run_container(
    config: &super::state::Config,
    pod: &super::state::Pod,
    container: &serde_json::Value,
    log: File,
) -> i32 {
    use std::io::Write;
    let mut log_for_messages = log.try_clone().expect("clone log");
    if let Some(code) = config.faults.init_crash_exit_code {
        let _ = writeln!(
            log_for_messages,
            "simulated crash (injected fault): exit {code}"
        );
        return code;
    }
    let argv: Vec<String> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(container["args"].as_array().into_iter().flatten())
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let (Some(program), Some(rootfs), Some(cwd)) = (
        argv.first(),
        pod.rootfs.as_ref(),
        working_dir(pod, container),
    ) else {
        let _ = writeln!(log_for_messages, "container has no command or image");
        return 128;
    };
    let Some(executable) = find_in_image(rootfs, program) else {
        // What runc reports when the image lacks the command.
        let _ = writeln!(
            log_for_messages,
            "exec: \"{program}\": executable file not found in $PATH: unknown"
        );
        return 128;
    };
    let status = Command::new(executable)
        .args(&argv[1..])
        .current_dir(cwd)
        .env_clear()
        .envs(container_env(config, container))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .status();
    match status {
        Ok(status) => status.code().unwrap_or(137),
        Err(e) => {
            let _ = writeln!(log_for_messages, "failed to start container: {e}");
            128
        }
    }
}

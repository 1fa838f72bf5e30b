//! The container runtime behind the simulated kubelet: the bed's Docker,
//! through its CLI. Pods pull the image Helm was given from the registry,
//! init containers run inside it (host network: the bed's PostgreSQL is the
//! database), and each main container is kept running so that `kubectl
//! exec` is a `docker exec` into it.
//!
//! A main container does not run the app's own command (the fixtures are no
//! servers, and every pod shares the host's ports): like Kubernetes' pause
//! container it runs a static busybox `sleep`, mounted read-only from the
//! bed, with the image's filesystem, environment and working directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where the pause binary is mounted inside every main container.
const PAUSE: &str = "/.colony-sim/busybox";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Runtime {
    /// The docker CLI.
    pub cli: PathBuf,
    /// The bed's daemon (`DOCKER_HOST`).
    pub host: String,
    /// A static busybox on this machine: the main containers' `sleep`.
    pub busybox: PathBuf,
    /// The cluster's state directory, also a label (`colony-sim.state`), so
    /// that `docker ps --filter label=colony-sim.state=DIR` finds its pods.
    pub state: PathBuf,
}

/// What a container is asked to run, as its pod spec says.
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub env: Vec<(String, String)>,
}

impl ContainerSpec {
    /// Reads a container of a pod spec; `env` is already resolved.
    pub fn from_spec(container: &Value, env: Vec<(String, String)>) -> ContainerSpec {
        let strings = |key: &str| -> Vec<String> {
            container[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect()
        };
        ContainerSpec {
            name: container["name"].as_str().unwrap_or("main").to_string(),
            image: container["image"].as_str().unwrap_or_default().to_string(),
            command: strings("command"),
            args: strings("args"),
            working_dir: container["workingDir"].as_str().map(String::from),
            env,
        }
    }
}

impl Runtime {
    pub fn new(host: &str, state_root: &Path) -> Runtime {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("a static busybox (the test bed installs busybox-static)");
        let cli = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("docker"))
            .find(|p| p.is_file())
            .expect("the docker CLI on PATH (the test bed installs docker.io)");
        Runtime {
            cli,
            host: host.to_string(),
            busybox,
            state: state_root.to_path_buf(),
        }
    }

    /// The cluster's short id, from its state directory: every container
    /// of it carries `colony-sim=<id>`, and its name starts with
    /// `colony-sim-<id>-`.
    fn cluster(&self) -> String {
        let digest = Sha256::digest(self.state.as_os_str().as_encoded_bytes());
        digest[..5].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn docker(&self) -> Command {
        let mut command = Command::new(&self.cli);
        command.env("DOCKER_HOST", &self.host).stdin(Stdio::null());
        command
    }

    /// The name of `container` of `pod` in the bed's Docker.
    pub fn container_name(&self, pod: &str, container: &str) -> String {
        format!("colony-sim-{}-{pod}-{container}", self.cluster())
    }

    /// Pulls `image` as the kubelet does; answers the digest reference it
    /// resolved to (kubectl's `imageID`) or the kubelet's pull error.
    ///
    /// The node is this machine, whose Docker built the image: `docker pull`
    /// of a digest it holds would not ask the registry at all. A real node
    /// has only what the registry serves, so the manifest is resolved there
    /// first, as containerd resolves it.
    pub fn pull(&self, image: &str) -> Result<String, String> {
        resolve_in_registry(image)?;
        let output = self
            .docker()
            .args(["pull", image])
            .output()
            .map_err(|e| format!("failed to pull image \"{image}\": {e}"))?;
        if !output.status.success() {
            let why = String::from_utf8_lossy(&output.stderr);
            let why = why
                .trim()
                .trim_start_matches("Error response from daemon: ");
            return Err(format!(
                "failed to pull and unpack image \"{image}\": {why}"
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let digest = stdout
            .lines()
            .find_map(|line| line.strip_prefix("Digest: "))
            .map(str::trim);
        let repository = image.split('@').next().unwrap_or(image);
        let repository = match repository.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name,
            _ => repository,
        };
        Ok(match digest {
            Some(digest) => format!("{repository}@{digest}"),
            None => image.to_string(),
        })
    }

    /// `docker run` arguments shared by init and main containers.
    fn run_args(&self, pod: &str, spec: &ContainerSpec) -> Vec<String> {
        let mut args = vec![
            "run".to_string(),
            "--name".into(),
            self.container_name(pod, &spec.name),
            "--label".into(),
            format!("colony-sim={}", self.cluster()),
            "--label".into(),
            format!("colony-sim.state={}", self.state.display()),
            "--network".into(),
            "host".into(),
        ];
        if let Some(dir) = &spec.working_dir {
            args.extend(["--workdir".into(), dir.clone()]);
        }
        // By name only: the values reach docker through its environment,
        // so no database URL is on a command line.
        for (name, _) in &spec.env {
            args.extend(["--env".into(), name.clone()]);
        }
        args
    }

    /// Runs an init container to its end with its output in `log`; answers
    /// its exit code (docker's own 125–127 when it could not start, with
    /// runc's words in the log, as the kubelet reports them).
    pub fn run_to_end(&self, pod: &str, spec: &ContainerSpec, log: std::fs::File) -> i32 {
        // A restart replaces the crashed container of the same name.
        let _ = self
            .docker()
            .args(["rm", "--force", &self.container_name(pod, &spec.name)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let mut args = self.run_args(pod, spec);
        if let Some((program, rest)) = spec.command.split_first() {
            args.extend(["--entrypoint".into(), program.clone()]);
            args.push(spec.image.clone());
            args.extend(rest.iter().cloned());
        } else {
            args.push(spec.image.clone());
        }
        args.extend(spec.args.iter().cloned());
        let status = self
            .docker()
            .args(&args)
            .envs(spec.env.iter().cloned())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .status();
        status.ok().and_then(|s| s.code()).unwrap_or(137)
    }

    /// Starts a main container, kept running by the pause `sleep`.
    pub fn start(&self, pod: &str, spec: &ContainerSpec) -> Result<(), String> {
        let mut args = self.run_args(pod, spec);
        args.extend([
            "--detach".into(),
            "--volume".into(),
            format!("{}:{PAUSE}:ro", self.busybox.display()),
            "--entrypoint".into(),
            PAUSE.into(),
            spec.image.clone(),
            "sleep".into(),
            "2147483647".into(),
        ]);
        let output = self
            .docker()
            .args(&args)
            .envs(spec.env.iter().cloned())
            .output()
            .map_err(|e| e.to_string())?;
        checked(output)
    }

    /// `kubectl exec` as `docker exec` into the pod's main container; the
    /// command's own exit code, or docker's when it cannot start it (126,
    /// 127), with runc's words on stderr as kubectl prints them (the docker
    /// CLI prints them on stdout).
    pub fn exec(&self, pod: &str, container: &str, command: &[String], stdin: bool) -> i32 {
        use std::io::{BufRead, Write};
        let mut docker = self.docker();
        docker.arg("exec");
        if stdin {
            docker.arg("--interactive").stdin(Stdio::inherit());
        }
        let child = docker
            .arg(self.container_name(pod, container))
            .args(command)
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            return 137;
        };
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = Vec::new();
        while out.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if line.starts_with(b"OCI runtime exec failed") {
                let _ = std::io::stderr().write_all(&line);
            } else {
                let _ = std::io::stdout().write_all(&line);
            }
            line.clear();
        }
        child.wait().ok().and_then(|s| s.code()).unwrap_or(137)
    }

    /// Removes the containers of `pods` in the background (pods deleted by a
    /// rollout): the caller holds the cluster's state lock.
    pub fn remove_pods_detached(&self, pods: &[(String, Vec<String>)]) {
        let names: Vec<String> = pods
            .iter()
            .flat_map(|(pod, containers)| {
                containers.iter().map(move |c| self.container_name(pod, c))
            })
            .collect();
        if names.is_empty() {
            return;
        }
        use std::os::unix::process::CommandExt;
        let _ = self
            .docker()
            .args(["rm", "--force"])
            .args(names)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
    }

    /// Removes every container of this cluster (the test is over).
    pub fn remove_all(&self) {
        let Ok(output) = self
            .docker()
            .args(["ps", "--all", "--quiet", "--filter"])
            .arg(format!("label=colony-sim={}", self.cluster()))
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = self.docker().args(["rm", "--force"]).args(ids).output();
        }
    }
}

/// Asks the image's registry for its manifest; the error containerd
/// reports when it cannot be had. Over HTTPS with the node's CA for a
/// registry it has one for (the bed's certs.d, as a node configured for a
/// private CA has it), else plain HTTP (the bed's other registries).
fn resolve_in_registry(image: &str) -> Result<(), String> {
    let failed = |why: String| format!("failed to pull and unpack image \"{image}\": {why}");
    let (host, rest) = image
        .split_once('/')
        .ok_or_else(|| failed("invalid reference format".into()))?;
    let (name, reference) = match rest.split_once('@') {
        Some((name, digest)) => (name, digest),
        None => rest.rsplit_once(':').unwrap_or((rest, "latest")),
    };
    let ca = std::fs::read(std::path::Path::new(CERTS_D).join(host).join("ca.crt")).ok();
    let scheme = if ca.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{host}/v2/{name}/manifests/{reference}");
    let mut config = ureq::Agent::config_builder().http_status_as_error(false);
    if let Some(pem) = ca {
        let ca = ureq::tls::Certificate::from_pem(&pem)
            .map_err(|e| failed(format!("the node's CA for {host}: {e}")))?;
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let response = agent
        .head(&url)
        .header("Accept", MANIFEST_TYPES)
        .call()
        .map_err(|e| failed(format!("failed to resolve reference \"{image}\": {e}")))?;
    match response.status().as_u16() {
        200 => Ok(()),
        404 => Err(failed(format!(
            "failed to resolve reference \"{image}\": {image}: not found"
        ))),
        status => Err(failed(format!(
            "failed to resolve reference \"{image}\": unexpected status from HEAD request to {url}: {status}"
        ))),
    }
}

/// Where the node's registry CAs are (the bed's dockerd, the node's
/// runtime, reads the same).
const CERTS_D: &str = "/etc/docker/certs.d";

const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

fn checked(output: Output) -> Result<(), String> {
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

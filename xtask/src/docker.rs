//! The Docker Engine API through bollard: connect, build from a tar
//! stream, push with progress. No `docker` CLI in this path.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptionsBuilder, PushImageOptionsBuilder};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use backend_migrations::redact::mask_all;

use crate::registry::Credential;

/// Where the daemon is, for messages.
pub fn daemon_address() -> String {
    mask_all(&std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into()))
}

/// Connects and negotiates the API version (the test bed's daemon speaks
/// 1.41, current ones more); an unreachable daemon is one line with the fix.
pub async fn connect() -> Result<Docker, String> {
    probe().await.map_err(|why| {
        format!(
            "no Docker daemon at {}: {why}. Start it (systemctl start docker) or point DOCKER_HOST at one; `cargo xtask doctor` checks it",
            daemon_address()
        )
    })
}

/// Connect, negotiate and ping; the error is only why (masked), for callers
/// that word the failure themselves (`doctor`).
pub async fn probe() -> Result<Docker, String> {
    let docker = Docker::connect_with_local_defaults().map_err(|e| mask_all(&e.to_string()))?;
    let answered = async {
        let docker = docker.negotiate_version().await?;
        docker.ping().await.map(|_| docker)
    };
    match tokio::time::timeout(Duration::from_secs(10), answered).await {
        Ok(result) => result.map_err(|e| mask_all(&e.to_string())),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

/// What the daemon trusts for registries (`docker info`): the view that
/// `registry::decide_access` decides from, as `docker push` does.
pub async fn registry_view(docker: &Docker) -> Result<crate::registry::DaemonView, String> {
    let info = docker.info().await.map_err(|e| mask_all(&e.to_string()))?;
    let config = info.registry_config.unwrap_or_default();
    Ok(crate::registry::DaemonView {
        index_secure: config
            .index_configs
            .unwrap_or_default()
            .into_iter()
            .map(|(name, index)| (name, index.secure.unwrap_or(true)))
            .collect(),
        insecure_cidrs: config
            .insecure_registry_cidrs
            .unwrap_or_default()
            .iter()
            .filter_map(|cidr| cidr.parse().ok())
            .collect(),
    })
}

/// `registry_view` from synchronous code: None when no daemon answers
/// (callers then assume Docker's defaults, and say so).
pub fn registry_view_blocking() -> Option<crate::registry::DaemonView> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async { registry_view(&probe().await.ok()?).await.ok() })
}

/// One line of build progress.
pub enum BuildEvent<'a> {
    /// A Dockerfile step started, e.g. `Step 2/4 : COPY . /app`.
    Step(&'a str),
    /// Any other output line.
    Output(&'a str),
}

/// A failed build: the step it failed in and the last lines it printed.
#[derive(Debug)]
pub struct BuildFailure {
    pub step: Option<String>,
    pub message: String,
    pub tail: Vec<String>,
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            Some(step) => write!(f, "failed at {step}: {}", self.message)?,
            None => write!(f, "failed: {}", self.message)?,
        }
        if !self.tail.is_empty() {
            write!(f, "\n  last output:\n    {}", self.tail.join("\n    "))?;
        }
        Ok(())
    }
}

pub struct BuildRequest<'a> {
    /// `repo:tag` the image gets.
    pub tag: &'a str,
    /// Relative to the context.
    pub dockerfile: &'a str,
    pub build_args: &'a HashMap<String, String>,
}

/// Builds from a streamed tar; returns the image id.
pub async fn build(
    docker: &Docker,
    request: &BuildRequest<'_>,
    context: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    mut on_event: impl FnMut(BuildEvent<'_>),
) -> Result<String, BuildFailure> {
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(request.dockerfile)
        .t(request.tag)
        .rm(true)
        .forcerm(true)
        .buildargs(request.build_args)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_try_stream(context)));
    let mut step = None;
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut image_id = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(e) => {
                return Err(BuildFailure {
                    step,
                    message: mask_all(&e.to_string()),
                    tail: tail.into(),
                })
            }
        };
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(BuildFailure {
                step,
                message: mask_all(&detail),
                tail: tail.into(),
            });
        }
        if let Some(id) = info.aux.and_then(|aux| aux.id) {
            image_id = Some(id);
        }
        for line in info
            .stream
            .as_deref()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let line = line.trim_end();
            if line.starts_with("Step ") {
                step = Some(line.to_string());
                on_event(BuildEvent::Step(line));
            } else {
                on_event(BuildEvent::Output(line));
            }
            if tail.len() == 10 {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
    }
    image_id.ok_or(BuildFailure {
        step,
        message: "the daemon ended the build without an image id".into(),
        tail: tail.into(),
    })
}

/// Push progress, as far as the daemon's stream (as bollard types it) says:
/// layers finished, and bytes of the layer in flight.
#[derive(Debug, Default, Clone, Copy)]
pub struct PushProgress {
    pub layers_done: usize,
    pub current: u64,
    pub total: u64,
}

/// Pushes `repository:tag` with `credential`; calls `on_progress` as layers move.
pub async fn push(
    docker: &Docker,
    repository: &str,
    tag: &str,
    credential: Option<&Credential>,
    mut on_progress: impl FnMut(PushProgress),
) -> Result<(), String> {
    let credentials = credential.map(|c| to_bollard(c, crate::registry::host_of(repository)));
    let options = PushImageOptionsBuilder::default().tag(tag).build();
    let mut stream = docker.push_image(repository, Some(options), credentials);
    let mut progress = PushProgress::default();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| push_error(repository, &e.to_string()))?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(push_error(repository, &message));
        }
        let status = info.status.unwrap_or_default();
        if status == "Pushed"
            || status == "Layer already exists"
            || status.starts_with("Mounted from")
        {
            progress.layers_done += 1;
        }
        if let Some(detail) = info.progress_detail {
            progress.current = detail.current.unwrap_or(0).max(0) as u64;
            progress.total = detail.total.unwrap_or(0).max(0) as u64;
        }
        on_progress(progress);
    }
    Ok(())
}

fn push_error(repository: &str, message: &str) -> String {
    let message = mask_all(message);
    let hint = if message.contains("no basic auth credentials") || message.contains("unauthorized")
    {
        format!(
            ": log in with `docker login {}` (credentials come from the Docker config)",
            crate::registry::host_of(repository)
        )
    } else if message.contains("connection refused") || message.contains("dial tcp") {
        ": is the registry running? `cargo xtask doctor` checks it".to_string()
    } else {
        String::new()
    };
    format!("pushing {repository} failed: {message}{hint}")
}

fn to_bollard(credential: &Credential, server: &str) -> DockerCredentials {
    match credential {
        Credential::UsernamePassword { username, password } => DockerCredentials {
            username: Some(username.clone()),
            password: Some(password.clone()),
            serveraddress: Some(server.to_string()),
            ..Default::default()
        },
        Credential::IdentityToken(token) => DockerCredentials {
            identitytoken: Some(token.clone()),
            serveraddress: Some(server.to_string()),
            ..Default::default()
        },
    }
}

/// Size, OS and architecture of a local image.
pub struct ImageFacts {
    pub size: u64,
    pub os: String,
    pub architecture: String,
}

pub async fn inspect(docker: &Docker, image: &str) -> Result<Option<ImageFacts>, String> {
    match docker.inspect_image(image).await {
        Ok(found) => Ok(Some(ImageFacts {
            size: found.size.unwrap_or(0).max(0) as u64,
            os: found.os.unwrap_or_default(),
            architecture: found.architecture.unwrap_or_default(),
        })),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(format!("inspecting {image}: {e}")),
    }
}

/// The platform of this machine in Docker's words (`linux/amd64`).
pub fn host_platform() -> (String, String) {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    (std::env::consts::OS.to_string(), architecture.to_string())
}

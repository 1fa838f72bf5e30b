//! The Docker Engine API through bollard: connect, build (the context by
//! a session's file sync on a Unix socket, else as a tar stream), push
//! with progress. No `docker` CLI in this path.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::models::{BuildInfo, BuildInfoAux, ImageId};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, PushImageOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use backend_migrations::redact::mask_all;

use crate::error::with_causes;
use crate::images::builder::Builder;
use crate::images::registry::Credential;

/// Where the daemon is, and who said so.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `unix:///…`, `tcp://host:port`, `https://…`.
    pub host: String,
    /// `DOCKER_HOST`, `docker context NAME`, or the default socket.
    pub source: String,
    /// The directory of `ca.pem`, `cert.pem` and `key.pem` when the daemon
    /// is reached over TLS (`DOCKER_TLS_VERIFY` with `DOCKER_CERT_PATH`, or
    /// the context's TLS files), as the CLI reaches it.
    pub tls: Option<std::path::PathBuf>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (from {}", mask_all(&self.host), self.source)?;
        match &self.tls {
            Some(dir) => write!(f, "; TLS with the certificates in {})", dir.display()),
            None => write!(f, ")"),
        }
    }
}

/// The files of a TLS endpoint, as the docker CLI names them.
const TLS_FILES: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];

const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// The daemon the `docker` CLI would use: `DOCKER_HOST` in any of its forms
/// (with `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH` for TLS), else the current
/// Docker context's endpoint (`DOCKER_CONTEXT` or the config's
/// `currentContext`), else the default socket.
pub fn endpoint() -> Endpoint {
    let config_dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")));
    if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        // The CLI's rule: a non-empty DOCKER_TLS_VERIFY turns TLS on, with
        // the files in DOCKER_CERT_PATH, else in the config directory.
        let verify = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty());
        let tls = verify
            .then(|| std::env::var_os("DOCKER_CERT_PATH").map(std::path::PathBuf::from))
            .map(|path| path.or(config_dir).unwrap_or_default());
        return Endpoint {
            host,
            source: "DOCKER_HOST".into(),
            tls,
        };
    }
    let context = std::env::var("DOCKER_CONTEXT").ok();
    match config_dir.and_then(|dir| context_endpoint(&dir, context.as_deref())) {
        Some(found) => Endpoint {
            host: found.host,
            source: format!("docker context {}", found.name),
            tls: found.tls,
        },
        None => Endpoint {
            host: DEFAULT_SOCKET.into(),
            source: "the default socket".into(),
            tls: None,
        },
    }
}

/// A Docker context's endpoint.
#[derive(Debug, PartialEq)]
pub struct ContextEndpoint {
    pub name: String,
    pub host: String,
    /// `contexts/tls/<id>/docker/` when the context has TLS files.
    pub tls: Option<std::path::PathBuf>,
}

/// The current context's Docker endpoint, as the CLI stores it:
/// `contexts/meta/<sha256 of the name>/meta.json` → `Endpoints.docker.Host`,
/// its TLS files in `contexts/tls/<same id>/docker/`. None for the
/// `default` context or when nothing is configured.
pub fn context_endpoint(
    config_dir: &std::path::Path,
    chosen: Option<&str>,
) -> Option<ContextEndpoint> {
    use sha2::{Digest, Sha256};
    let name = match chosen {
        Some(name) => name.to_string(),
        None => {
            let config = std::fs::read_to_string(config_dir.join("config.json")).ok()?;
            let config: serde_json::Value = serde_json::from_str(&config).ok()?;
            config["currentContext"].as_str()?.to_string()
        }
    };
    if name.is_empty() || name == "default" {
        return None;
    }
    let id = format!("{:x}", Sha256::digest(name.as_bytes()));
    let meta =
        std::fs::read_to_string(config_dir.join("contexts/meta").join(&id).join("meta.json"))
            .ok()?;
    let meta: serde_json::Value = serde_json::from_str(&meta).ok()?;
    let host = meta["Endpoints"]["docker"]["Host"].as_str()?.to_string();
    let tls = config_dir.join("contexts/tls").join(&id).join("docker");
    Some(ContextEndpoint {
        name,
        host,
        tls: tls.is_dir().then_some(tls),
    })
}

/// Connects as the endpoint says: TLS with its three files (a missing one
/// named), else bollard's own reading of the address (`ssh://` runs
/// `ssh HOST docker system dial-stdio`, as the docker CLI does, with the
/// user's ssh config, keys and known hosts).
fn connect_to(endpoint: &Endpoint) -> Result<Docker, String> {
    let Some(dir) = &endpoint.tls else {
        return Docker::connect_with_host(&endpoint.host).map_err(|e| mask_all(&with_causes(&e)));
    };
    if let Some(missing) = TLS_FILES.iter().find(|f| !dir.join(f).is_file()) {
        return Err(format!(
            "{} has no {missing}: a TLS Docker endpoint needs ca.pem, cert.pem and key.pem there (as `docker --tlsverify` does)",
            dir.display()
        ));
    }
    Docker::connect_with_ssl(
        &endpoint.host,
        &dir.join("key.pem"),
        &dir.join("cert.pem"),
        &dir.join("ca.pem"),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| mask_all(&with_causes(&e)))
}

/// Where the daemon is, for messages (masked).
pub fn daemon_address() -> String {
    endpoint().to_string()
}

/// What goes wrong talking to the Docker daemon. Texts are masked (an
/// endpoint or a registry's answer may carry a password).
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no Docker daemon at {address}: {reason}. Start it (systemctl start docker) or point DOCKER_HOST at one; `cargo xtask doctor` checks it")]
    Unreachable { address: String, reason: String },
    /// The daemon answered, but not to `docker info`.
    #[error("the Docker daemon did not answer `docker info`")]
    Info(#[source] bollard::errors::Error),
    #[error("pushing {repository} failed: {message}{hint}")]
    Push {
        repository: String,
        message: String,
        /// What to do about it, when the message says.
        hint: String,
        /// Worth another attempt (`push_is_transient`).
        transient: bool,
    },
    #[error("inspecting {image}")]
    Inspect {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// Connects and negotiates the API version (the test bed's daemon speaks
/// 1.41, current ones more); an unreachable daemon is one line with the fix.
pub async fn connect() -> Result<Docker, DockerError> {
    probe().await.map_err(|reason| DockerError::Unreachable {
        address: daemon_address(),
        reason,
    })
}

/// Connect, negotiate and ping; the error is only why (masked), for callers
/// that word the failure themselves (`doctor`).
pub async fn probe() -> Result<Docker, String> {
    let docker = connect_to(&endpoint())?;
    let answered = async {
        let docker = docker.negotiate_version().await?;
        docker.ping().await.map(|_| docker)
    };
    match tokio::time::timeout(Duration::from_secs(10), answered).await {
        Ok(result) => result.map_err(|e| mask_all(&with_causes(&e))),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

/// What the daemon trusts for registries (`docker info`): the view that
/// `registry::decide_access` decides from, as `docker push` does.
pub async fn registry_view(
    docker: &Docker,
) -> Result<crate::images::registry::DaemonView, DockerError> {
    let info = docker.info().await.map_err(DockerError::Info)?;
    // Only "not found" means no bridge: a daemon that will not say is
    // assumed to have one (the build then says what it lacks).
    let bridge = !matches!(
        docker
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>
            )
            .await,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        })
    );
    let config = info.registry_config.unwrap_or_default();
    let containerd_store = uses_containerd_store(info.driver_status.as_deref().unwrap_or_default());
    Ok(crate::images::registry::DaemonView {
        containerd_store,
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
        bridge,
        session: crate::images::session::unix_socket(&endpoint().host).is_some(),
        buildkit: crate::images::builder::daemon_has_buildkit(
            info.os_type.as_deref().unwrap_or_default(),
            info.server_version.as_deref().unwrap_or_default(),
        ),
        server: info.server_version.as_ref().map(|version| {
            format!(
                "Docker Engine {version} ({})",
                info.os_type.as_deref().unwrap_or("unknown OS")
            )
        }),
        platform: match (info.os_type, info.architecture) {
            (Some(os), Some(architecture)) => {
                Some(crate::images::runner::Platform::new(&os, &architecture))
            }
            _ => None,
        },
    })
}

/// `registry_view` from synchronous code; Err (why, with its causes) when
/// no daemon answers (callers then assume Docker's defaults, and say so).
pub fn registry_view_blocking() -> Result<crate::images::registry::DaemonView, String> {
    crate::runtime::block_on(async { registry_view(&connect().await?).await })
        .map_err(|e| crate::error::with_causes(&e))
}

/// One line of build progress.
pub enum BuildEvent<'a> {
    /// A Dockerfile step started, e.g. `Step 2/4 : COPY . /app` (legacy)
    /// or `#5 [base 2/4] RUN uv sync` (BuildKit).
    Step(&'a str),
    /// Any other output line.
    Output(&'a str),
}

/// A failed build: the step it failed in and the last lines it printed.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct BuildFailure {
    pub step: Option<String>,
    pub message: String,
    pub tail: Vec<String>,
}

impl BuildFailure {
    fn describe(&self) -> String {
        let mut text = match &self.step {
            Some(step) => format!("failed at {step}: {}", self.message),
            None => format!("failed: {}", self.message),
        };
        if !self.tail.is_empty() {
            text.push_str(&format!(
                "\n  last output:\n    {}",
                self.tail.join("\n    ")
            ));
        }
        text
    }
}

pub struct BuildRequest<'a> {
    /// `repo:tag` the image gets.
    pub tag: &'a str,
    /// Relative to the context.
    pub dockerfile: &'a str,
    pub build_args: &'a HashMap<String, String>,
    /// `linux/arm64`; None: the daemon's own.
    pub platform: Option<&'a str>,
    pub builder: Builder,
    /// The stage to build (`docker build --target`); None: the last.
    pub target: Option<&'a str>,
    /// The network of `RUN` steps (`docker build --network`); None: the
    /// daemon's default.
    pub network: Option<&'a str>,
    /// Pushed by the build itself, under `tag` and these names too
    /// (`PUSH_FROM_BUILD`); only a build from a session honours it.
    pub push_as_well: Option<&'a [String]>,
}

/// `docker info`'s `DriverStatus` of a daemon with the containerd image
/// store: `["driver-type", "io.containerd.snapshotter.v1"]`. Pure.
pub fn uses_containerd_store(driver_status: &[Vec<String>]) -> bool {
    driver_status
        .iter()
        .any(|pair| matches!(pair.as_slice(), [key, value] if key == "driver-type" && value.starts_with("io.containerd.snapshotter.")))
}

/// What a build that pushes asks of BuildKit's image exporter (`moby`,
/// the containerd image store's): push every name the image gets, each
/// new layer gzipped at the fastest level (any registry and any puller
/// takes gzip), as this tool's own push does; layers the registry holds
/// (the base image's) are not sent again.
const PUSH_FROM_BUILD: &str =
    r#"[{"Type":"moby","Attrs":{"push":"true","compression":"gzip","compression-level":"1"}}]"#;

/// Builds from a streamed tar; returns the image id.
pub async fn build(
    docker: &Docker,
    request: &BuildRequest<'_>,
    context: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    on_event: impl FnMut(BuildEvent<'_>),
) -> Result<String, BuildFailure> {
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(request.dockerfile)
        .t(request.tag)
        .rm(true)
        .forcerm(true)
        .buildargs(request.build_args)
        .platform(request.platform.unwrap_or_default());
    if let Some(target) = request.target {
        options = options.target(target);
    }
    if let Some(network) = request.network {
        options = options.networkmode(network);
    }
    if request.builder == Builder::BuildKit {
        // The daemon's BuildKit talks back over a session of this client's
        // (registry logins); the context still streams as the body.
        options = options
            .version(BuilderVersion::BuilderBuildKit)
            .session(&session_id(request.tag));
    }
    let stream = docker
        .build_image(
            options.build(),
            None,
            Some(bollard::body_try_stream(context)),
        )
        .map(|item| item.map_err(|e| e.to_string()));
    follow(stream, on_event).await
}

/// A BuildKit build whose context the daemon reads from `session` by
/// file sync (`images/session.rs`): `/build?remote=client-session`, sent
/// here on the Unix socket, because bollard starts a session of its own
/// for any BuildKit build it sends. Returns the image id.
pub async fn build_from_session(
    socket: &std::path::Path,
    request: &BuildRequest<'_>,
    session: &str,
    on_event: impl FnMut(BuildEvent<'_>),
) -> Result<String, BuildFailure> {
    use http_body_util::BodyExt;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        BuildLog::default().failure(&format!("{what}: {e}"))
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| failed("connecting to the Docker daemon", &e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| failed("talking to the Docker daemon", &e))?;
    tokio::spawn(connection);
    let http = hyper::Request::post(format!("/build?{}", session_query(request, session)))
        .header("Host", "docker")
        .header("Content-Type", "application/x-tar")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| failed("the build request", &e))?;
    let response = sender
        .send_request(http)
        .await
        .map_err(|e| failed("the Docker daemon did not take the build", &e))?;
    let status = response.status();
    let body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(String::from))
            .unwrap_or(text);
        return Err(BuildLog::default().failure(&mask_all(&format!("{status}: {message}"))));
    }
    follow(build_answers(body), on_event).await
}

/// `/build`'s query for a build from a session, as the docker CLI sends it.
fn session_query(request: &BuildRequest<'_>, session: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let build_args = serde_json::to_string(request.build_args).unwrap_or_else(|_| "{}".into());
    let mut pairs = vec![
        ("t", request.tag.to_string()),
        ("dockerfile", request.dockerfile.to_string()),
        ("buildargs", build_args),
        ("rm", "1".into()),
        ("forcerm", "1".into()),
        ("version", "2".into()),
        ("remote", "client-session".into()),
        ("session", session.to_string()),
    ];
    pairs.extend(request.platform.map(|p| ("platform", p.to_string())));
    pairs.extend(request.target.map(|t| ("target", t.to_string())));
    pairs.extend(request.network.map(|n| ("networkmode", n.to_string())));
    if let Some(names) = request.push_as_well {
        pairs.extend(names.iter().map(|name| ("t", name.clone())));
        pairs.push(("outputs", PUSH_FROM_BUILD.into()));
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The daemon's build answers: JSON objects one after another, split
/// anywhere by the chunks that carry them.
fn build_answers(
    body: hyper::body::Incoming,
) -> impl Stream<Item = Result<BuildInfo, String>> + Unpin {
    use http_body_util::BodyExt;
    let start = (body, Vec::new(), VecDeque::new(), false);
    Box::pin(futures_util::stream::unfold(
        start,
        |(mut body, mut buffer, mut ready, mut ended)| async move {
            loop {
                if let Some(info) = ready.pop_front() {
                    return Some((info, (body, buffer, ready, ended)));
                }
                if ended {
                    return None;
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            buffer.extend_from_slice(&data);
                            parse_answers(&mut buffer, &mut ready);
                        }
                    }
                    Some(Err(e)) => {
                        ready.push_back(Err(e.to_string()));
                        ended = true;
                    }
                    None => ended = true,
                }
            }
        },
    ))
}

/// Moves every whole answer at the front of `buffer` into `ready`.
fn parse_answers(buffer: &mut Vec<u8>, ready: &mut VecDeque<Result<BuildInfo, String>>) {
    let mut answers = serde_json::Deserializer::from_slice(buffer).into_iter::<BuildInfo>();
    let mut consumed = 0;
    loop {
        match answers.next() {
            Some(Ok(info)) => {
                ready.push_back(Ok(info));
                consumed = answers.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => {
                ready.push_back(Err(format!("the daemon's build answer: {e}")));
                consumed = buffer.len();
                break;
            }
            None => {
                consumed = answers.byte_offset();
                break;
            }
        }
    }
    buffer.drain(..consumed);
}

/// Follows a build's answers: its progress to `on_event`, its end to the
/// image id or the failure (with the failing step and its last lines).
async fn follow(
    mut stream: impl Stream<Item = Result<BuildInfo, String>> + Unpin,
    mut on_event: impl FnMut(BuildEvent<'_>),
) -> Result<String, BuildFailure> {
    let mut log = BuildLog::default();
    let mut image_id = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            // The daemon sent the image's id and then dropped the stream
            // ("bytes remaining on stream"): the build is done, as the
            // docker CLI would count it.
            Err(_) if image_id.is_some() => break,
            Err(e) => return Err(log.failure(&e)),
        };
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(log.failure(&detail));
        }
        match info.aux {
            Some(BuildInfoAux::Default(ImageId { id: Some(id) })) => image_id = Some(id),
            Some(BuildInfoAux::BuildKit(status)) => log.buildkit(&status, &mut on_event),
            _ => {}
        }
        log.legacy(info.stream.as_deref().unwrap_or_default(), &mut on_event);
    }
    image_id.ok_or_else(|| log.failure("the daemon ended the build without an image id"))
}

/// A BuildKit build whose Dockerfile mounts build secrets
/// (`RUN --mount=type=secret`). The `/build` endpoint's session, which
/// `build` uses, offers BuildKit no secrets service; the daemon's BuildKit
/// gRPC API (bollard's Moby driver) does: the session serves each secret's
/// bytes when a `RUN` mounts it, so they reach no layer, no log and no
/// image config. That API takes the context whole (held in memory) and
/// reports no step progress, so only images with secrets on a daemon not
/// reached by its Unix socket are built so (`images/session.rs` serves
/// secrets on a socket).
pub async fn build_with_secrets(
    docker: &Docker,
    request: &BuildRequest<'_>,
    context: Bytes,
    secrets: &std::collections::BTreeMap<String, crate::config::SecretSource>,
) -> Result<(), BuildFailure> {
    use bollard::grpc::build::{
        ImageBuildFrontendOptions, ImageBuildLoadInput, ImageBuildNetworkMode,
        SecretSource as Source,
    };
    use bollard::grpc::driver::{moby::Moby, Build};
    let mut options =
        ImageBuildFrontendOptions::builder().dockerfile(std::path::Path::new(request.dockerfile));
    if let Some(target) = request.target {
        options = options.target(target);
    }
    for (key, value) in request.build_args {
        options = options.buildarg(key, value);
    }
    match request.network {
        Some("host") => options = options.force_network_mode(&ImageBuildNetworkMode::Host),
        Some("none") => options = options.force_network_mode(&ImageBuildNetworkMode::None),
        _ => {}
    }
    for (id, source) in secrets {
        let source = match source {
            crate::config::SecretSource::Env(name) => Source::Env(name.clone()),
            crate::config::SecretSource::File(path) => Source::File(path.clone()),
        };
        options = options.set_secret(id, &source);
    }
    let (docker, tag, options) = (docker.clone(), request.tag.to_string(), options.build());
    // The driver's future is not Send: it runs on a thread of its own.
    let solved = tokio::task::spawn_blocking(move || {
        crate::runtime::block_on(Moby::new(&docker).docker_build(
            &tag,
            options,
            ImageBuildLoadInput::Upload(context),
            None,
            None,
        ))
        .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|result| result);
    // The gRPC status names the failing step; no output lines are kept.
    solved.map_err(|e| BuildLog::default().failure(&mask_all(&e.to_string())))
}

/// A session id of this build's own (BuildKit keys its session by it).
pub fn session_id(tag: &str) -> String {
    use sha2::{Digest, Sha256};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{tag} {} {nanos}", std::process::id());
    let hash = format!("{:x}", Sha256::digest(seed.as_bytes()));
    format!("colony-deploy-{}", &hash[..24])
}

/// What a build printed, turned into steps and output lines as the docker
/// CLI's plain progress shows them, with what a failure must name: its step
/// and that step's last lines.
#[derive(Default)]
struct BuildLog {
    /// The step running (legacy: `Step 2/4 : …`) or failed (BuildKit).
    step: Option<String>,
    tail: VecDeque<String>,
    /// BuildKit's steps (vertices) by digest.
    vertices: HashMap<String, Vertex>,
}

struct Vertex {
    /// Numbered in the order first seen, as `docker build --progress=plain`.
    number: usize,
    name: String,
    /// Its start (or its cache hit) was said.
    said: bool,
    tail: VecDeque<String>,
}

const TAIL_LINES: usize = 10;

fn keep(tail: &mut VecDeque<String>, line: &str) {
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line.to_string());
}

impl BuildLog {
    /// The legacy builder's text stream.
    fn legacy(&mut self, text: &str, on_event: &mut impl FnMut(BuildEvent<'_>)) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let line = line.trim_end();
            if line.starts_with("Step ") {
                self.step = Some(line.to_string());
                on_event(BuildEvent::Step(line));
            } else {
                on_event(BuildEvent::Output(line));
            }
            keep(&mut self.tail, line);
        }
    }

    /// One BuildKit status message: steps that started (`#5 [2/4] RUN …`,
    /// `… CACHED`), their output (`#5 …`), and the step that failed.
    fn buildkit(
        &mut self,
        status: &bollard::moby::buildkit::v1::StatusResponse,
        on_event: &mut impl FnMut(BuildEvent<'_>),
    ) {
        for vertex in &status.vertexes {
            let number = self.vertices.len() + 1;
            let known = self
                .vertices
                .entry(vertex.digest.clone())
                .or_insert_with(|| Vertex {
                    number,
                    name: mask_all(&vertex.name),
                    said: false,
                    tail: VecDeque::new(),
                });
            if !known.said && (vertex.started.is_some() || vertex.cached) {
                known.said = true;
                let cached = if vertex.cached { " CACHED" } else { "" };
                on_event(BuildEvent::Step(&format!(
                    "#{} {}{cached}",
                    known.number, known.name
                )));
            }
        }
        for entry in &status.logs {
            let Some(vertex) = self.vertices.get_mut(&entry.vertex) else {
                continue;
            };
            for line in String::from_utf8_lossy(&entry.msg).lines() {
                let line = mask_all(line.trim_end());
                if line.is_empty() {
                    continue;
                }
                on_event(BuildEvent::Output(&format!("#{} {line}", vertex.number)));
                keep(&mut vertex.tail, &line);
            }
        }
        // The step that failed, with the lines it printed.
        for vertex in status.vertexes.iter().filter(|v| !v.error.is_empty()) {
            if let Some(known) = self.vertices.get(&vertex.digest) {
                self.step = Some(format!("#{} {}", known.number, known.name));
                self.tail = known.tail.clone();
            }
        }
    }

    fn failure(&self, message: &str) -> BuildFailure {
        // bollard's wrapping of what the daemon said adds nothing.
        let message = message
            .strip_prefix("Docker stream error: ")
            .unwrap_or(message);
        BuildFailure {
            step: self.step.clone(),
            message: mask_all(message),
            tail: self.tail.iter().cloned().collect(),
        }
    }
}

/// Push progress, as far as the daemon's stream (as bollard types it) says:
/// layers finished, and bytes of the layer in flight.
#[derive(Debug, Default, Clone, Copy)]
pub struct PushProgress {
    pub layers_done: usize,
    pub current: u64,
    pub total: u64,
    /// The uncompressed bytes of every layer the daemon has started to
    /// send so far (those the registry lacks and it could not mount).
    pub sending: u64,
}

/// Pushes `repository:tag` with `credential`; calls `on_progress` as layers move.
pub async fn push(
    docker: &Docker,
    repository: &str,
    tag: &str,
    credential: Option<&Credential>,
    mut on_progress: impl FnMut(PushProgress),
) -> Result<(), DockerError> {
    let credentials =
        credential.map(|c| to_bollard(c, crate::images::registry::host_of(repository)));
    let options = PushImageOptionsBuilder::default().tag(tag).build();
    let mut stream = docker.push_image(repository, Some(options), credentials);
    let mut progress = PushProgress::default();
    // The stream (as bollard types it) does not name the layer of an
    // event; a layer's size stands for it (two layers of the very same
    // size count once: the sum errs low).
    let mut sending = std::collections::BTreeSet::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| push_error(repository, &e.to_string()))?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(push_error(repository, &message));
        }
        let status = info.status.unwrap_or_default();
        if let Some(total) = info
            .progress_detail
            .as_ref()
            .and_then(|d| d.total)
            .filter(|_| status == "Pushing")
        {
            if sending.insert(total.max(0) as u64) {
                progress.sending = sending.iter().sum();
            }
        }
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

/// Pulls `reference` (`repo:tag` or `repo@sha256:…`) unless the daemon
/// has it, with `credential` for its registry, as `docker pull` would.
pub async fn ensure_image(
    docker: &Docker,
    reference: &str,
    credential: Option<&Credential>,
) -> Result<(), String> {
    if inspect(docker, reference)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let credentials =
        credential.map(|c| to_bollard(c, crate::images::registry::host_of(reference)));
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
        .from_image(reference)
        .build();
    let mut stream = docker.create_image(Some(options), None, credentials);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| mask_all(&format!("pulling {reference} failed: {e}")))?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(mask_all(&format!("pulling {reference} failed: {message}")));
        }
    }
    Ok(())
}

/// How many times a push is tried in all, and how long to wait before
/// each retry: the docker CLI retries a layer upload 5 times, 5 s apart and
/// growing; the whole push is retried here (the daemon then skips what the
/// registry already has), sooner, since a registry's race clears in moments.
pub const PUSH_ATTEMPTS: u32 = 4;

/// The pause before attempt `attempt` (2, 3, …): 1 s, 2 s, 4 s.
pub fn push_retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1 << attempt.saturating_sub(2).min(5))
}

/// Whether a failed push may succeed if tried again, from what the daemon
/// relayed (pure). Transient: a blob or manifest the registry does not know
/// (yet), or a digest it could not read, which a registry answers while
/// another push of the same image links the same blobs (the filesystem
/// driver rewrites a blob's link file in place, and a manifest verified in
/// that moment reads it empty); any 5xx and 429; a connection that broke.
/// Permanent: a refusal (denied, unauthorized, an invalid name or tag, a
/// manifest the registry rejects), which would be answered the same again.
/// A message that says neither is not retried.
pub fn push_is_transient(message: &str) -> bool {
    const PERMANENT: &[&str] = &[
        "denied",
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "forbidden",
        "name invalid",
        "name unknown",
        "tag invalid",
        "manifest invalid",
        "does not exist locally",
        "an image does not exist",
    ];
    const TRANSIENT: &[&str] = &[
        "blob unknown",
        "digest invalid",
        "http status: 5",
        "internal server error",
        "bad gateway",
        "service unavailable",
        "gateway timeout",
        "toomanyrequests",
        "too many requests",
        "connection reset",
        "broken pipe",
        "unexpected eof",
        "i/o timeout",
        "tls handshake timeout",
        "timeout awaiting response headers",
        "use of closed network connection",
    ];
    let message = message.to_lowercase();
    !PERMANENT.iter().any(|m| message.contains(m))
        && (TRANSIENT.iter().any(|m| message.contains(m)) || message.trim_end().ends_with(": eof"))
}

/// `push`, tried again after a transient failure (`push_is_transient`),
/// at most `PUSH_ATTEMPTS` times in all; `on_retry` is told each retry
/// (the attempt about to start, the pause, the failure) before the pause.
pub async fn push_with_retries(
    docker: &Docker,
    repository: &str,
    tag: &str,
    credential: Option<&Credential>,
    mut on_progress: impl FnMut(PushProgress),
    mut on_retry: impl FnMut(u32, Duration, &DockerError),
) -> Result<(), DockerError> {
    let mut attempt = 1;
    loop {
        match push(docker, repository, tag, credential, &mut on_progress).await {
            Err(
                error @ DockerError::Push {
                    transient: true, ..
                },
            ) if attempt < PUSH_ATTEMPTS => {
                attempt += 1;
                let pause = push_retry_delay(attempt);
                on_retry(attempt, pause, &error);
                tokio::time::sleep(pause).await;
            }
            done => return done,
        }
    }
}

fn push_error(repository: &str, message: &str) -> DockerError {
    let message = mask_all(message);
    let transient = push_is_transient(&message);
    let hint = if message.contains("no basic auth credentials") || message.contains("unauthorized")
    {
        format!(
            ": log in with `docker login {}` (credentials come from the Docker config)",
            crate::images::registry::host_of(repository)
        )
    } else if message.contains("denied") {
        format!(
            ": the registry refused it; check that the account from `docker login {}` may push to this repository",
            crate::images::registry::host_of(repository)
        )
    } else if message.contains("connection refused") || message.contains("dial tcp") {
        ": is the registry running? `cargo xtask doctor` checks it".to_string()
    } else {
        String::new()
    };
    DockerError::Push {
        repository: repository.to_string(),
        message,
        hint,
        transient,
    }
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

/// Size, OS, architecture, id and layers of a local image.
pub struct InspectedImage {
    pub size: u64,
    pub os: String,
    pub architecture: String,
    /// `sha256:…` of its config: the image id.
    pub id: String,
    /// `sha256:…` of each layer's uncompressed tar, bottom first.
    pub diff_ids: Vec<String>,
}

pub async fn inspect(docker: &Docker, image: &str) -> Result<Option<InspectedImage>, DockerError> {
    match docker.inspect_image(image).await {
        Ok(found) => Ok(Some(InspectedImage {
            size: found.size.unwrap_or(0).max(0) as u64,
            os: found.os.unwrap_or_default(),
            architecture: found.architecture.unwrap_or_default(),
            id: found.id.unwrap_or_default(),
            diff_ids: found.root_fs.and_then(|r| r.layers).unwrap_or_default(),
        })),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(DockerError::Inspect {
            image: image.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_containerd_image_store_is_told_by_the_storage_driver_s_type() {
        let status = |pairs: &[[&str; 2]]| -> Vec<Vec<String>> {
            pairs
                .iter()
                .map(|p| p.iter().map(|s| s.to_string()).collect())
                .collect()
        };
        // Docker 26 with `features.containerd-snapshotter`.
        assert!(uses_containerd_store(&status(&[[
            "driver-type",
            "io.containerd.snapshotter.v1"
        ]])));
        // Docker 20.10 on overlay2, and a daemon that says nothing.
        assert!(!uses_containerd_store(&status(&[
            ["Backing Filesystem", "extfs"],
            ["Supports d_type", "true"],
        ])));
        assert!(!uses_containerd_store(&[]));
    }

    #[test]
    fn a_build_that_pushes_names_every_tag_and_asks_the_exporter_to_push() {
        let args = HashMap::new();
        let latest = vec!["r/app:latest".to_string()];
        let mut request = BuildRequest {
            tag: "r/app:v1",
            dockerfile: "Dockerfile",
            build_args: &args,
            platform: None,
            builder: Builder::BuildKit,
            target: None,
            network: None,
            push_as_well: None,
        };
        let stored = session_query(&request, "s");
        assert!(!stored.contains("outputs="), "{stored}");
        request.push_as_well = Some(&latest);
        let pushed = session_query(&request, "s");
        assert!(pushed.contains("t=r%2Fapp%3Av1&"), "{pushed}");
        assert!(pushed.contains("t=r%2Fapp%3Alatest&"), "{pushed}");
        let outputs = pushed.split("outputs=").nth(1).unwrap();
        let outputs = percent_encoding::percent_decode_str(outputs)
            .decode_utf8()
            .unwrap();
        let outputs: serde_json::Value = serde_json::from_str(&outputs).unwrap();
        assert_eq!(outputs[0]["Type"], "moby");
        assert_eq!(outputs[0]["Attrs"]["push"], "true");
        assert_eq!(outputs[0]["Attrs"]["compression"], "gzip");
        assert_eq!(outputs[0]["Attrs"]["compression-level"], "1");
    }

    #[test]
    fn a_registry_racing_another_push_or_failing_for_a_moment_is_retried() {
        for transient in [
            // What the daemon relayed in the suite's failed run: the manifest
            // verified while another push rewrote its blobs' links.
            "Docker stream error: errors:\ndigest invalid\nmanifest blob unknown: blob unknown to registry\n",
            "received unexpected HTTP status: 500 Internal Server Error",
            "received unexpected HTTP status: 503 Service Unavailable",
            "toomanyrequests: rate limit exceeded",
            "Put \"http://127.0.0.1:5000/v2/x/blobs/uploads/1\": read tcp 127.0.0.1:1->127.0.0.1:5000: read: connection reset by peer",
            "Patch \"http://127.0.0.1:5000/v2/x/blobs/uploads/1\": EOF",
            "net/http: TLS handshake timeout",
        ] {
            assert!(push_is_transient(transient), "{transient}");
        }
    }

    #[test]
    fn a_refusal_is_not_retried_nor_is_what_nobody_recognises() {
        for permanent in [
            "denied: requested access to the resource is denied",
            "unauthorized: authentication required",
            "no basic auth credentials",
            "errors:\nname invalid: invalid repository name\n",
            "tag invalid: manifest tag did not match URI",
            "An image does not exist locally with the tag: 127.0.0.1:5000/x",
            // A refusal wins over a transient word beside it.
            "denied: blob unknown to registry",
            "something nobody has seen before",
            "dial tcp 127.0.0.1:1: connect: connection refused",
        ] {
            assert!(!push_is_transient(permanent), "{permanent}");
        }
    }

    #[test]
    fn retries_wait_longer_each_time() {
        let pauses: Vec<u64> = (2..=PUSH_ATTEMPTS)
            .map(|a| push_retry_delay(a).as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4]);
    }
}

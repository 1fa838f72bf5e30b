//! A BuildKit session served by this process, as the docker CLI serves
//! one: the daemon's `/session` endpoint is upgraded to HTTP/2 and the
//! daemon calls back into it. It serves the build context by file sync
//! (`FileSync.DiffCopy`): BuildKit asks for the stats, then for the files
//! it lacks, and writes them straight into its snapshot. The tar upload
//! (`/build` with a body) costs the daemon a download, an unpack and a
//! copy of the same bytes; this does not. BuildKit also keeps the context
//! of the last build with the same shared key, so an unchanged file is not
//! sent again.
//!
//! It also serves the build's secrets (`RUN --mount=type=secret`).
//!
//! Only a daemon on a Unix socket is reached this way (the connection is
//! upgraded here, outside bollard, which keeps its session's services
//! closed); others get the tar upload.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bollard_buildkit_proto::fsutil::types::packet::PacketType;
use bollard_buildkit_proto::fsutil::types::Packet;
use bollard_buildkit_proto::health::health_check_response::ServingStatus;
use bollard_buildkit_proto::health::health_server::{Health, HealthServer};
use bollard_buildkit_proto::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bollard_buildkit_proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard_buildkit_proto::moby::filesync::v1::file_sync_server::{FileSync, FileSyncServer};
use bollard_buildkit_proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::config::SecretSource;
use crate::images::filesync::{self, Content, Tree};
use crate::images::registry::{self, Credential};

/// Bytes of a file in one `DATA` packet.
const CHUNK: usize = 64 * 1024;
/// Packets queued for the daemon before the reader waits.
const QUEUE: usize = 16;

/// The socket of a `unix://` Docker host; None for any other.
pub fn unix_socket(host: &str) -> Option<PathBuf> {
    host.strip_prefix("unix://").map(PathBuf::from)
}

/// A session the daemon can call back into while it lasts; dropping it
/// closes the connection.
pub struct Session {
    pub id: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// How long the daemon may take to answer `/session`'s upgrade.
const UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens session `id` on the daemon at `socket`, serving `tree` as both
/// of the build's local sources (`context` and `dockerfile`: the
/// Dockerfile's path is relative to the context). `shared_key` names the
/// context across builds, so BuildKit sends only what changed.
pub async fn open(
    socket: &Path,
    id: &str,
    shared_key: &str,
    tree: Tree,
    secrets: BTreeMap<String, SecretSource>,
    sent: Arc<AtomicU64>,
) -> Result<Session> {
    let mut stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {} for a build session", socket.display()))?;
    let mut methods = vec![
        "/grpc.health.v1.Health/Check",
        "/moby.filesync.v1.FileSync/DiffCopy",
        "/moby.filesync.v1.Auth/Credentials",
    ];
    if !secrets.is_empty() {
        methods.push("/moby.buildkit.secrets.v1.Secrets/GetSecret");
    }
    let mut head = format!(
        "POST /session HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
         Content-Length: 0\r\nX-Docker-Expose-Session-Uuid: {id}\r\n\
         X-Docker-Expose-Session-Name: colony-deploy\r\n\
         X-Docker-Expose-Session-Sharedkey: {shared_key}\r\n"
    );
    for method in methods {
        head.push_str(&format!(
            "X-Docker-Expose-Session-Grpc-Method: {method}\r\n"
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // A daemon answers an upgrade at once or never: one that hangs must
    // not hang the build, which can still go as a tar.
    let answer = tokio::time::timeout(UPGRADE_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the Docker daemon did not answer the build session's upgrade in {} s",
                UPGRADE_TIMEOUT.as_secs()
            )
        })??;
    if !answer.starts_with("HTTP/1.1 101") && !answer.starts_with("HTTP/1.0 101") {
        let status = answer.lines().next().unwrap_or_default();
        bail!("the Docker daemon refused a build session: {status}");
    }
    let sync = FileSyncServer::new(Sync {
        tree: Arc::new(tree),
        sent,
    });
    let server = tonic::transport::Server::builder()
        .add_service(HealthServer::new(Healthy))
        .add_service(sync)
        .add_service(SecretsServer::new(BuildSecrets { secrets }))
        .add_service(AuthServer::new(RegistryLogins))
        .serve_with_incoming(futures_util::stream::iter([Ok::<_, std::io::Error>(
            stream,
        )]));
    let server = tokio::spawn(async move {
        // The daemon hangs up when the build is over; nothing to report.
        let _ = server.await;
    });
    Ok(Session {
        id: id.to_string(),
        server,
    })
}

/// The response head of the upgrade, read byte by byte: what follows it
/// is the daemon's HTTP/2 and must stay in the stream.
async fn read_head(stream: &mut UnixStream) -> Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            bail!("the Docker daemon's answer to /session has no end of headers");
        }
        let byte = stream
            .read_u8()
            .await
            .context("the Docker daemon closed the build session")?;
        head.push(byte);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A name for this context that stays the same across builds and
/// machines' runs of this tool, as the docker CLI derives one.
pub fn shared_key(context: &Path) -> String {
    use sha2::{Digest, Sha256};
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let seed = format!("colony-deploy {host} {}", context.display());
    format!("{:x}", Sha256::digest(seed.as_bytes()))
}

struct Healthy;

#[tonic::async_trait]
impl Health for Healthy {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    async fn list(
        &self,
        _: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("list"))
    }

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

/// Build secrets (`RUN --mount=type=secret`), read when BuildKit asks
/// for one: they reach the `RUN` that mounts them and nothing else (no
/// layer, no log, no image config). Only the ids deploy.toml names.
struct BuildSecrets {
    secrets: BTreeMap<String, SecretSource>,
}

#[tonic::async_trait]
impl Secrets for BuildSecrets {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = &request.get_ref().id;
        let value = match self.secrets.get(id) {
            Some(SecretSource::Env(name)) => std::env::var_os(name)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| format!("{name} is not set")),
            Some(SecretSource::File(path)) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("{} cannot be read: {e}", path.display())),
            None => Err("deploy.toml's images.<component>.secrets does not name it".into()),
        };
        value
            .map(|data| Response::new(GetSecretResponse { data }))
            .map_err(|why| Status::not_found(format!("secret {id}: {why}")))
    }
}

/// Registry logins, as the docker CLI's session serves them: BuildKit asks
/// for a registry's when it pulls a base image from it or pushes there
/// (`images::pushes_from_build`), and gets this machine's Docker config
/// login for that host (a credential helper's included), or none. Only
/// the daemon it is sent to sees it. BuildKit fetches registry tokens
/// itself with it, so the token methods are not offered.
struct RegistryLogins;

#[tonic::async_trait]
impl Auth for RegistryLogins {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        let login = tokio::task::spawn_blocking(move || registry::credential_for(&host))
            .await
            .map_err(|e| Status::internal(format!("reading the Docker config: {e}")))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(match login {
            Some(Credential::UsernamePassword { username, password }) => CredentialsResponse {
                username,
                secret: password,
            },
            Some(Credential::IdentityToken(token)) => CredentialsResponse {
                username: String::new(),
                secret: token,
            },
            None => CredentialsResponse::default(),
        }))
    }

    async fn fetch_token(
        &self,
        _: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented(
            "BuildKit fetches tokens with the credentials",
        ))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }
}

struct Sync {
    tree: Arc<Tree>,
    /// Bytes of files sent, for the progress line.
    sent: Arc<AtomicU64>,
}

type Packets = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

#[tonic::async_trait]
impl FileSync for Sync {
    type DiffCopyStream = Packets;
    type TarStreamStream = Packets;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<Packets>, Status> {
        let metadata = request.metadata().clone();
        let asked = filesync::Request::from_metadata(|key| {
            metadata
                .get_all(key)
                .iter()
                .filter_map(|v| v.to_str().ok().map(String::from))
                .collect()
        });
        if !matches!(asked.dir_name.as_str(), "context" | "dockerfile") {
            return Err(Status::not_found(format!(
                "no access allowed to dir {:?}",
                asked.dir_name
            )));
        }
        let entries = self.tree.select(&asked).map_err(Status::invalid_argument)?;
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(send(
            entries,
            request.into_inner(),
            sender,
            self.sent.clone(),
        ));
        Ok(Response::new(Box::pin(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|p| (p, receiver)) },
        ))))
    }

    async fn tar_stream(&self, _: Request<Streaming<Packet>>) -> Result<Response<Packets>, Status> {
        Err(Status::unimplemented(
            "tarstream: this session serves diffcopy",
        ))
    }
}

fn packet(kind: PacketType) -> Packet {
    Packet {
        r#type: kind as i32,
        ..Packet::default()
    }
}

/// fsutil's sender: every stat, an empty stat, then each requested file's
/// bytes (ended by an empty `DATA`), until the receiver's `FIN`.
async fn send(
    entries: Vec<filesync::Entry>,
    mut incoming: Streaming<Packet>,
    out: mpsc::Sender<Result<Packet, Status>>,
    sent: Arc<AtomicU64>,
) {
    let mut files: HashMap<u32, Content> = HashMap::new();
    for (id, entry) in entries.into_iter().enumerate() {
        let id = id as u32;
        if filesync::requestable(&entry.stat) {
            files.insert(id, entry.content);
        }
        let stat = Packet {
            stat: Some(entry.stat),
            ..packet(PacketType::PacketStat)
        };
        if out.send(Ok(stat)).await.is_err() {
            return;
        }
    }
    if out.send(Ok(packet(PacketType::PacketStat))).await.is_err() {
        return;
    }
    while let Ok(Some(asked)) = incoming.message().await {
        match asked.r#type() {
            PacketType::PacketReq => {
                let Some(content) = files.remove(&asked.id) else {
                    let _ = out
                        .send(Err(Status::invalid_argument(format!(
                            "invalid file id {}",
                            asked.id
                        ))))
                        .await;
                    return;
                };
                let (sender, sent) = (out.clone(), sent.clone());
                let sent = tokio::task::spawn_blocking(move || {
                    send_file(asked.id, &content, &sender, &sent)
                })
                .await
                .map_err(|e| anyhow!("{e}"))
                .and_then(|r| r);
                if let Err(e) = sent {
                    let _ = out.send(Err(Status::internal(format!("{e:#}")))).await;
                    return;
                }
            }
            PacketType::PacketFin => {
                let _ = out.send(Ok(packet(PacketType::PacketFin))).await;
                return;
            }
            PacketType::PacketErr => return,
            _ => {}
        }
    }
}

/// One file's bytes in `DATA` packets, then the empty one that ends it.
fn send_file(
    id: u32,
    content: &Content,
    out: &mpsc::Sender<Result<Packet, Status>>,
    sent: &AtomicU64,
) -> Result<()> {
    let data = |data: Vec<u8>| Packet {
        id,
        data,
        ..packet(PacketType::PacketData)
    };
    let closed = |_| anyhow!("the Docker daemon stopped reading the build context");
    match content {
        Content::Disk(path) => {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("reading {} for the build", path.display()))?;
            loop {
                let mut chunk = vec![0; CHUNK];
                let read = file
                    .read(&mut chunk)
                    .with_context(|| format!("reading {} for the build", path.display()))?;
                if read == 0 {
                    break;
                }
                chunk.truncate(read);
                sent.fetch_add(read as u64, Ordering::Relaxed);
                out.blocking_send(Ok(data(chunk))).map_err(closed)?;
            }
        }
        Content::Bytes(bytes) => {
            for chunk in bytes.chunks(CHUNK) {
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                out.blocking_send(Ok(data(chunk.to_vec())))
                    .map_err(closed)?;
            }
        }
        Content::None => {}
    }
    out.blocking_send(Ok(data(Vec::new()))).map_err(closed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon that takes the connection and never answers the upgrade:
    /// the session is refused after `UPGRADE_TIMEOUT` (so the build goes
    /// as a tar) instead of hanging the build.
    #[tokio::test(start_paused = true)]
    async fn a_daemon_that_never_answers_the_upgrade_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let silent = tokio::spawn(async move {
            let (connection, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(connection);
        });
        let sent = Arc::new(AtomicU64::new(0));
        let opened = open(&socket, "id", "key", Tree::default(), BTreeMap::new(), sent).await;
        let error = format!(
            "{:#}",
            opened.err().expect("no session from a silent daemon")
        );
        assert!(
            error.contains("did not answer the build session's upgrade in 10 s"),
            "{error}"
        );
        silent.abort();
    }
}

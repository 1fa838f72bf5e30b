//! A throwaway PostgreSQL for rehearsals, and one-shot containers of the
//! backend image beside it. The server is either a container of a
//! PostgreSQL image (the official image's `POSTGRES_*` contract) with no
//! network of its own, whose network namespace the backend's containers
//! join, so they reach it at 127.0.0.1 on any Docker (a remote daemon, a
//! daemon without a bridge); or this machine's initdb/pg_ctl on a Unix
//! socket (`local`), whose directory is mounted into the backend's
//! containers (no network at all). Containers through the Docker Engine
//! API; everything is removed when the `Scratch` is, even on an interrupt.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::local::{self, Binaries, LocalServer};
use super::observe::LogLine;

/// What every rehearsal container carries, so leftovers can be found.
pub const LABEL: &str = "colony-deploy.rehearsal";
const USER: &str = "rehearsal";
const DATABASE: &str = "rehearsal";
/// Where the backup is copied in the database's container.
const DUMP_DIR: &str = "/tmp";
const DUMP_NAME: &str = "rehearsal.dump";

/// Which PostgreSQL a rehearsal starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// A container of this image.
    Container(String),
    /// This machine's binaries.
    Local(Binaries),
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::Container(image) => write!(f, "{image}"),
            Engine::Local(binaries) => write!(f, "{binaries}"),
        }
    }
}

/// Where the throwaway server runs.
enum Server {
    Container { id: String, password: String },
    Local(LocalServer),
}

/// A running throwaway PostgreSQL.
pub struct Scratch {
    docker: Docker,
    /// The server's name (its container's, or its directory's), also the
    /// label of every container of this rehearsal.
    pub name: String,
    server: Server,
    /// Its containers (the database's, the one-shot ones beside it), to
    /// remove with it.
    others: std::sync::Mutex<Vec<String>>,
}

/// Creates and starts the database's container, its data on a tmpfs, with
/// a fresh password; a container that does not start is removed.
async fn start_container(docker: &Docker, image: &str, name: &str) -> Result<Server> {
    crate::images::docker::ensure_image(docker, image, None)
        .await
        .map_err(anyhow::Error::msg)?;
    let password = random_word();
    let config = ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(vec![
            format!("POSTGRES_USER={USER}"),
            format!("POSTGRES_PASSWORD={password}"),
            format!("POSTGRES_DB={DATABASE}"),
        ]),
        labels: Some(HashMap::from([(LABEL.to_string(), name.to_string())])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            tmpfs: Some(HashMap::from([(
                "/var/lib/postgresql/data".to_string(),
                String::new(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    let created = docker
        .create_container(Some(options), config)
        .await
        .with_context(|| format!("creating a container of {image}"))?;
    if let Err(e) = docker.start_container(&created.id, None).await {
        remove_all(docker, vec![created.id]).await;
        return Err(e).with_context(|| format!("starting a container of {image}"));
    }
    Ok(Server::Container {
        id: created.id,
        password,
    })
}

/// A finished process: its exit code and output.
#[derive(Debug)]
pub struct Finished {
    pub code: i64,
    pub lines: Vec<LogLine>,
    /// When its output ended, on the lines' clock.
    pub ended: Duration,
}

impl Finished {
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Scratch {
    /// Starts the engine's server; returns once it accepts connections.
    pub async fn start(docker: &Docker, engine: &Engine, environment: &str) -> Result<Scratch> {
        let name = format!("colony-rehearsal-{environment}-{}", random_word());
        let server = match engine {
            Engine::Container(image) => start_container(docker, image, &name).await?,
            Engine::Local(binaries) => {
                Server::Local(LocalServer::start(binaries, &name, USER, DATABASE).await?)
            }
        };
        // The database's container is removed with the others.
        let containers = match &server {
            Server::Container { id, .. } => vec![id.clone()],
            Server::Local(_) => Vec::new(),
        };
        let scratch = Scratch {
            docker: docker.clone(),
            name,
            server,
            others: std::sync::Mutex::new(containers),
        };
        if let Server::Container { .. } = scratch.server {
            scratch.wait_ready(Duration::from_secs(120)).await?;
        }
        Ok(scratch)
    }

    /// The URL a container beside it connects with.
    pub fn url(&self) -> String {
        match &self.server {
            Server::Container { password, .. } => {
                format!("postgresql://{USER}:{password}@127.0.0.1:5432/{DATABASE}")
            }
            Server::Local(_) => format!(
                "postgresql://{USER}@/{DATABASE}?host={}",
                local::SOCKET_IN_CONTAINER
            ),
        }
    }

    /// Polls `pg_isready` over TCP: the official image's first server
    /// (initialisation) listens on its socket only.
    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let probe = self
                .exec(&["pg_isready", "-h", "127.0.0.1", "-U", USER, "-d", DATABASE])
                .await?;
            if probe.code == 0 {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "the rehearsal's PostgreSQL did not accept connections within {} s: {}",
                    timeout.as_secs(),
                    self.logs_tail().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The server's last lines, for an error.
    async fn logs_tail(&self) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let Server::Container { id, .. } = &self.server else {
            return String::new();
        };
        let mut logs = self.docker.logs(id, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        text.trim().to_string()
    }

    /// Runs the client program `argv` beside the server over its socket
    /// (trusted): in the database's container (as its image's user), or
    /// from the local engine's binaries. Output collected.
    pub async fn exec(&self, argv: &[&str]) -> Result<Finished> {
        self.exec_with_env(argv, &[]).await
    }

    pub async fn exec_with_env(&self, argv: &[&str], env: &[&str]) -> Result<Finished> {
        match &self.server {
            Server::Container { id, .. } => self.exec_in_container(id, argv, env).await,
            Server::Local(server) => server.exec(argv, env).await,
        }
    }

    async fn exec_in_container(&self, id: &str, argv: &[&str], env: &[&str]) -> Result<Finished> {
        let started = Instant::now();
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(argv.to_vec()),
                    env: Some(env.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("running {} in the rehearsal's PostgreSQL", argv[0]))?;
        let mut lines = Vec::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await?
        {
            let mut pending = String::new();
            while let Some(chunk) = output.next().await {
                pending.push_str(&String::from_utf8_lossy(&chunk?.into_bytes()));
                while let Some(end) = pending.find('\n') {
                    let text: String = pending.drain(..=end).collect();
                    lines.push(LogLine {
                        at: started.elapsed(),
                        text: text.trim_end().to_string(),
                    });
                }
            }
            if !pending.is_empty() {
                lines.push(LogLine {
                    at: started.elapsed(),
                    text: pending,
                });
            }
        }
        let code = self
            .docker
            .inspect_exec(&exec.id)
            .await?
            .exit_code
            .unwrap_or(-1);
        Ok(Finished {
            code,
            lines,
            ended: started.elapsed(),
        })
    }

    /// Where `exec`'s programs read the backup: copied into the database's
    /// container, streamed (a tar of one file); the file itself locally.
    pub async fn copy_in(&self, backup: &Path) -> Result<String> {
        let id = match &self.server {
            Server::Container { id, .. } => id,
            Server::Local(_) => return Ok(backup.display().to_string()),
        };
        let size = std::fs::metadata(backup)
            .with_context(|| format!("reading {}", backup.display()))?
            .len();
        let mut header = tar::Header::new_gnu();
        header.set_path(DUMP_NAME)?;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        let file = tokio::fs::File::open(backup).await?;
        let padding = (512 - size % 512) % 512;
        let head = futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(header.as_bytes()))
        });
        let body = tokio_util::io::ReaderStream::new(file);
        let tail = futures_util::stream::once(async move {
            Ok(bytes::Bytes::from(vec![0u8; padding as usize + 1024]))
        });
        let archive = head.chain(body).chain(tail);
        let options = UploadToContainerOptionsBuilder::default()
            .path(DUMP_DIR)
            .build();
        self.docker
            .upload_to_container(id, Some(options), bollard::body_try_stream(archive))
            .await
            .context("copying the backup into the rehearsal's PostgreSQL")?;
        Ok(format!("{DUMP_DIR}/{DUMP_NAME}"))
    }

    /// Runs the backend image beside the database: `entrypoint` and `args`
    /// as the chart's init container runs them, `DATABASE_URL` pointing
    /// here. Each output line is timed by the container's own clock.
    pub async fn run_beside(
        &self,
        image: &str,
        entrypoint: Vec<String>,
        args: Vec<String>,
        working_dir: Option<&str>,
        mut on_line: impl FnMut(&str),
    ) -> Result<Finished> {
        let config = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(entrypoint),
            cmd: Some(args),
            working_dir: working_dir.map(String::from),
            env: Some(vec![format!("DATABASE_URL={}", self.url())]),
            labels: Some(HashMap::from([(LABEL.to_string(), self.name.clone())])),
            host_config: Some(self.beside()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                config,
            )
            .await
            .with_context(|| format!("creating a container of {image}"))?;
        self.others
            .lock()
            .expect("containers lock")
            .push(created.id.clone());
        let began = SystemTime::now();
        self.docker
            .start_container(&created.id, None)
            .await
            .with_context(|| format!("starting a container of {image}"))?;
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .build();
        let mut logs = self.docker.logs(&created.id, Some(options));
        let mut lines = Vec::new();
        let mut pending = String::new();
        while let Some(chunk) = logs.next().await {
            pending.push_str(&String::from_utf8_lossy(&chunk?.into_bytes()));
            while let Some(end) = pending.find('\n') {
                let raw: String = pending.drain(..=end).collect();
                let line = timed(raw.trim_end(), began);
                on_line(&line.text);
                lines.push(line);
            }
        }
        let ended = began.elapsed().unwrap_or_default();
        let code = self
            .docker
            .wait_container(
                &created.id,
                Some(WaitContainerOptionsBuilder::default().build()),
            )
            .next()
            .await
            .map_or(Ok(-1), |waited| match waited {
                Ok(response) => Ok(response.status_code),
                Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => Ok(code),
                Err(e) => Err(e),
            })?;
        Ok(Finished { code, lines, ended })
    }

    /// How a container beside the server reaches it: in the database
    /// container's network namespace, or with no network and the local
    /// server's socket directory mounted.
    fn beside(&self) -> HostConfig {
        match &self.server {
            Server::Container { id, .. } => HostConfig {
                network_mode: Some(format!("container:{id}")),
                ..Default::default()
            },
            Server::Local(server) => HostConfig {
                network_mode: Some("none".into()),
                binds: Some(vec![format!(
                    "{}:{}",
                    server.socket_dir().display(),
                    local::SOCKET_IN_CONTAINER
                )]),
                ..Default::default()
            },
        }
    }

    /// Removes every container of this rehearsal (the data was on tmpfs)
    /// and stops a local server (its directory removed).
    pub async fn remove(self) {
        let ids = self.take_ids();
        remove_all(&self.docker, ids).await;
    }

    /// The containers to remove, once: later calls get none.
    fn take_ids(&self) -> Vec<String> {
        std::mem::take(&mut *self.others.lock().expect("containers lock"))
    }
}

/// Dropped without `remove` (an error, an interrupt): removed all the same,
/// from a thread of its own (no async in `drop`).
impl Drop for Scratch {
    fn drop(&mut self) {
        let (docker, ids) = (self.docker.clone(), self.take_ids());
        if ids.is_empty() {
            return;
        }
        let removal = std::thread::spawn(move || {
            crate::runtime::block_on(remove_all(&docker, ids));
        });
        let _ = removal.join();
    }
}

async fn remove_all(docker: &Docker, ids: Vec<String>) {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    for id in ids {
        let _ = docker.remove_container(&id, Some(options.clone())).await;
    }
}

/// `2026-12-01T03:20:00.123456789Z text` (the log's timestamp) → the time
/// since `began` and the text.
fn timed(raw: &str, began: SystemTime) -> LogLine {
    let (stamp, text) = raw.split_once(' ').unwrap_or((raw, ""));
    let at = humantime::parse_rfc3339_weak(stamp)
        .ok()
        .and_then(|t| t.duration_since(began).ok())
        .unwrap_or_default();
    LogLine {
        at,
        text: text.to_string(),
    }
}

/// A word no other rehearsal has: for names and the throwaway password.
fn random_word() -> String {
    use sha2::{Digest, Sha256};
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let digest = Sha256::digest(format!("{nanos}-{}", std::process::id()));
    digest[..10].iter().map(|b| format!("{b:02x}")).collect()
}

//! A throwaway PostgreSQL for rehearsals: a container of a PostgreSQL image
//! (the official image's `POSTGRES_*` contract) with no network of its own,
//! and one-shot containers of the backend image that join its network
//! namespace, so they reach it at 127.0.0.1 on any Docker (a remote daemon,
//! a daemon without a bridge). Everything through the Docker Engine API;
//! every container is removed when the `Scratch` is, even on an interrupt.

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

use super::observe::LogLine;

/// What every rehearsal container carries, so leftovers can be found.
pub const LABEL: &str = "colony-deploy.rehearsal";
const USER: &str = "rehearsal";
const DATABASE: &str = "rehearsal";
/// Where the backup is copied in the database's container.
const DUMP_DIR: &str = "/tmp";
const DUMP_NAME: &str = "rehearsal.dump";

/// A running throwaway PostgreSQL.
pub struct Scratch {
    docker: Docker,
    /// The database container's name, also the label of every container
    /// of this rehearsal.
    pub name: String,
    id: String,
    password: String,
    /// The one-shot containers started beside it, removed with it.
    others: std::sync::Mutex<Vec<String>>,
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
    /// Starts `image` (pulled if the daemon lacks it) with a fresh password,
    /// its data on a tmpfs; returns once it accepts connections over TCP.
    pub async fn start(docker: &Docker, image: &str, environment: &str) -> Result<Scratch> {
        crate::images::docker::ensure_image(docker, image, None)
            .await
            .map_err(anyhow::Error::msg)?;
        let password = random_word();
        let name = format!("colony-rehearsal-{environment}-{}", random_word());
        let config = ContainerCreateBody {
            image: Some(image.to_string()),
            env: Some(vec![
                format!("POSTGRES_USER={USER}"),
                format!("POSTGRES_PASSWORD={password}"),
                format!("POSTGRES_DB={DATABASE}"),
            ]),
            labels: Some(HashMap::from([(LABEL.to_string(), name.clone())])),
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
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = docker
            .create_container(Some(options), config)
            .await
            .with_context(|| format!("creating a container of {image}"))?;
        let scratch = Scratch {
            docker: docker.clone(),
            name,
            id: created.id,
            password,
            others: std::sync::Mutex::new(Vec::new()),
        };
        docker
            .start_container(&scratch.id, None)
            .await
            .with_context(|| format!("starting a container of {image}"))?;
        scratch.wait_ready(Duration::from_secs(120)).await?;
        Ok(scratch)
    }

    /// The URL a container beside it connects with.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{USER}:{}@127.0.0.1:5432/{DATABASE}",
            self.password
        )
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
        let mut logs = self.docker.logs(&self.id, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        text.trim().to_string()
    }

    /// Runs `argv` in the database's container (as its image's user, over
    /// its socket: trusted), output collected.
    pub async fn exec(&self, argv: &[&str]) -> Result<Finished> {
        self.exec_with_env(argv, &[]).await
    }

    pub async fn exec_with_env(&self, argv: &[&str], env: &[&str]) -> Result<Finished> {
        let started = Instant::now();
        let exec = self
            .docker
            .create_exec(
                &self.id,
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

    /// Copies the backup into the database's container, streamed (a tar
    /// of one file); returns its path there.
    pub async fn copy_in(&self, backup: &Path) -> Result<String> {
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
            .upload_to_container(&self.id, Some(options), bollard::body_try_stream(archive))
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
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{}", self.id)),
                ..Default::default()
            }),
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

    /// Removes every container of this rehearsal (the data was on tmpfs).
    pub async fn remove(self) {
        remove_all(&self.docker, self.ids()).await;
        std::mem::forget(self);
    }

    fn ids(&self) -> Vec<String> {
        let mut ids = self.others.lock().expect("containers lock").clone();
        ids.push(self.id.clone());
        ids
    }
}

/// Dropped without `remove` (an error, an interrupt): removed all the same,
/// from a thread of its own (no async in `drop`).
impl Drop for Scratch {
    fn drop(&mut self) {
        let (docker, ids) = (self.docker.clone(), self.ids());
        let removal = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(remove_all(&docker, ids));
            }
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

//! The image pipeline: for each of backend and frontend, skip when the
//! registry already holds the tag, else build (the backend with the
//! run-migrations binary layered on top), then push and read the digest the
//! registry serves. Both images go at once (`--jobs`), each pushed as soon
//! as it is built; the first failure stops the others (what was pushed by
//! then is said, and deploys nothing: Helm runs only after the whole
//! stage). Each image tag is held by a lock on this machine from the
//! registry check to its push (`machine_lock`), and a push that meets a
//! transient registry answer is tried again (`docker::push_with_retries`).

pub mod builder;
pub mod context;
pub mod copy;
pub mod docker;
pub mod dockerignore;
pub mod filesync;
pub mod gzip;
pub mod machine_lock;
pub mod push;
pub mod registry;
pub mod runner;
pub mod session;
pub mod ssh;
pub mod trust;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bollard::Docker;
use tokio::sync::Semaphore;

use crate::config::{git, Component, Environment, Image, PushMethod, SecretSource};
use crate::images::context::{Extra, ExtraSource};
use crate::progress::{Line, Progress};
use docker::{BuildEvent, BuildRequest};
use machine_lock::ImageLock;
use registry::{Credential, RegistryClient};
use runner::RunnerPlan;

pub use crate::config::MIGRATIONS_BINARY_IN_IMAGE;

/// The names the backend's build context gets for what the tool adds: the
/// user's Dockerfile with one `COPY` appended, and the runner.
const RESERVED_DIR: &str = ".colony-deploy";
const RESERVED_DOCKERFILE: &str = ".colony-deploy/Dockerfile";
const RESERVED_RUNNER: &str = ".colony-deploy/run-migrations";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// How far the pipeline goes for each image.
pub enum Mode {
    Build,
    Push,
    /// `deploy --skip-build`: the registry must already hold every tag.
    UseExisting,
}

pub struct Options {
    pub mode: Mode,
    pub jobs: usize,
    /// BuildKit or the legacy builder (`builder::choose`), decided with
    /// the plan.
    pub builder: builder::Choice,
    /// The run-migrations binary for the backend image, decided before any
    /// build (`runner::decide`); None when it is not built.
    pub runner: Option<RunnerPlan>,
    /// Say nothing (builds begun before the plan is shown).
    pub silent: bool,
}

impl Options {
    /// A deploy's image stage, and the builds it begins early: both
    /// images at once.
    pub fn deploy(mode: Mode, runner: Option<RunnerPlan>, builder: builder::Choice) -> Options {
        Options {
            mode,
            jobs: 2,
            builder,
            runner,
            silent: false,
        }
    }
}

/// What happened to one image.
#[derive(Debug, Clone)]
pub struct ImageReport {
    pub component: Component,
    pub repository: String,
    pub tag: String,
    /// `sha256:…` as the registry serves it (after push or when skipped).
    pub digest: Option<String>,
    pub size: Option<u64>,
    pub build: StepOutcome,
    pub push: StepOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    Done(Duration),
    /// The registry already holds the tag: nothing to build or push.
    InRegistry,
    /// The build pushed the image itself (`pushes_from_build`); its time
    /// is the build's.
    WithBuild,
    NotRun,
}

/// The tag of each image of `env`, from git.
pub fn tags(env: &Environment) -> Result<Vec<(Component, String)>> {
    let sh = xshell::Shell::new()?;
    let commit = git::head(&sh, &env.root).ok_or_else(|| {
        anyhow!(
            "{} is not a git checkout with a commit: image tags come from the commit",
            env.root.display()
        )
    })?;
    env.images
        .iter()
        .map(|image| Ok((image.component, tag(&sh, env, &commit, image)?)))
        .collect()
}

/// One image's tag: the commit, marked when its context has changes since.
pub fn tag(
    sh: &xshell::Shell,
    env: &Environment,
    commit: &git::Commit,
    image: &Image,
) -> Result<String> {
    let state = git::context_state(sh, &env.root, &image.context)?;
    Ok(git::image_tag(
        commit,
        &state,
        &image.settings_fingerprint(),
    ))
}

/// Runs the pipeline for `tags` (component → tag, from `tags` or the deploy
/// plan's facts, so git is read once); the contexts were checked by the
/// caller, which also read the daemon's view (`docker info`) once.
pub async fn run(
    env: &Environment,
    tags: &[(Component, String)],
    options: &Options,
    daemon_view: Option<&registry::DaemonView>,
) -> Result<Vec<ImageReport>> {
    let docker = docker::connect().await?;
    let host = registry::host_of(&env.registry).to_string();
    let credential = registry::credential_for(&host)?;
    // HTTPS, or plain HTTP too, exactly as the daemon will push.
    let access = registry::access_for(&env.registry, daemon_view);
    let progress = match options.silent {
        true => Progress::silent(),
        false => Progress::new(),
    };
    let jobs = Arc::new(Semaphore::new(options.jobs.max(1)));

    // Each image checked, built and pushed on its own, all at once: one
    // pushes as soon as it is built. The first failure stops the others'
    // checks and builds; a push under way is let finish, since the daemon
    // would finish it anyway, unseen, once we stopped waiting: so what is
    // said to be pushed is what the registry has.
    let mut tasks = tokio::task::JoinSet::new();
    let mut running = Vec::new();
    for image in env.images.clone() {
        let tag = tags
            .iter()
            .find(|(c, _)| *c == image.component)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        let task = ImageTask {
            docker: docker.clone(),
            root: env.root.clone(),
            line: Arc::new(progress.line(image.component.as_str())),
            image,
            tag,
            credential: credential.clone(),
            access: access.clone(),
            mode: options.mode,
            runner: options.runner.clone(),
            builder: options.builder.builder,
            push_method: env.image_push,
            containerd_session: daemon_view
                .is_some_and(registry::DaemonView::builds_by_session_into_containerd),
            pushing: Arc::new(AtomicBool::new(false)),
            context_sent: Arc::default(),
        };
        let pushing = task.pushing.clone();
        let jobs = jobs.clone();
        let handle = tasks.spawn(async move {
            let _permit = jobs.acquire_owned().await;
            task.run().await
        });
        running.push((handle, pushing));
    }
    let mut reports = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) if failure.is_none() => {
                failure = Some(e);
                for (handle, pushing) in &running {
                    if !pushing.load(Ordering::SeqCst) {
                        handle.abort();
                    }
                }
            }
            Ok(Err(_)) => {}
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(anyhow!("an image task panicked: {e}")),
        }
    }
    if let Some(e) = failure {
        bail!("{e:#}\n{}", pushed_before(&reports));
    }
    reports.sort_by_key(|r| r.component);
    Ok(reports)
}

/// After a failure: what was pushed already (not deployed: Helm runs only
/// after the whole stage), or that nothing was. Pure.
fn pushed_before(reports: &[ImageReport]) -> String {
    let pushed: Vec<String> = reports
        .iter()
        .filter(|r| matches!(r.push, StepOutcome::Done(_)))
        .map(|r| format!("{}:{}", r.repository, r.tag))
        .collect();
    if pushed.is_empty() {
        "nothing was pushed".into()
    } else {
        format!(
            "pushed before the failure, and not deployed: {}",
            pushed.join(", ")
        )
    }
}

/// Every Dockerfile exists and can be built with `choice`'s builder: a
/// refusal (exit 2) before anything is built.
pub fn check_dockerfiles(
    env: &Environment,
    choice: &builder::Choice,
    daemon: Option<&registry::DaemonView>,
) -> Result<()> {
    let mut refusals = Vec::new();
    for image in &env.images {
        let Ok(needs) = dockerfile_needs(env, image) else {
            return Err(crate::error::input_error(format!(
                "{} Dockerfile {} does not exist (set images.{}.context / dockerfile in {})",
                image.component,
                env.root
                    .join(&image.context)
                    .join(&image.dockerfile)
                    .display(),
                image.component,
                env.config_file.display()
            )));
        };
        refusals.extend(builder::image_refusals(image, choice, &needs, daemon));
        refusals.extend(secret_problems(image));
    }
    match refusals.is_empty() {
        true => Ok(()),
        false => Err(crate::error::input_error(refusals.join("\n"))),
    }
}

/// A build secret that cannot be read now (its variable unset, its file
/// missing or over BuildKit's 500 KiB): refused before any build. Only
/// where is said, never the value.
fn secret_problems(image: &Image) -> Vec<String> {
    const MAX_BYTES: u64 = 500 * 1024;
    image
        .secrets
        .iter()
        .filter_map(|(id, source)| {
            let problem = match source {
                SecretSource::Env(name) => std::env::var_os(name)
                    .is_none_or(|v| v.is_empty())
                    .then(|| format!("{name} is not set (or empty)")),
                SecretSource::File(path) => match std::fs::metadata(path) {
                    Err(e) => Some(format!("{} cannot be read: {e}", path.display())),
                    Ok(m) if m.len() > MAX_BYTES => {
                        Some(format!("{} is over BuildKit's 500 KiB", path.display()))
                    }
                    Ok(_) => None,
                },
            }?;
            Some(format!(
                "images.{}.secrets.{id}: {problem}; nothing was built",
                image.component
            ))
        })
        .collect()
}

/// What `image`'s Dockerfile asks of the builder (`builder::needs`).
pub fn dockerfile_needs(env: &Environment, image: &Image) -> std::io::Result<builder::Needs> {
    let path = env.root.join(&image.context).join(&image.dockerfile);
    std::fs::read_to_string(path).map(|text| builder::needs(&text))
}

/// What the daemon's push is weighed against (`push::worth_taking_over`):
/// the image's size and the bytes of its layers this tool pushed before.
#[derive(Debug, Clone, Copy)]
struct TakeOver {
    image_size: u64,
    known: u64,
}

/// What this machine's earlier pushes learned (`push::Known`); nothing
/// without a home.
fn load_known() -> Vec<push::Known> {
    push::known_file()
        .as_deref()
        .map(push::load_known)
        .unwrap_or_default()
}

/// How the daemon's push ended.
enum DaemonPush {
    Done,
    /// Given up for this tool's push, when the daemon had started to send
    /// this many bytes of layers.
    TakenOver {
        sending: u64,
    },
}

/// One image's way through the stage: the registry check, the build, the
/// push; under this machine's lock on its tag (`machine_lock`).
struct ImageTask {
    docker: Docker,
    root: PathBuf,
    image: Image,
    tag: String,
    credential: Option<Credential>,
    access: registry::Access,
    mode: Mode,
    runner: Option<RunnerPlan>,
    builder: builder::Builder,
    push_method: PushMethod,
    /// The daemon keeps images in containerd and is reached by its Unix
    /// socket (`pushes_from_build`).
    containerd_session: bool,
    line: Arc<Line>,
    /// Set once its push starts: a failure elsewhere lets it finish.
    pushing: Arc<AtomicBool>,
    /// Bytes of build context the daemon was sent (by file sync, only
    /// what it did not have from the last build of this context).
    context_sent: Arc<AtomicU64>,
}

impl ImageTask {
    async fn run(self) -> Result<ImageReport> {
        let _lock = match self.mode {
            Mode::UseExisting => None,
            Mode::Build | Mode::Push => Some(self.lock().await?),
        };
        let (mut report, built) = self.build_unless_pushed().await?;
        if report.push == StepOutcome::WithBuild {
            report.digest = Some(self.digest_after_push().await?);
        } else if self.mode == Mode::Push && report.digest.is_none() {
            self.pushing.store(true, Ordering::SeqCst);
            let (digest, took) = self.push(built.as_ref()).await?;
            report.digest = Some(digest);
            report.push = StepOutcome::Done(took);
        }
        Ok(report)
    }

    async fn lock(&self) -> Result<ImageLock> {
        let image = format!("{}:{}", self.image.reference, self.tag);
        let line = self.line.clone();
        tokio::task::spawn_blocking(move || ImageLock::acquire(&image, |why| line.log(why)))
            .await
            .context("waiting for the image lock panicked")?
    }

    /// The report, and the built image as inspected right after its build
    /// (none when the registry had it, or the inspect failed).
    async fn build_unless_pushed(&self) -> Result<(ImageReport, Option<docker::InspectedImage>)> {
        let mut report = ImageReport {
            component: self.image.component,
            repository: self.image.reference.clone(),
            tag: self.tag.clone(),
            digest: None,
            size: None,
            build: StepOutcome::NotRun,
            push: StepOutcome::NotRun,
        };
        match self.registry_digest().await {
            Ok(Some(digest)) => {
                self.line.finish(&format!(
                    "{}:{} is already in the registry; build and push skipped",
                    report.repository, report.tag
                ));
                report.digest = Some(digest);
                report.build = StepOutcome::InRegistry;
                report.push = StepOutcome::InRegistry;
                return Ok((report, None));
            }
            Ok(None) if self.mode == Mode::UseExisting => {
                return Err(anyhow!(
                "{}:{} is not in the registry; deploy without --skip-build to build and push it",
                report.repository,
                report.tag
            ))
            }
            Ok(None) => {}
            // Building alone does not need the registry; pushing does.
            Err(e) if self.mode == Mode::Build => self
                .line
                .log(&format!("registry not checked ({e:#}); building")),
            Err(e) => return Err(e.context(self.image.component.as_str())),
        }
        let started = Instant::now();
        let target = format!("{}:{}", self.image.reference, self.tag);
        let pushed = if self.image.component == Component::Backend {
            self.build_with_runner(&target).await?
        } else {
            let dir = self.root.join(&self.image.context);
            let dockerfile = self.image.dockerfile.to_string_lossy().replace('\\', "/");
            self.build_dir(&dir, &dockerfile, Vec::new(), &target)
                .await?
        };
        // One look at the built image: its platform (the backend's runner
        // must match it) and its size (for the table).
        let runner = self
            .runner
            .as_ref()
            .filter(|_| self.image.component == Component::Backend);
        let built = match docker::inspect(&self.docker, &target).await {
            Ok(built) => built,
            // The size is a nicety; the runner's platform check is not.
            Err(e) if runner.is_some() => return Err(e.into()),
            Err(_) => None,
        };
        if let (Some(runner), Some(facts)) = (runner, &built) {
            check_platform(&runner.platform, facts)?;
        }
        if self.image.also_tag_latest {
            self.tag_latest(&target).await?;
        }
        report.build = StepOutcome::Done(started.elapsed());
        report.size = built.as_ref().map(|f| f.size);
        let built_line = format!(
            "{} {target} in {:.1} s ({} of context sent{})",
            if pushed { "built and pushed" } else { "built" },
            started.elapsed().as_secs_f64(),
            human_bytes(self.context_sent.load(Ordering::Relaxed)),
            if pushed {
                "; BuildKit pushed it, new layers gzipped at the fastest level"
            } else {
                ""
            }
        );
        if pushed {
            report.push = StepOutcome::WithBuild;
        }
        // The push goes on on the same line; a finished line stays finished.
        match self.mode {
            Mode::Push => self.line.log(&built_line),
            _ => self.line.finish(&built_line),
        }
        Ok((report, built))
    }

    /// The digest the registry serves for the tag just pushed.
    async fn digest_after_push(&self) -> Result<String> {
        let (repository, tag) = (&self.image.reference, &self.tag);
        let digest = self.registry_digest().await?.ok_or_else(|| {
            anyhow!("the registry does not list {repository}:{tag} after the push")
        })?;
        self.line
            .finish(&format!("pushed {repository}:{tag}: {digest}"));
        Ok(digest)
    }

    async fn registry_digest(&self) -> Result<Option<String>> {
        registry_digest(
            &self.image.reference,
            &self.tag,
            self.credential.clone(),
            &self.access,
        )
        .await
    }

    /// One build: the user's context (as its `.dockerignore` lets through),
    /// plus the runner and the user's Dockerfile with a final `COPY` of it,
    /// under reserved names. The `COPY` lands in the last stage, runs as the
    /// builder (the user's `USER` stays in force for the container), and
    /// the runner keeps the 0755 of its tar header. True when the build
    /// pushed the image too (`build_dir`).
    async fn build_with_runner(&self, target: &str) -> Result<bool> {
        let plan = self
            .runner
            .clone()
            .ok_or_else(|| anyhow!("no run-migrations binary was decided for the backend image"))?;
        let line = self.line.clone();
        let binary = tokio::task::spawn_blocking(move || {
            runner::obtain(&plan, &|message| line.log(message))
        })
        .await??;
        let dir = self.root.join(&self.image.context);
        let dockerfile = std::fs::read_to_string(dir.join(&self.image.dockerfile))
            .with_context(|| format!("reading the backend Dockerfile in {}", dir.display()))?;
        let mut extras = vec![
            Extra {
                name: RESERVED_DOCKERFILE.into(),
                source: ExtraSource::Bytes(
                    with_runner(&dockerfile, self.image.target.as_deref()).into_bytes(),
                ),
                mode: 0o644,
            },
            Extra {
                name: RESERVED_RUNNER.into(),
                source: ExtraSource::File(binary),
                mode: 0o755,
            },
        ];
        // BuildKit reads the generated Dockerfile's own ignore file, if
        // any, as it would have read the user's.
        let ignore = self.ignore_file(&dir);
        if ignore != Path::new(".dockerignore") {
            extras.push(Extra {
                name: format!("{RESERVED_DOCKERFILE}.dockerignore").into(),
                source: ExtraSource::Bytes(std::fs::read(dir.join(&ignore))?),
                mode: 0o644,
            });
        }
        self.build_dir(&dir, RESERVED_DOCKERFILE, extras, target)
            .await
    }

    /// The ignore file this image's build reads (`context::ignore_file`).
    fn ignore_file(&self, dir: &Path) -> PathBuf {
        let buildkit = self.builder == builder::Builder::BuildKit;
        context::ignore_file(dir, &self.image.dockerfile, buildkit)
    }

    /// One build; true when it pushed the image too (`pushes_from_build`,
    /// and the context went by file sync).
    async fn build_dir(
        &self,
        dir: &Path,
        dockerfile: &str,
        extras: Vec<Extra>,
        target: &str,
    ) -> Result<bool> {
        let files: Vec<PathBuf> = {
            let (dir, user_dockerfile) = (dir.to_path_buf(), self.image.dockerfile.clone());
            let ignore = self.ignore_file(&dir);
            tokio::task::spawn_blocking(move || {
                context::list_files(&dir, &user_dockerfile, &ignore)
            })
            .await??
            .into_iter()
            .filter(|f| !f.starts_with(RESERVED_DIR))
            .collect()
        };
        let sent = self.context_sent.clone();
        let build_args: HashMap<String, String> =
            self.image.build_args.clone().into_iter().collect();
        let platform = self.image.platform.as_ref().map(ToString::to_string);
        let also_latest: Vec<String> = match self.image.also_tag_latest {
            true => vec![format!("{}:latest", self.image.reference)],
            false => Vec::new(),
        };
        let push = pushes_from_build(
            self.mode,
            self.push_method,
            self.builder,
            self.containerd_session,
        );
        let mut request = BuildRequest {
            tag: target,
            dockerfile,
            build_args: &build_args,
            platform: platform.as_deref(),
            builder: self.builder,
            target: self.image.target.as_deref(),
            network: self.image.network.as_deref(),
            push_as_well: None,
        };
        let buildkit = self.builder == builder::Builder::BuildKit;
        let socket = session::unix_socket(&docker::endpoint().host).filter(|_| buildkit);
        let line = self.line.clone();
        let on_event = |event: BuildEvent<'_>| match event {
            BuildEvent::Step(step) => line.log(step),
            BuildEvent::Output(output) => line.set(&format!(
                "{} sent; {output}",
                human_bytes(sent.load(Ordering::Relaxed))
            )),
        };
        let session = match &socket {
            Some(socket) => self.file_sync(socket, dir, &files, &extras, target).await?,
            None => None,
        };
        let built = match (&socket, session) {
            // The daemon reads the context by file sync, as from the CLI.
            (Some(socket), Some(session)) => {
                self.log_building(target);
                request.push_as_well = push.then_some(also_latest.as_slice());
                docker::build_from_session(socket, &request, &session.id, on_event).await
            }
            _ => {
                let stream = context::tar_stream(dir.to_path_buf(), files, extras, sent.clone());
                if !self.image.secrets.is_empty() && buildkit {
                    return self
                        .build_with_secrets(&request, stream)
                        .await
                        .map(|()| false);
                }
                self.log_building(target);
                docker::build(&self.docker, &request, stream, on_event).await
            }
        };
        built.map_err(|failure| {
            anyhow!(
                "{} image build {failure}{}",
                self.image.component,
                network_hint(self.image.component, &failure.message)
            )
        })?;
        Ok(request.push_as_well.is_some())
    }

    /// "building X", and the build secrets it is given, if any.
    fn log_building(&self, target: &str) {
        let names: Vec<&str> = self.image.secrets.keys().map(String::as_str).collect();
        self.line.log(&match names.is_empty() {
            true => format!("building {target}"),
            false => format!(
                "building {target} with the build secrets {}",
                names.join(", ")
            ),
        });
    }

    /// A session serving this context by file sync; None (said on the
    /// image's line) when the daemon will not open one or a file's name
    /// cannot go by file sync: the context then goes as a tar.
    async fn file_sync(
        &self,
        socket: &Path,
        dir: &Path,
        files: &[PathBuf],
        extras: &[Extra],
        target: &str,
    ) -> Result<Option<session::Session>> {
        if let Some(name) = filesync::first_name_not_utf8(files) {
            self.line.log(&format!(
                "the context holds a file name that is not UTF-8 ({}), which file sync cannot \
                 carry: the context goes as a tar",
                name.display()
            ));
            return Ok(None);
        }
        let tree = {
            let (root, files, extras) = (dir.to_path_buf(), files.to_vec(), extras.to_vec());
            tokio::task::spawn_blocking(move || filesync::Tree::read(&root, &files, &extras))
                .await?
                .with_context(|| format!("reading the build context {}", dir.display()))?
        };
        let (id, key) = (docker::session_id(target), session::shared_key(dir));
        let (secrets, sent) = (self.image.secrets.clone(), self.context_sent.clone());
        match session::open(socket, &id, &key, tree, secrets, sent).await {
            Ok(session) => Ok(Some(session)),
            Err(e) => {
                self.line.log(&format!(
                    "no build session ({e:#}): the context goes as a tar"
                ));
                Ok(None)
            }
        }
    }

    /// The build of an image with secrets (`docker::build_with_secrets`):
    /// the context is gathered first, then built without step progress.
    async fn build_with_secrets(
        &self,
        request: &BuildRequest<'_>,
        stream: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>>,
    ) -> Result<()> {
        use futures_util::TryStreamExt;
        let names: Vec<&str> = self.image.secrets.keys().map(String::as_str).collect();
        self.line.log(&format!(
            "building {} with the build secrets {} (BuildKit's gRPC API, without a build session \
             on a Unix socket: the context is sent whole, steps are not shown)",
            request.tag,
            names.join(", ")
        ));
        let context: Vec<u8> = stream
            .map_ok(|chunk| chunk.to_vec())
            .try_concat()
            .await
            .context("reading the build context")?;
        docker::build_with_secrets(&self.docker, request, context.into(), &self.image.secrets)
            .await
            .map_err(|failure| anyhow!("{} image build {failure}", self.image.component))
    }

    /// Pushes the built tag (and `latest` when asked) as `images.push`
    /// says, tried again after a transient registry answer; the digest is
    /// read back from the registry. `built` (the inspect after the build)
    /// gives the image's size, which the daemon's hand-over is weighed
    /// against, and the id and layers that this tool's push reads.
    async fn push(&self, built: Option<&docker::InspectedImage>) -> Result<(String, Duration)> {
        let (repository, tag) = (&self.image.reference, &self.tag);
        let line = &self.line;
        let started = Instant::now();
        line.log(&format!("pushing {repository}:{tag}"));
        let mut tags = vec![tag.to_string()];
        if self.image.also_tag_latest {
            tags.push("latest".into());
        }
        let ours = match self.push_method {
            PushMethod::Docker => {
                self.daemon_push(&tags, None).await?;
                None
            }
            PushMethod::Fast => {
                let image = self.local_image(built).await?;
                Some(self.push_from_export(&tags, &image, load_known()).await?)
            }
            PushMethod::Auto => self.push_or_take_over(&tags, built).await?,
        };
        if let Some(pushed) = ours {
            line.log(&format!(
                "{} layer{} sent ({} gzipped from {}), {} already in the registry",
                pushed.layers_sent,
                if pushed.layers_sent == 1 { "" } else { "s" },
                human_bytes(pushed.bytes_sent),
                human_bytes(pushed.bytes_read),
                pushed.layers_present
            ));
        }
        let pushed = started.elapsed();
        let digest = self.registry_digest().await?.ok_or_else(|| {
            anyhow!("the registry does not list {repository}:{tag} after the push")
        })?;
        line.finish(&format!(
            "pushed {repository}:{tag} in {:.1} s: {digest}",
            pushed.as_secs_f64()
        ));
        Ok((digest, pushed))
    }

    /// `images.push = "auto"`: the daemon pushes; once the layers it says
    /// it is sending are most of the image (`push::worth_taking_over`), its
    /// push is dropped (the daemon stops with the connection) and this
    /// tool's push from the export does the image instead. An export this
    /// tool cannot read leaves the push to the daemon after all.
    async fn push_or_take_over(
        &self,
        tags: &[String],
        built: Option<&docker::InspectedImage>,
    ) -> Result<Option<push::Pushed>> {
        let image_size = built.map_or(0, |b| b.size);
        let image = self.local_image(built).await;
        let known_layers = load_known();
        // Without the image's layers, nothing counts as known.
        let known = image
            .as_ref()
            .map_or(0, |image| push::known_bytes(&known_layers, &image.diff_ids));
        let take_over = TakeOver { image_size, known };
        let DaemonPush::TakenOver { sending } = self.daemon_push(tags, Some(take_over)).await?
        else {
            return Ok(None);
        };
        let of_image = match image_size {
            0 => String::new(),
            size => format!(" of this {} image", human_bytes(size)),
        };
        self.line.log(&format!(
            "the daemon is sending {}{of_image}, gzipped at Go's default level: this tool \
             pushes it instead, gzip at its fastest (images.push = \"auto\")",
            human_bytes(sending),
        ));
        match self.push_from_export(tags, &image?, known_layers).await {
            Ok(pushed) => Ok(Some(pushed)),
            Err(error) => match error.downcast_ref() {
                Some(push::PushError::Shape(what)) => {
                    self.line.log(&format!(
                        "this tool cannot read the daemon's export of the image ({what}); the \
                         daemon pushes it after all"
                    ));
                    self.daemon_push(tags, None).await?;
                    Ok(None)
                }
                _ => Err(error),
            },
        }
    }

    /// The daemon's push of each of `tags`, each tried again after a
    /// transient answer. With `take_over`, it is given up as soon as
    /// `push::worth_taking_over` says this tool's push is the faster one.
    async fn daemon_push(
        &self,
        tags: &[String],
        take_over: Option<TakeOver>,
    ) -> Result<DaemonPush> {
        let (repository, line) = (&self.image.reference, &self.line);
        let on_retry = |attempt, pause: Duration, error: &docker::DockerError| {
            line.log(&retry_line(attempt, pause, error))
        };
        let (taken_over, sending) = (tokio::sync::Notify::new(), AtomicU64::new(0));
        for tag in tags {
            let daemon = docker::push_with_retries(
                &self.docker,
                repository,
                tag,
                self.credential.as_ref(),
                |p| {
                    line.set(&push_progress_line(p));
                    if take_over
                        .is_some_and(|t| push::worth_taking_over(p.sending, t.image_size, t.known))
                    {
                        sending.store(p.sending, Ordering::Relaxed);
                        taken_over.notify_one();
                    }
                },
                on_retry,
            );
            tokio::select! {
                biased;
                pushed = daemon => pushed?,
                () = taken_over.notified() => {
                    return Ok(DaemonPush::TakenOver { sending: sending.load(Ordering::Relaxed) })
                }
            }
        }
        Ok(DaemonPush::Done)
    }

    /// `images.push = "fast"` (or a hand-over): the image read from the daemon's export and
    /// pushed by `push::push_export`, the whole push tried again after a
    /// transient registry answer (as the daemon's push is).
    async fn push_from_export(
        &self,
        tags: &[String],
        image: &push::LocalImage,
        mut known: Vec<push::Known>,
    ) -> Result<push::Pushed> {
        let local = format!("{}:{}", self.image.reference, self.tag);
        let client =
            RegistryClient::new(&self.image.reference, self.credential.clone(), &self.access)?;
        let repository = Arc::new(copy::Repository::with_client(
            client,
            repository_path(&self.image.reference),
        ));
        let known_file = push::known_file();
        let mut attempt = 1;
        loop {
            let export = export_reader(&self.docker, &image.id);
            let (image, repository, tags, line, guesses) = (
                image.clone(),
                repository.clone(),
                tags.to_vec(),
                self.line.clone(),
                known.clone(),
            );
            let pushed = tokio::task::spawn_blocking(move || {
                push::push_export(export, &image, &repository, &tags, &guesses, &mut |p| {
                    line.set(&push_progress_line(p))
                })
            })
            .await
            .context("the push panicked")?;
            match pushed {
                Ok((pushed, learned)) => {
                    if let Some(path) = &known_file {
                        // Lost, it only costs a gzip next time.
                        let _ = push::remember(path, &learned);
                    }
                    return Ok(pushed);
                }
                Err(push::PushError::Stale) if !known.is_empty() => {
                    self.line
                        .log("a layer was not the one its size suggested; pushing again, reading every layer");
                    known.clear();
                }
                Err(error) if error.transient() && attempt < docker::PUSH_ATTEMPTS => {
                    attempt += 1;
                    let pause = docker::push_retry_delay(attempt);
                    self.line.log(&format!(
                        "the push failed ({error}); trying again in {} s (attempt {attempt} of {})",
                        pause.as_secs(),
                        docker::PUSH_ATTEMPTS
                    ));
                    tokio::time::sleep(pause).await;
                }
                Err(error) => {
                    return Err(anyhow::Error::new(error).context(format!("pushing {local}")))
                }
            }
        }
    }

    /// The built image's id and layers: from the inspect after the build,
    /// else as the daemon's inspect has them now.
    async fn local_image(
        &self,
        built: Option<&docker::InspectedImage>,
    ) -> Result<push::LocalImage> {
        if let Some(built) = built {
            return Ok(push::LocalImage {
                id: built.id.clone(),
                diff_ids: built.diff_ids.clone(),
            });
        }
        let local = format!("{}:{}", self.image.reference, self.tag);
        let inspected = self
            .docker
            .inspect_image(&local)
            .await
            .with_context(|| format!("inspecting the built image {local}"))?;
        Ok(push::LocalImage {
            id: inspected.id.unwrap_or_default(),
            diff_ids: inspected.root_fs.and_then(|r| r.layers).unwrap_or_default(),
        })
    }

    async fn tag_latest(&self, target: &str) -> Result<()> {
        let options = bollard::query_parameters::TagImageOptionsBuilder::default()
            .repo(&self.image.reference)
            .tag("latest")
            .build();
        self.docker
            .tag_image(target, Some(options))
            .await
            .with_context(|| format!("tagging {target} as latest"))
    }
}

/// Whether the build pushes the image itself, with BuildKit's image
/// exporter: on a daemon with the containerd image store (older daemons'
/// BuildKit only stores images), unless `images.push = "docker"` asks for
/// the daemon's own push, and only where the build goes by this tool's
/// session (`containerd_session`: the store, and a Unix socket), which
/// serves the registry's login (`session::RegistryLogins`); a build whose
/// context falls back to a tar is pushed after it (`build_dir`). It saves
/// the export and the second gzip of a separate push. The plan says it
/// from the same rule. Pure.
pub fn pushes_from_build(
    mode: Mode,
    push_method: PushMethod,
    builder: builder::Builder,
    containerd_session: bool,
) -> bool {
    mode == Mode::Push
        && push_method != PushMethod::Docker
        && builder == builder::Builder::BuildKit
        && containerd_session
}

/// The runner was chosen for the configured (or the daemon's) platform; a
/// base image of another one would make an image it cannot run in.
fn check_platform(expected: &runner::Platform, built: &docker::InspectedImage) -> Result<()> {
    if built.architecture.is_empty()
        || runner::Platform::new(&built.os, &built.architecture) == *expected
    {
        return Ok(());
    }
    bail!(
        "the backend image came out {os}/{arch} (its base image's platform), but run-migrations was made \
         for {expected}: set images.backend.platform = \"{os}/{arch}\" in deploy.toml, so that the right \
         runner is chosen before the build",
        os = built.os,
        arch = built.architecture,
    )
}

/// What to do when a `RUN` step found no bridge network (a daemon
/// started with `--bridge=none`, as the test bed's is). Pure.
fn network_hint(component: Component, message: &str) -> String {
    if message.contains("network bridge not found") {
        format!(
            "\n  the daemon has no bridge network for RUN steps: set images.{component}.network = \"host\" \
             (or \"none\") in deploy.toml, as `docker build --network host` would"
        )
    } else {
        String::new()
    }
}

/// The words of a `FROM` line (empty for any other line).
fn from_words(line: &str) -> Vec<&str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.first() {
        Some(keyword) if keyword.eq_ignore_ascii_case("FROM") => words,
        _ => Vec::new(),
    }
}

/// The user's Dockerfile with the runner copied in at the end of the stage
/// that is built: the last one, or `target`'s (before the next `FROM`).
/// Pure.
pub fn with_runner(dockerfile: &str, target: Option<&str>) -> String {
    let copy = format!(
        "# Added by cargo xtask deploy: the runner of the run-migrations init container.\n\
         COPY {RESERVED_RUNNER} {MIGRATIONS_BINARY_IN_IMAGE}\n"
    );
    let lines: Vec<&str> = dockerfile.split_inclusive('\n').collect();
    let stage_end = target.and_then(|target| {
        let start = lines.iter().position(|line| {
            let words = from_words(line);
            words.len() >= 4
                && words[words.len() - 2].eq_ignore_ascii_case("AS")
                && words[words.len() - 1].eq_ignore_ascii_case(target)
        })?;
        (start + 1..lines.len()).find(|&index| !from_words(lines[index]).is_empty())
    });
    match stage_end {
        Some(end) => format!("{}{copy}\n{}", lines[..end].concat(), lines[end..].concat()),
        None => {
            let newline = if dockerfile.ends_with('\n') || dockerfile.is_empty() {
                ""
            } else {
                "\n"
            };
            format!("{dockerfile}{newline}\n{copy}")
        }
    }
}

/// The registry's digest for `reference:tag` (None: it has no such tag);
/// the blocking HTTP client runs off the async threads.
async fn registry_digest(
    reference: &str,
    tag: &str,
    credential: Option<Credential>,
    access: &registry::Access,
) -> Result<Option<String>> {
    let client = RegistryClient::new(reference, credential, access)?;
    let (path, tag) = (repository_path(reference).to_string(), tag.to_string());
    let digest = tokio::task::spawn_blocking(move || client.manifest_digest(&path, &tag))
        .await
        .context("a registry lookup panicked")??;
    Ok(digest)
}

fn push_progress_line(p: docker::PushProgress) -> String {
    format!(
        "{} layers pushed; {} of {}",
        p.layers_done,
        human_bytes(p.current),
        human_bytes(p.total)
    )
}

/// The daemon's export of `image` (`docker save`) as a blocking reader:
/// a task forwards the stream's chunks through a short channel, so a slow
/// reader holds back the daemon instead of filling memory.
fn export_reader(docker: &Docker, image: &str) -> ChannelReader {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let docker = docker.clone();
    let image = image.to_string();
    tokio::spawn(async move {
        use futures_util::StreamExt as _;
        let mut stream = std::pin::pin!(docker.export_image(&image));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other);
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    ChannelReader {
        receiver,
        current: bytes::Bytes::new(),
    }
}

struct ChannelReader {
    receiver: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// One line for a push about to be tried again: what failed (the
/// registry's answer, its lines joined), the pause, the attempt. Pure.
fn retry_line(attempt: u32, pause: Duration, error: &docker::DockerError) -> String {
    let mut why = String::new();
    for line in error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if !why.is_empty() {
            why.push_str(if why.ends_with(':') { " " } else { "; " });
        }
        why.push_str(line);
    }
    format!(
        "{why}; retrying in {} s (attempt {attempt} of {})",
        pause.as_secs(),
        docker::PUSH_ATTEMPTS
    )
}

/// `build`/`push --json`: each image, as `ImageJson`.
#[derive(Debug, serde::Serialize)]
pub struct ImagesJson {
    pub images: Vec<ImageJson>,
}

/// One image in `--json`: where it went, its digest and what each stage did.
#[derive(Debug, serde::Serialize)]
pub struct ImageJson {
    pub component: Component,
    pub repository: String,
    pub tag: String,
    pub digest: Option<String>,
    /// `repository@digest`: what Helm is given.
    pub pinned: Option<String>,
    pub size: Option<u64>,
    pub build: OutcomeJson,
    pub push: OutcomeJson,
}

/// A stage's outcome: `done` (with its seconds), `skipped` (with why) or
/// `not run`.
#[derive(Debug, serde::Serialize)]
pub struct OutcomeJson {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl From<&StepOutcome> for OutcomeJson {
    fn from(outcome: &StepOutcome) -> Self {
        let (status, seconds, reason) = match outcome {
            StepOutcome::Done(took) => ("done", Some(took.as_secs_f64()), None),
            StepOutcome::InRegistry => ("skipped", None, Some("in registry")),
            StepOutcome::WithBuild => ("done", None, Some("with the build")),
            StepOutcome::NotRun => ("not run", None, None),
        };
        OutcomeJson {
            status,
            seconds,
            reason,
        }
    }
}

/// The reports as JSON, for scripts (`--json`). Pure.
pub fn to_json(reports: &[ImageReport]) -> Vec<ImageJson> {
    reports
        .iter()
        .map(|r| ImageJson {
            component: r.component,
            repository: r.repository.clone(),
            tag: r.tag.clone(),
            digest: r.digest.clone(),
            pinned: r.digest.as_ref().map(|d| format!("{}@{d}", r.repository)),
            size: r.size,
            build: (&r.build).into(),
            push: (&r.push).into(),
        })
        .collect()
}

/// `127.0.0.1:5000/team/colony-backend` → `team/colony-backend`.
pub fn repository_path(reference: &str) -> &str {
    reference
        .split_once('/')
        .map_or(reference, |(_, path)| path)
}

/// The table printed after the image pipeline. Pure.
pub fn render_table(reports: &[ImageReport]) -> String {
    let outcome = |o: &StepOutcome| match o {
        StepOutcome::Done(d) => format!("{:.1} s", d.as_secs_f64()),
        StepOutcome::InRegistry => "skipped (in registry)".into(),
        StepOutcome::WithBuild => "with the build".into(),
        StepOutcome::NotRun => "-".into(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<34} {:<73} {:>9}  {:<22} push",
        "image", "tag", "digest", "size", "build"
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<9} {:<34} {:<73} {:>9}  {:<22} {}",
            r.component,
            r.tag,
            r.digest.as_deref().unwrap_or("-"),
            r.size.map_or("-".into(), human_bytes),
            outcome(&r.build),
            outcome(&r.push)
        );
    }
    out
}

/// Bytes as people read them (indicatif's `HumanBytes`: `56.00 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_is_copied_in_at_the_end_of_the_last_stage() {
        let multi_stage = "FROM scratch AS base\nCOPY app /app\n\nFROM scratch\nCOPY --from=base /app /app\nUSER app";
        let appended = with_runner(multi_stage, None);
        assert!(appended.starts_with(multi_stage));
        assert!(appended.ends_with(
            "USER app\n\n# Added by cargo xtask deploy: the runner of the run-migrations init container.\n\
             COPY .colony-deploy/run-migrations /usr/local/bin/run-migrations\n"
        ));
        assert!(with_runner("FROM scratch\n", None).starts_with("FROM scratch\n\n#"));
    }

    #[test]
    fn with_a_target_the_runner_lands_at_the_end_of_that_stage() {
        let dockerfile = "FROM python AS build\nRUN uv sync\n\nfrom python as runtime\nCOPY --from=build /app /app\n\nFROM runtime AS debug\nRUN pip install debugpy\n";
        let appended = with_runner(dockerfile, Some("RUNTIME"));
        assert_eq!(
            appended,
            "FROM python AS build\nRUN uv sync\n\nfrom python as runtime\nCOPY --from=build /app /app\n\n\
             # Added by cargo xtask deploy: the runner of the run-migrations init container.\n\
             COPY .colony-deploy/run-migrations /usr/local/bin/run-migrations\n\n\
             FROM runtime AS debug\nRUN pip install debugpy\n"
        );
        // The last stage named as the target, or a stage that is not there
        // (the build then says so): at the end.
        assert!(with_runner(dockerfile, Some("debug")).ends_with("/usr/local/bin/run-migrations\n"));
        assert!(with_runner(dockerfile, Some("nope")).ends_with("/usr/local/bin/run-migrations\n"));
    }

    #[test]
    fn only_a_containerd_store_daemon_pushes_from_the_build_and_only_when_asked_to_push() {
        use builder::Builder::{BuildKit, Legacy};
        use Mode::{Build, Push};
        use PushMethod::{Auto, Docker, Fast};
        assert!(pushes_from_build(Push, Auto, BuildKit, true));
        assert!(pushes_from_build(Push, Fast, BuildKit, true));
        // The daemon's own push, asked for by name.
        assert!(!pushes_from_build(Push, Docker, BuildKit, true));
        // Docker 20.10's BuildKit stores only; the legacy builder pushes nothing.
        assert!(!pushes_from_build(Push, Auto, BuildKit, false));
        assert!(!pushes_from_build(Push, Auto, Legacy, true));
        // Builds alone (`build`, the warm-up) push nothing.
        assert!(!pushes_from_build(Build, Auto, BuildKit, true));
    }

    #[test]
    fn repository_paths_drop_the_host() {
        assert_eq!(
            repository_path("127.0.0.1:5000/colony-backend"),
            "colony-backend"
        );
        assert_eq!(
            repository_path("ghcr.io/colony-app/colony-backend"),
            "colony-app/colony-backend"
        );
    }

    #[test]
    fn a_retry_is_one_line_with_the_registry_s_answer() {
        let error = docker::DockerError::Push {
            repository: "127.0.0.1:5000/colony-frontend".into(),
            message: "Docker stream error: errors:\ndigest invalid\nmanifest blob unknown: blob unknown to registry\n".into(),
            hint: String::new(),
            transient: true,
        };
        assert_eq!(
            retry_line(2, Duration::from_secs(1), &error),
            "pushing 127.0.0.1:5000/colony-frontend failed: Docker stream error: errors: digest invalid; \
             manifest blob unknown: blob unknown to registry; retrying in 1 s (attempt 2 of 4)"
        );
    }

    #[test]
    fn a_failure_says_what_was_pushed_before_it() {
        let report = |component, push| ImageReport {
            component,
            repository: format!("r/colony-{component}"),
            tag: "abc".into(),
            digest: None,
            size: None,
            build: StepOutcome::Done(Duration::from_secs(1)),
            push,
        };
        assert_eq!(pushed_before(&[]), "nothing was pushed");
        let built_only = [report(Component::Backend, StepOutcome::NotRun)];
        assert_eq!(pushed_before(&built_only), "nothing was pushed");
        let pushed = [report(
            Component::Backend,
            StepOutcome::Done(Duration::from_secs(2)),
        )];
        assert_eq!(
            pushed_before(&pushed),
            "pushed before the failure, and not deployed: r/colony-backend:abc"
        );
    }

    #[test]
    fn the_table_shows_each_outcome() {
        let report = ImageReport {
            component: Component::Backend,
            repository: "r/colony-backend".into(),
            tag: "0123456789ab".into(),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            size: Some(5 * 1024 * 1024),
            build: StepOutcome::Done(Duration::from_millis(4200)),
            push: StepOutcome::InRegistry,
        };
        let table = render_table(&[report]);
        assert!(table.contains("backend   0123456789ab"), "{table}");
        assert!(
            table.contains("5.00 MiB")
                && table.contains("4.2 s")
                && table.contains("skipped (in registry)"),
            "{table}"
        );
        assert_eq!(human_bytes(512), "512 B");
    }
}

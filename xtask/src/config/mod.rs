//! Environments: deploy.toml, overridden by COLONY_* variables and flags.
//!
//! Parsing and validation are pure (text in, `Environment` or a list of
//! problems out); only `load` touches the file system. Unknown keys are
//! errors, so a typo never silently falls back to a default.

pub mod git;
pub mod inputs;
pub mod names;
pub mod platform;
pub mod rules;
pub mod values;

pub use platform::Platform;

/// Where the tool puts the runner in the backend image, and so where the
/// chart's init container and every exec of it find it.
pub const MIGRATIONS_BINARY_IN_IMAGE: &str = "/usr/local/bin/run-migrations";
pub use rules::RuleChoice;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::EnvOverrides;
use crate::error::input_error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    default_environment: Option<String>,
    #[serde(default)]
    environments: BTreeMap<String, EnvironmentEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentEntry {
    namespace: String,
    release: String,
    kube_context: String,
    registry: String,
    #[serde(default)]
    values: Vec<String>,
    chart: Option<String>,
    alembic_versions: Option<String>,
    backup_dir: Option<String>,
    helm_timeout: Option<String>,
    lock_stale_after: Option<String>,
    history_max: Option<u32>,
    hook: Option<String>,
    alembic_command: Option<String>,
    #[serde(default)]
    images: ImagesEntry,
    #[serde(default)]
    migrations: MigrationsEntry,
    #[serde(default)]
    rehearsal: RehearsalEntry,
}

/// `[environments.NAME.rehearsal]`: the migrations tried on a restore of
/// the fresh backup before Helm.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RehearsalEntry {
    enabled: Option<bool>,
    engine: Option<String>,
    image: Option<String>,
    bin_dir: Option<String>,
    working_dir: Option<String>,
}

/// `[environments.NAME.migrations]`: the SQL preview and its lint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationsEntry {
    preview_command: Option<String>,
    #[serde(default)]
    strict: bool,
    #[serde(default)]
    disabled_rules: Vec<String>,
    #[serde(default)]
    enabled_rules: Vec<String>,
    /// Variables of the deploying shell the preview may see (beside PATH,
    /// HOME and the locale): rendering runs the checkout's Python.
    #[serde(default)]
    preview_env: Vec<String>,
    /// How long a migration's statement may wait for a table lock.
    ddl_lock_timeout: Option<String>,
    /// How many more tries after such a timeout.
    ddl_lock_retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesEntry {
    /// Who pushes: "docker" (the daemon) or "fast" (this tool, from the
    /// daemon's export).
    push: Option<String>,
    #[serde(default)]
    backend: ImageEntry,
    #[serde(default)]
    frontend: ImageEntry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageEntry {
    context: Option<String>,
    dockerfile: Option<String>,
    repository: Option<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    #[serde(default)]
    also_tag_latest: bool,
    platform: Option<String>,
    /// `docker build --target`: the stage to build.
    target: Option<String>,
    /// `docker build --network`: the network of `RUN` steps.
    network: Option<String>,
    /// `docker build --secret id=ID,env=VAR|src=FILE`: build secrets by id.
    #[serde(default)]
    secrets: BTreeMap<String, SecretEntry>,
}

/// `images.<c>.secrets.ID = { env = "VAR" }` or `{ file = "PATH" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretEntry {
    env: Option<String>,
    file: Option<String>,
}

/// Where a build secret's value comes from; the value itself is read only
/// by the build's session, never by the plan or the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the deploying process.
    Env(String),
    /// A file (`~` and relative paths resolved against deploy.toml's directory).
    File(PathBuf),
}

impl std::fmt::Display for SecretSource {
    /// Where, never what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "the environment variable {name}"),
            SecretSource::File(path) => write!(f, "the file {}", path.display()),
        }
    }
}

/// One environment, resolved and validated.
#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    /// The directory of the config file; relative paths start here and
    /// commands run here.
    pub root: PathBuf,
    pub config_file: PathBuf,
    pub namespace: String,
    pub release: String,
    pub kube_context: String,
    pub registry: String,
    pub values: Vec<ValuesFile>,
    /// Relative to `root`, as Helm is given it.
    pub chart: String,
    pub alembic_versions: PathBuf,
    pub backup_dir: PathBuf,
    /// Parsed once at load (`parse_timeout`); Helm gets `helm_duration` of it.
    pub helm_timeout: Duration,
    /// The deploy lock is stale this long after its holder's last renewal.
    pub lock_stale_after: Duration,
    /// Helm's `--history-max` (revisions kept; 0: all); None: Helm's 10.
    pub history_max: Option<u32>,
    /// Run after every deploy and rollback (`commands::hook`), as argv.
    pub hook: Option<Vec<String>>,
    /// How the backend image runs Alembic, as argv (`alembic`, or `uv run
    /// --no-sync alembic`): the init container and every exec use it.
    pub alembic_command: Vec<String>,
    pub images: Vec<Image>,
    /// Who pushes the built images (`images.push`).
    pub image_push: PushMethod,
    pub migrations: MigrationSettings,
    pub rehearsal: RehearsalSettings,
}

/// Who pushes a built image to the registry (`images.push`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushMethod {
    /// The daemon starts, and hands over to this tool's push when what it
    /// reports sending is most of the image (`images::push::worth_taking_over`).
    #[default]
    Auto,
    /// The daemon, as `docker push` (gzip at Go's default level).
    Docker,
    /// This tool, from the daemon's export: each layer gzipped at the
    /// fastest level, incompressible bytes stored (`images::push`).
    Fast,
}

impl std::fmt::Display for PushMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PushMethod::Auto => "auto",
            PushMethod::Fast => "fast",
            PushMethod::Docker => "docker",
        })
    }
}

/// How a deploy rehearses its migrations (`rehearsal` in deploy.toml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RehearsalSettings {
    /// On by default; `--no-rehearsal` or `enabled = false` turn it off.
    pub enabled: bool,
    /// Where the throwaway PostgreSQL runs.
    pub engine: RehearsalEngine,
    /// The throwaway PostgreSQL's image; None: `postgres:<major>` of the
    /// server the backup was dumped from, as the chart's default image.
    pub image: Option<String>,
    /// Where Alembic runs in the backend image; None: the image's WORKDIR.
    pub working_dir: Option<String>,
}

impl Default for RehearsalSettings {
    fn default() -> Self {
        RehearsalSettings {
            enabled: true,
            engine: RehearsalEngine::Container,
            image: None,
            working_dir: None,
        }
    }
}

/// Where a rehearsal's throwaway PostgreSQL runs (`rehearsal.engine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RehearsalEngine {
    /// A container of `rehearsal.image` through the Docker Engine API.
    Container,
    /// This machine's `initdb`/`pg_ctl` (`rehearsal.bin_dir`, else the
    /// backup's major version's, e.g. `/usr/lib/postgresql/15/bin`).
    Local { bin_dir: Option<PathBuf> },
}

/// How a deploy previews and lints its migrations' SQL.
#[derive(Debug, Clone, Default)]
pub struct MigrationSettings {
    /// Alembic on this machine, for `upgrade --sql` [default: alembic_command].
    pub preview_command: Vec<String>,
    /// Findings refuse the deploy (also `--strict-migrations`).
    pub strict: bool,
    pub rules: RuleChoice,
    /// The deploying shell's variables the preview keeps (`preview_env`).
    pub preview_env: Vec<String>,
    /// run-migrations' `--ddl-lock-timeout` (the chart's value, and the
    /// rehearsal's); None: the chart's default.
    pub ddl_lock_timeout: Option<Duration>,
    /// run-migrations' `--ddl-lock-retries`; None: the chart's default.
    pub ddl_lock_retries: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ValuesFile {
    /// `~` expanded, relative paths joined to the root.
    pub path: PathBuf,
    pub exists: bool,
}

/// The two images of the app; its name is also the chart's values key.
/// Ordered as tables show them: the backend first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Backend,
    Frontend,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Backend => "backend",
            Component::Frontend => "frontend",
        }
    }
}

impl std::fmt::Display for Component {
    /// Honours width and alignment (`{:<8}`), for tables.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Image {
    pub component: Component,
    /// Build context, relative to the root.
    pub context: PathBuf,
    /// Dockerfile, relative to the context.
    pub dockerfile: PathBuf,
    /// `registry/repository`, without tag.
    pub reference: String,
    pub build_args: BTreeMap<String, String>,
    pub also_tag_latest: bool,
    /// The platform to build for (`linux/arm64`); None: the daemon's own.
    pub platform: Option<Platform>,
    /// The stage to build (`docker build --target`); None: the last.
    pub target: Option<String>,
    /// The network of `RUN` steps (`docker build --network`: `host`,
    /// `none`, a network's name); None: the daemon's default.
    pub network: Option<String>,
    /// Build secrets by id, for `RUN --mount=type=secret,id=ID`.
    pub secrets: BTreeMap<String, SecretSource>,
}

impl Image {
    /// 8 hex digits over what deploy.toml says about building this image
    /// and that changes what is built: the Dockerfile, the build args (their
    /// values too: hashed, never shown), the platform and the target. Part
    /// of the tag, so that a changed setting never reuses a tag built
    /// without it. (The network and the secrets are left out: what a build
    /// may reach, not what it makes.) Pure.
    pub fn settings_fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |name: &str, value: &str| {
            hasher.update(format!("{name}\0{}\0{value}\0", value.len()));
        };
        field("dockerfile", &self.dockerfile.display().to_string());
        for (key, value) in &self.build_args {
            field("build-arg", &format!("{key}={value}"));
        }
        if let Some(platform) = &self.platform {
            field("platform", &platform.to_string());
        }
        if let Some(target) = &self.target {
            field("target", target);
        }
        format!("{:x}", hasher.finalize())[..8].to_string()
    }
}

impl Environment {
    pub fn missing_values_files(&self) -> Vec<&Path> {
        self.values
            .iter()
            .filter(|v| !v.exists)
            .map(|v| v.path.as_path())
            .collect()
    }

    /// For commands that act: every values file must exist.
    pub fn require_values_files(&self) -> Result<()> {
        match self.missing_values_files().as_slice() {
            [] => Ok(()),
            missing => Err(input_error(format!(
                "{}\n  create it, or point --values / COLONY_VALUES at the right file",
                missing
                    .iter()
                    .map(|p| format!("values file {} does not exist", p.display()))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))),
        }
    }

    pub fn image(&self, component: Component) -> &Image {
        self.images
            .iter()
            .find(|i| i.component == component)
            .expect("images are always backend and frontend")
    }
}

/// The root of this checkout: the parent of xtask's own manifest directory
/// (matklad's cargo-xtask convention).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits one level below the workspace root")
        .to_path_buf()
}

/// Reads the config file and resolves one environment (`None`: the file's
/// `default_environment`).
pub fn load(env_name: Option<&str>, overrides: &EnvOverrides) -> Result<Environment> {
    let config_file = match &overrides.config {
        Some(path) => std::path::absolute(path)?,
        None => workspace_root().join("deploy.toml"),
    };
    let text = std::fs::read_to_string(&config_file).map_err(|e| {
        input_error(format!(
            "cannot read the environments file {}: {e}\n  it describes each environment; see README.md, or pass --config FILE",
            config_file.display()
        ))
    })?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let root = config_file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut env = resolve(&text, &config_file, env_name, overrides, home.as_deref())?;
    env.root = root;
    for values in &mut env.values {
        values.exists = values.path.is_file();
    }
    Ok(env)
}

/// Pure: config text + overrides → a validated environment (file existence
/// not yet checked). Every problem is reported at once, each with its source.
fn resolve(
    text: &str,
    config_file: &Path,
    env_name: Option<&str>,
    overrides: &EnvOverrides,
    home: Option<&Path>,
) -> Result<Environment> {
    let shown = config_file.display();
    let file: ConfigFile = toml::from_str(text)
        .map_err(|e| input_error(format!("{shown} is not a valid environments file: {e}")))?;
    let (name, entry) = select(&file, env_name, config_file)?;
    let mut env = with_defaults(name, entry, config_file, overrides, home);
    let file_name = config_file
        .file_name()
        .map_or(shown.to_string(), |n| n.to_string_lossy().into_owned());
    let mut problems = problems(&env, &origins(overrides, &file_name));
    let parsed = parse_settings(&mut env, entry, home);
    problems.extend(
        parsed
            .into_iter()
            .map(|p| format!("{p} (from {file_name})")),
    );
    if problems.is_empty() {
        Ok(env)
    } else {
        Err(input_error(format!(
            "environment {:?} ({shown}, flags and COLONY_* variables) is invalid:\n  - {}",
            env.name,
            problems.join("\n  - ")
        )))
    }
}

/// The environment asked for (or the file's default), or an error naming
/// the ones the file defines.
fn select<'a>(
    file: &'a ConfigFile,
    env_name: Option<&str>,
    config_file: &Path,
) -> Result<(String, &'a EnvironmentEntry)> {
    let shown = config_file.display();
    let Some(name) = env_name.or(file.default_environment.as_deref()) else {
        return Err(input_error(format!(
            "no environment given and {shown} sets no default_environment"
        )));
    };
    match file.environments.get(name) {
        Some(entry) => Ok((name.to_string(), entry)),
        None if file.environments.is_empty() => Err(input_error(format!(
            "unknown environment {name:?}: {shown} defines none"
        ))),
        None => Err(input_error(format!(
            "unknown environment {name:?}: {shown} defines {}",
            file.environments
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The entry with flags and variables over it, and defaults for what
/// neither sets; the settings that need parsing keep their defaults here.
fn with_defaults(
    name: String,
    entry: &EnvironmentEntry,
    config_file: &Path,
    overrides: &EnvOverrides,
    home: Option<&Path>,
) -> Environment {
    let root = config_file.parent().unwrap_or(Path::new("/"));
    let expand = |p: &str| expand_path(p, root, home);
    let pick = |flag: &Option<String>, file_value: &str| {
        flag.clone().unwrap_or_else(|| file_value.to_string())
    };
    let registry = pick(&overrides.registry, &entry.registry);
    let values_as_written = if overrides.values.is_empty() {
        &entry.values
    } else {
        &overrides.values
    };
    Environment {
        name,
        root: root.to_path_buf(),
        config_file: config_file.to_path_buf(),
        namespace: pick(&overrides.namespace, &entry.namespace),
        release: pick(&overrides.release, &entry.release),
        kube_context: pick(&overrides.kube_context, &entry.kube_context),
        values: values_as_written
            .iter()
            .map(|v| ValuesFile {
                path: expand(v),
                exists: false,
            })
            .collect(),
        chart: entry.chart.clone().unwrap_or_else(|| "helm/colony".into()),
        alembic_versions: PathBuf::from(
            entry
                .alembic_versions
                .as_deref()
                .unwrap_or("backend/alembic/versions"),
        ),
        backup_dir: expand(
            entry
                .backup_dir
                .as_deref()
                .unwrap_or("~/.local/state/colony/backups"),
        ),
        helm_timeout: Duration::from_secs(600),
        lock_stale_after: Duration::from_secs(60),
        history_max: entry.history_max,
        hook: None,
        alembic_command: vec!["alembic".into()],
        migrations: MigrationSettings::default(),
        rehearsal: RehearsalSettings::default(),
        images: vec![
            image(Component::Backend, &entry.images.backend, &registry),
            image(Component::Frontend, &entry.images.frontend, &registry),
        ],
        image_push: PushMethod::default(),
        registry,
    }
}

/// Where each overridable setting came from, for the problems' wording.
fn origins(overrides: &EnvOverrides, file_name: &str) -> Origins {
    Origins {
        namespace: origin(
            &overrides.namespace,
            "COLONY_NAMESPACE",
            "--namespace",
            file_name,
        ),
        release: origin(&overrides.release, "COLONY_RELEASE", "--release", file_name),
        kube_context: origin(
            &overrides.kube_context,
            "COLONY_KUBE_CONTEXT",
            "--kube-context",
            file_name,
        ),
        registry: origin(
            &overrides.registry,
            "COLONY_REGISTRY",
            "--registry",
            file_name,
        ),
    }
}

/// The file's settings that are parsed (commands, platforms, migrations'
/// rules, the Helm timeout) into `env`; returns the problems found.
fn parse_settings(
    env: &mut Environment,
    entry: &EnvironmentEntry,
    home: Option<&Path>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(text) = &entry.alembic_command {
        match parse_command("alembic_command", text) {
            Ok(argv) => env.alembic_command = argv,
            Err(problem) => problems.push(problem),
        }
    }
    match entry.images.push.as_deref() {
        None | Some("auto") => env.image_push = PushMethod::Auto,
        Some("docker") => env.image_push = PushMethod::Docker,
        Some("fast") => env.image_push = PushMethod::Fast,
        Some(other) => problems.push(format!(
            "images.push: {other:?} is not a way to push: \"auto\" (the default: the daemon pushes, and this tool takes over when most of the image is new to the registry), \"docker\" (the daemon pushes, as `docker push`) or \"fast\" (this tool pushes from the daemon's export, gzip at its fastest, incompressible bytes stored); on a daemon with the containerd image store, \"auto\" and \"fast\" let BuildKit push from the build"
        )),
    }
    for (image, entry) in env
        .images
        .iter_mut()
        .zip([&entry.images.backend, &entry.images.frontend])
    {
        if let Some(text) = &entry.platform {
            match Platform::parse(text) {
                Ok(platform) => image.platform = Some(platform),
                Err(problem) => {
                    problems.push(format!("images.{}.platform: {problem}", image.component))
                }
            }
        }
        for (id, secret) in &entry.secrets {
            match secret_source(id, secret, &env.root, home) {
                Ok(source) => {
                    image.secrets.insert(id.clone(), source);
                }
                Err(problem) => problems.push(format!(
                    "images.{}.secrets.{id}: {problem}",
                    image.component
                )),
            }
        }
        for (key, value, slot) in [
            ("target", &entry.target, &mut image.target),
            ("network", &entry.network, &mut image.network),
        ] {
            if let Some(text) = value {
                match build_word(text) {
                    Ok(word) => *slot = Some(word),
                    Err(problem) => {
                        problems.push(format!("images.{}.{key}: {problem}", image.component))
                    }
                }
            }
        }
    }
    match migration_settings(&entry.migrations, &env.alembic_command) {
        Ok(settings) => env.migrations = settings,
        Err(found) => problems.extend(found),
    }
    match rehearsal_settings(&entry.rehearsal) {
        Ok(settings) => env.rehearsal = settings,
        Err(found) => problems.extend(found),
    }
    if let Some(text) = &entry.helm_timeout {
        match parse_timeout("helm_timeout", text) {
            Ok(duration) => env.helm_timeout = duration,
            Err(problem) => problems.push(problem),
        }
    }
    if let Some(text) = &entry.hook {
        // Run here, not in a pod: a word may hold spaces (`sh -c '…'`).
        match shell_words::split(text) {
            Ok(argv) if !argv.is_empty() => env.hook = Some(argv),
            Ok(_) => problems.push(
                "hook is empty; write the command to run, e.g. \"scripts/notify-chat.sh\"".into(),
            ),
            Err(e) => problems.push(format!("hook {text:?} does not split into words: {e}")),
        }
    }
    if let Some(text) = &entry.lock_stale_after {
        match parse_timeout("lock_stale_after", text) {
            Ok(duration) => env.lock_stale_after = duration,
            Err(problem) => problems.push(problem),
        }
    }
    problems
}

/// The rehearsal's image is one word (an image reference); its working
/// directory an absolute path in the image.
fn rehearsal_settings(
    entry: &RehearsalEntry,
) -> std::result::Result<RehearsalSettings, Vec<String>> {
    let mut problems = Vec::new();
    if let Some(image) = &entry.image {
        if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            problems.push(format!(
                "rehearsal.image: {image:?} is not an image reference (one word, e.g. \"postgres:16\")"
            ));
        }
    }
    if let Some(dir) = &entry.working_dir {
        if !dir.starts_with('/') {
            problems.push(format!(
                "rehearsal.working_dir: {dir:?} must be an absolute path in the backend image (e.g. \"/app\")"
            ));
        }
    }
    let engine = match rehearsal_engine(entry) {
        Ok(engine) => Some(engine),
        Err(problem) => {
            problems.push(problem);
            None
        }
    };
    let Some(engine) = engine.filter(|_| problems.is_empty()) else {
        return Err(problems);
    };
    Ok(RehearsalSettings {
        enabled: entry.enabled.unwrap_or(true),
        engine,
        image: entry.image.clone(),
        working_dir: entry.working_dir.clone(),
    })
}

/// `engine = "container"` (the default) or `"local"`; `image` belongs to
/// the first, `bin_dir` (absolute) to the second.
fn rehearsal_engine(entry: &RehearsalEntry) -> std::result::Result<RehearsalEngine, String> {
    match entry.engine.as_deref().unwrap_or("container") {
        "container" => match &entry.bin_dir {
            Some(_) => Err("rehearsal.bin_dir is for engine = \"local\"; the container engine runs rehearsal.image".into()),
            None => Ok(RehearsalEngine::Container),
        },
        "local" => match (&entry.image, &entry.bin_dir) {
            (Some(_), _) => Err("rehearsal.image is for engine = \"container\"; the local engine runs this machine's initdb and pg_ctl (rehearsal.bin_dir)".into()),
            (None, Some(dir)) if !dir.starts_with('/') => Err(format!(
                "rehearsal.bin_dir: {dir:?} must be an absolute directory holding initdb and pg_ctl (e.g. \"/usr/lib/postgresql/16/bin\")"
            )),
            (None, dir) => Ok(RehearsalEngine::Local {
                bin_dir: dir.as_ref().map(PathBuf::from),
            }),
        },
        other => Err(format!(
            "rehearsal.engine: {other:?} is not an engine: \"container\" (a container of rehearsal.image through Docker) or \"local\" (this machine's initdb and pg_ctl)"
        )),
    }
}

fn image(component: Component, entry: &ImageEntry, registry: &str) -> Image {
    let repository = entry
        .repository
        .clone()
        .unwrap_or_else(|| format!("colony-{component}"));
    Image {
        component,
        context: PathBuf::from(entry.context.as_deref().unwrap_or(component.as_str())),
        dockerfile: PathBuf::from(entry.dockerfile.as_deref().unwrap_or("Dockerfile")),
        reference: format!("{}/{repository}", registry.trim_end_matches('/')),
        build_args: entry.build_args.clone(),
        also_tag_latest: entry.also_tag_latest,
        platform: None,
        target: None,
        network: None,
        secrets: BTreeMap::new(),
    }
}

/// One secret's source: exactly one of `env` and `file`, and an id BuildKit
/// accepts (`RUN --mount=type=secret,id=ID`).
fn secret_source(
    id: &str,
    entry: &SecretEntry,
    root: &Path,
    home: Option<&Path>,
) -> std::result::Result<SecretSource, String> {
    if build_word(id).is_err() {
        return Err(format!(
            "{id:?} is not a secret id (letters, digits, '_', '.', '-')"
        ));
    }
    match (&entry.env, &entry.file) {
        (Some(name), None) if !name.is_empty() => Ok(SecretSource::Env(name.clone())),
        (None, Some(path)) if !path.is_empty() => {
            Ok(SecretSource::File(expand_path(path, root, home)))
        }
        _ => Err("give exactly one of env = \"VARIABLE\" or file = \"PATH\"".into()),
    }
}

/// A build stage's or a network's name: what `docker build --target` and
/// `--network` take (letters, digits, `_`, `.`, `-`).
fn build_word(text: &str) -> std::result::Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a stage or network name (letters, digits, '_', '.', '-')"
        ))
    }
}

/// Where each overridable setting came from, for messages.
struct Origins {
    namespace: String,
    release: String,
    kube_context: String,
    registry: String,
}

/// The flag, the COLONY_* variable (clap fills the same field from either)
/// or the file.
fn origin(value: &Option<String>, variable: &str, flag: &str, file: &str) -> String {
    match value {
        None => file.to_string(),
        Some(v) if std::env::var(variable).ok().as_deref() == Some(v.as_str()) => {
            variable.to_string()
        }
        Some(_) => flag.to_string(),
    }
}

fn problems(env: &Environment, origins: &Origins) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |result: Result<(), String>, origin: &str| {
        if let Err(problem) = result {
            problems.push(format!("{problem} (from {origin})"));
        }
    };
    check(names::check_namespace(&env.namespace), &origins.namespace);
    check(names::check_release(&env.release), &origins.release);
    check(
        names::check_kube_context(&env.kube_context),
        &origins.kube_context,
    );
    let registry_ok = names::check_registry(&env.registry);
    let registry_valid = registry_ok.is_ok();
    check(registry_ok, &origins.registry);
    if registry_valid {
        for image in &env.images {
            let repository =
                image.reference[env.registry.trim_end_matches('/').len() + 1..].to_string();
            check(names::check_repository(&repository), "images.*.repository");
        }
    }
    problems
}

/// The bounds of a timeout: below a second is a typo (Helm would read
/// `500ms` as half a second), above a day is one too.
const TIMEOUT_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// Parses a timeout once, at load, with humantime (`90s`, `10m`, `1h30m`,
/// `1h 30m`): whole seconds from 1 s to 24 h. Everything else is refused,
/// naming `what`, before any step runs.
pub fn parse_timeout(what: &str, text: &str) -> Result<Duration, String> {
    let refuse = |why: String| {
        format!("{what} {text:?} {why}; write a duration like 90s, 10m or 1h30m (1 s to 24 h)")
    };
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| refuse(format!("is not a duration ({e})")))?;
    if duration.subsec_nanos() != 0 {
        return Err(refuse("is not a whole number of seconds".into()));
    }
    if duration < TIMEOUT_BOUNDS.0 || duration > TIMEOUT_BOUNDS.1 {
        return Err(refuse("is out of bounds".into()));
    }
    Ok(duration)
}

/// A command as argv, split by shell-words (quotes respected, no shell run).
/// Each word must be free of whitespace: run-migrations, in the pod, splits
/// its `--alembic-cmd` on whitespace.
pub fn parse_command(what: &str, text: &str) -> Result<Vec<String>, String> {
    let words = shell_words::split(text)
        .map_err(|e| format!("{what} {text:?} does not split into words: {e}"))?;
    if words.is_empty() {
        return Err(format!("{what} is empty; write how the image runs it, e.g. \"alembic\" or \"uv run --no-sync alembic\""));
    }
    if let Some(word) = words
        .iter()
        .find(|w| w.chars().any(char::is_whitespace) || w.is_empty())
    {
        return Err(format!("{what} {text:?}: the word {word:?} holds whitespace, which the init container cannot pass on"));
    }
    // The words run as a command (kubectl exec, the init container's
    // argv), never through a shell: what only a shell understands would
    // reach the program as an argument, or name no program at all.
    if words[0].contains('=') {
        return Err(format!(
            "{what} {text:?}: {:?} is a variable assignment, which only a shell understands; \
             set the variable in the image or the chart's backend.extraEnv",
            words[0]
        ));
    }
    let shell_only = |w: &str| {
        matches!(w, "&&" | "||" | "|" | ";" | "&" | ">" | ">>" | "<" | "2>&1")
            || w.contains("$(")
            || w.contains('`')
            || w.ends_with(';')
    };
    if let Some(word) = words.iter().find(|w| shell_only(w)) {
        return Err(format!(
            "{what} {text:?}: {word:?} is shell syntax, and the command runs without a shell; \
             put the steps in a script inside the image and name it here"
        ));
    }
    Ok(words)
}

fn migration_settings(
    entry: &MigrationsEntry,
    alembic_command: &[String],
) -> Result<MigrationSettings, Vec<String>> {
    let mut problems = Vec::new();
    let preview_command = match &entry.preview_command {
        Some(text) => parse_command("migrations.preview_command", text).unwrap_or_else(|p| {
            problems.push(p);
            Vec::new()
        }),
        None => alembic_command.to_vec(),
    };
    let mut rules = |key: &str, names: &[String]| {
        names
            .iter()
            .filter_map(|name| {
                rules::parse_rule(name)
                    .map_err(|p| problems.push(format!("migrations.{key}: {p}")))
                    .ok()
            })
            .collect::<Vec<_>>()
    };
    let choice = RuleChoice {
        disabled: rules("disabled_rules", &entry.disabled_rules),
        enabled: rules("enabled_rules", &entry.enabled_rules),
    };
    for name in &entry.preview_env {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            problems.push(format!(
                "migrations.preview_env: {name:?} is not an environment variable's name"
            ));
        }
    }
    let ddl_lock_timeout = entry.ddl_lock_timeout.as_deref().and_then(|text| {
        parse_timeout("migrations.ddl_lock_timeout", text)
            .map_err(|p| problems.push(p))
            .ok()
    });
    if let Some(retries) = entry.ddl_lock_retries.filter(|r| *r > 20) {
        problems.push(format!(
            "migrations.ddl_lock_retries = {retries}: at most 20 (each waits longer than the one before)"
        ));
    }
    if problems.is_empty() {
        Ok(MigrationSettings {
            preview_command,
            strict: entry.strict,
            rules: choice,
            preview_env: entry.preview_env.clone(),
            ddl_lock_timeout,
            ddl_lock_retries: entry.ddl_lock_retries,
        })
    } else {
        Err(problems)
    }
}

/// A duration as Helm's `--timeout` reads it, identically: `{n}s`.
pub fn helm_duration(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

/// `~/x` → `$HOME/x`; relative paths are relative to the config's directory.
fn expand_path(path: &str, root: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ if path == "~" && home.is_some() => home.map(Path::to_path_buf).unwrap_or_default(),
        _ => root.join(path),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The colony-dev environment of the test config, for other modules' tests.
    pub(crate) fn environment() -> Environment {
        resolve(
            CONFIG,
            Path::new("/repo/deploy.toml"),
            None,
            &EnvOverrides::default(),
            Some(Path::new("/home/dev")),
        )
        .unwrap()
    }

    const CONFIG: &str = r#"
default_environment = "colony-dev"

[environments.colony-dev]
namespace = "colony-dev"
release = "colony"
kube_context = "homelab"
registry = "registry.homelab.lan:5000"
values = ["~/homelab/colony-dev/my-values.yaml", "helm/extra.yaml"]

[environments.colony-dev.images.backend]
build_args = { PYTHON_VERSION = "3.12" }

[environments.staging]
namespace = "colony-staging"
release = "colony"
kube_context = "staging"
registry = "ghcr.io/colony-app"
"#;

    fn resolve_with(env: Option<&str>, overrides: EnvOverrides) -> Result<Environment> {
        resolve(
            CONFIG,
            Path::new("/repo/deploy.toml"),
            env,
            &overrides,
            Some(Path::new("/home/dev")),
        )
    }

    fn error_of(result: Result<Environment>) -> (String, i32) {
        let err = result.unwrap_err();
        (format!("{err:#}"), crate::error::exit_code(&err))
    }

    #[test]
    fn resolves_defaults_and_expands_paths() {
        let env = resolve_with(None, EnvOverrides::default()).unwrap();
        assert_eq!(env.name, "colony-dev");
        assert_eq!(
            env.values[0].path,
            Path::new("/home/dev/homelab/colony-dev/my-values.yaml")
        );
        assert_eq!(env.values[1].path, Path::new("/repo/helm/extra.yaml"));
        assert_eq!(env.chart, "helm/colony");
        assert_eq!(env.alembic_versions, Path::new("backend/alembic/versions"));
        let backend = env.image(Component::Backend);
        assert_eq!(
            backend.reference,
            "registry.homelab.lan:5000/colony-backend"
        );
        assert_eq!(backend.context, Path::new("backend"));
        assert_eq!(backend.build_args["PYTHON_VERSION"], "3.12");
        assert_eq!(
            env.image(Component::Frontend).reference,
            "registry.homelab.lan:5000/colony-frontend"
        );
    }

    #[test]
    fn overrides_win() {
        let overrides = EnvOverrides {
            namespace: Some("colony-test".into()),
            registry: Some("127.0.0.1:5000".into()),
            values: vec!["/tmp/v.yaml".into()],
            ..Default::default()
        };
        let env = resolve_with(Some("staging"), overrides).unwrap();
        assert_eq!(env.namespace, "colony-test");
        assert_eq!(
            env.image(Component::Backend).reference,
            "127.0.0.1:5000/colony-backend"
        );
        assert_eq!(env.values.len(), 1);
    }

    #[test]
    fn unknown_environment_lists_the_known_ones() {
        let (message, code) = error_of(resolve_with(Some("prod"), EnvOverrides::default()));
        assert_eq!(code, 2);
        assert!(
            message.contains(
                "unknown environment \"prod\": /repo/deploy.toml defines colony-dev, staging"
            ),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = CONFIG.replace(
            "kube_context = \"homelab\"",
            "kube_context = \"homelab\"\nnamspace = \"x\"",
        );
        let err = resolve(
            &text,
            Path::new("/repo/deploy.toml"),
            None,
            &EnvOverrides::default(),
            None,
        )
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("unknown field `namspace`"), "{message}");
        assert_eq!(crate::error::exit_code(&err), 2);
    }

    #[test]
    fn every_invalid_name_is_reported() {
        let overrides = EnvOverrides {
            namespace: Some("Colony_Dev".into()),
            release: Some("-colony".into()),
            registry: Some("".into()),
            ..Default::default()
        };
        let (message, code) = error_of(resolve_with(None, overrides));
        assert_eq!(code, 2);
        assert!(
            message.contains("namespace \"Colony_Dev\" is not a valid DNS-1123 label"),
            "{message}"
        );
        assert!(message.contains("release name \"-colony\""), "{message}");
        assert!(message.contains("registry is empty"), "{message}");
    }

    #[test]
    fn the_migrations_lock_timeout_and_retries_are_checked() {
        let with = |lines: &str| {
            resolve(
                &CONFIG.replace(
                    "[environments.colony-dev.images.backend]",
                    &format!(
                        "[environments.colony-dev.migrations]\n{lines}\n[environments.colony-dev.images.backend]"
                    ),
                ),
                Path::new("/repo/deploy.toml"),
                None,
                &EnvOverrides::default(),
                None,
            )
        };
        let env = with("ddl_lock_timeout = \"10s\"\nddl_lock_retries = 2").unwrap();
        assert_eq!(
            env.migrations.ddl_lock_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(env.migrations.ddl_lock_retries, Some(2));
        for (bad, says) in [
            (
                "ddl_lock_timeout = \"0s\"",
                "migrations.ddl_lock_timeout \"0s\" is out of bounds",
            ),
            (
                "ddl_lock_timeout = \"soon\"",
                "migrations.ddl_lock_timeout \"soon\" is not a duration",
            ),
            (
                "ddl_lock_retries = 21",
                "migrations.ddl_lock_retries = 21: at most 20",
            ),
        ] {
            let (message, code) = error_of(with(bad));
            assert_eq!(code, 2);
            assert!(message.contains(says), "{message}");
        }
    }

    #[test]
    fn images_are_pushed_by_the_daemon_with_a_hand_over_unless_one_way_is_asked() {
        let with = |lines: &str| {
            resolve(
                &CONFIG.replace(
                    "[environments.colony-dev.images.backend]",
                    &format!(
                        "[environments.colony-dev.images]\n{lines}\n[environments.colony-dev.images.backend]"
                    ),
                ),
                Path::new("/repo/deploy.toml"),
                None,
                &EnvOverrides::default(),
                None,
            )
        };
        let default = resolve_with(None, EnvOverrides::default()).unwrap();
        assert_eq!(default.image_push, PushMethod::Auto);
        assert_eq!(
            with("push = \"auto\"").unwrap().image_push,
            PushMethod::Auto
        );
        assert_eq!(
            with("push = \"fast\"").unwrap().image_push,
            PushMethod::Fast
        );
        assert_eq!(
            with("push = \"docker\"").unwrap().image_push,
            PushMethod::Docker
        );
        let (message, code) = error_of(with("push = \"zstd\""));
        assert_eq!(code, 2);
        assert!(
            message.contains("images.push: \"zstd\" is not a way to push: \"auto\"")
                && message.contains("\"docker\"")
                && message.contains("\"fast\""),
            "{message}"
        );
    }

    #[test]
    fn the_rehearsal_engine_is_a_container_or_this_machine_s_postgresql() {
        let with = |lines: &str| {
            resolve(
                &CONFIG.replace(
                    "[environments.colony-dev.images.backend]",
                    &format!(
                        "[environments.colony-dev.rehearsal]\n{lines}\n[environments.colony-dev.images.backend]"
                    ),
                ),
                Path::new("/repo/deploy.toml"),
                None,
                &EnvOverrides::default(),
                None,
            )
        };
        let default = resolve_with(None, EnvOverrides::default()).unwrap();
        assert_eq!(default.rehearsal.engine, RehearsalEngine::Container);
        let local = with("engine = \"local\"").unwrap();
        assert_eq!(
            local.rehearsal.engine,
            RehearsalEngine::Local { bin_dir: None }
        );
        let pinned = with("engine = \"local\"\nbin_dir = \"/opt/pg16/bin\"").unwrap();
        assert_eq!(
            pinned.rehearsal.engine,
            RehearsalEngine::Local {
                bin_dir: Some(PathBuf::from("/opt/pg16/bin"))
            }
        );
        for (bad, says) in [
            (
                "engine = \"podman\"",
                "rehearsal.engine: \"podman\" is not an engine",
            ),
            (
                "engine = \"local\"\nimage = \"postgres:16\"",
                "rehearsal.image is for engine = \"container\"",
            ),
            (
                "bin_dir = \"/usr/lib/postgresql/16/bin\"",
                "rehearsal.bin_dir is for engine = \"local\"",
            ),
            (
                "engine = \"local\"\nbin_dir = \"pg/bin\"",
                "rehearsal.bin_dir: \"pg/bin\" must be an absolute directory",
            ),
        ] {
            let (message, code) = error_of(with(bad));
            assert_eq!(code, 2, "{bad}");
            assert!(message.contains(says), "{bad}: {message}");
        }
    }

    #[test]
    fn migration_settings_default_to_the_alembic_command_and_check_rule_names() {
        let env = resolve_with(None, EnvOverrides::default()).unwrap();
        assert_eq!(env.migrations.preview_command, ["alembic"]);
        assert!(!env.migrations.strict);
        let text = CONFIG.replace(
            "[environments.colony-dev.images.backend]",
            "alembic_command = \"uv run --no-sync alembic\"\n\
             [environments.colony-dev.migrations]\n\
             strict = true\n\
             disabled_rules = [\"ban-drop-column\"]\n\
             enabled_rules = [\"prefer-text-field\"]\n\
             [environments.colony-dev.images.backend]",
        );
        let parse = |text: &str| {
            resolve(
                text,
                Path::new("/repo/deploy.toml"),
                None,
                &EnvOverrides::default(),
                None,
            )
        };
        let env = parse(&text).unwrap();
        assert_eq!(
            env.migrations.preview_command,
            ["uv", "run", "--no-sync", "alembic"]
        );
        assert!(env.migrations.strict);
        assert_eq!(env.migrations.rules.disabled.len(), 1);
        assert_eq!(env.migrations.rules.enabled.len(), 1);
        let (message, code) = error_of(parse(&text.replace("ban-drop-column", "ban-drop-colum")));
        assert_eq!(code, 2);
        assert!(
            message.contains("migrations.disabled_rules: unknown Squawk rule \"ban-drop-colum\"")
                && message.contains("(from deploy.toml)"),
            "{message}"
        );
    }

    #[test]
    fn commands_split_like_a_shell_without_one() {
        assert_eq!(
            parse_command("c", "uv run --no-sync alembic").unwrap(),
            ["uv", "run", "--no-sync", "alembic"]
        );
        assert!(parse_command("c", "'/opt/my venv/bin/alembic'")
            .unwrap_err()
            .contains("holds whitespace"));
        assert!(parse_command("c", "").unwrap_err().contains("is empty"));
        assert!(parse_command("c", "uv run 'alembic")
            .unwrap_err()
            .contains("does not split"));
        for shell in [
            "cd /app && alembic",
            "alembic; rm -rf /",
            "alembic | tee log",
            "$(which alembic)",
            "`which alembic`",
        ] {
            let refused = parse_command("c", shell).unwrap_err();
            assert!(refused.contains("shell syntax"), "{shell}: {refused}");
        }
        assert!(parse_command("c", "PYTHONPATH=/app alembic")
            .unwrap_err()
            .contains("variable assignment"));
        // An `=` in a later word is an argument, as Alembic's -x takes it.
        assert!(parse_command("c", "alembic -x note=a,b").is_ok());
    }

    #[test]
    fn a_build_target_and_network_are_names() {
        let parse = |image: &str| {
            let text = CONFIG.replace(
                "build_args = { PYTHON_VERSION = \"3.12\" }",
                &format!("build_args = {{ PYTHON_VERSION = \"3.12\" }}\n{image}"),
            );
            resolve(
                &text,
                Path::new("/repo/deploy.toml"),
                None,
                &EnvOverrides::default(),
                None,
            )
        };
        let env = parse("target = \"runtime\"\nnetwork = \"host\"").unwrap();
        let backend = env.image(Component::Backend);
        assert_eq!(backend.target.as_deref(), Some("runtime"));
        assert_eq!(backend.network.as_deref(), Some("host"));
        let (message, code) = error_of(parse("target = \"run time\"\nnetwork = \"\""));
        assert_eq!(code, 2);
        assert!(
            message.contains("images.backend.target: \"run time\" is not a stage or network name")
                && message.contains("images.backend.network: \"\" is not a stage"),
            "{message}"
        );
    }

    #[test]
    fn build_secrets_name_where_each_value_comes_from() {
        let parse = |secrets: &str| {
            let text = CONFIG.replace(
                "build_args = { PYTHON_VERSION = \"3.12\" }",
                &format!("build_args = {{ PYTHON_VERSION = \"3.12\" }}\nsecrets = {secrets}"),
            );
            resolve(
                &text,
                Path::new("/repo/deploy.toml"),
                None,
                &EnvOverrides::default(),
                Some(Path::new("/home/dev")),
            )
        };
        let env = parse(
            "{ pypi_token = { env = \"PYPI_TOKEN\" }, netrc = { file = \"~/.netrc\" }, ca = { file = \"certs/ca.pem\" } }",
        )
        .unwrap();
        let secrets = &env.image(Component::Backend).secrets;
        assert_eq!(
            secrets["pypi_token"],
            SecretSource::Env("PYPI_TOKEN".into())
        );
        assert_eq!(
            secrets["netrc"],
            SecretSource::File("/home/dev/.netrc".into())
        );
        assert_eq!(
            secrets["ca"],
            SecretSource::File("/repo/certs/ca.pem".into())
        );
        assert_eq!(
            secrets["pypi_token"].to_string(),
            "the environment variable PYPI_TOKEN"
        );
        let (message, code) = error_of(parse(
            "{ both = { env = \"A\", file = \"b\" }, none = {}, \"bad id\" = { env = \"C\" } }",
        ));
        assert_eq!(code, 2);
        for expected in [
            "images.backend.secrets.both: give exactly one of env",
            "images.backend.secrets.none: give exactly one of env",
            "images.backend.secrets.bad id: \"bad id\" is not a secret id",
        ] {
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn durations() {
        let parse = |text: &str| parse_timeout("helm_timeout", text);
        assert_eq!(parse("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse("1h 30m").unwrap().as_secs(), 5400);
        assert_eq!(parse("90s").unwrap().as_secs(), 90);
        assert_eq!(helm_duration(parse("10m").unwrap()), "600s");
        for (bad, why) in [
            ("10", "is not a duration"),
            ("ten minutes", "is not a duration"),
            ("10mh", "is not a duration"),
            ("1h99999999999999999m", ""),
            ("99999999999999999999s", ""),
            ("500ms", "whole number of seconds"),
            ("1500ms", "whole number of seconds"),
            ("25h", "is out of bounds"),
            ("0s", "is out of bounds"),
            ("", "is not a duration"),
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(
                error.contains(why) && error.contains("helm_timeout"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn every_build_setting_changes_the_image_s_fingerprint() {
        let env = environment();
        let base = env.image(Component::Backend).clone();
        let fingerprint = base.settings_fingerprint();
        assert_eq!(fingerprint.len(), 8);
        assert_eq!(base.settings_fingerprint(), fingerprint, "deterministic");
        let mut changes: Vec<Image> = Vec::new();
        let mut with = |change: &dyn Fn(&mut Image)| {
            let mut image = base.clone();
            change(&mut image);
            changes.push(image);
        };
        with(&|i| i.dockerfile = "Dockerfile.prod".into());
        with(&|i| {
            i.build_args.insert("APP_ENV".into(), "other".into());
        });
        with(&|i| i.platform = Platform::parse("linux/arm64").ok());
        with(&|i| i.target = Some("runtime".into()));
        for changed in &changes {
            assert_ne!(changed.settings_fingerprint(), fingerprint, "{changed:?}");
        }
        // What a build may reach is not what it makes.
        let mut network = base.clone();
        network.network = Some("host".into());
        assert_eq!(network.settings_fingerprint(), fingerprint);
    }
}

//! Which of the daemon's builders runs a build, and what a Dockerfile needs
//! of it. `docker build` has used BuildKit by default for years, so most
//! Dockerfiles written today may use its syntax (`RUN --mount=type=cache`,
//! `COPY --chmod`, heredocs); the legacy builder refuses those. Pure.

use std::fmt;

use serde::Serialize;

use crate::images::registry::DaemonView;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Builder {
    /// BuildKit through the Engine API (`version=2` and a session).
    BuildKit,
    /// The classic builder (`version=1`).
    Legacy,
}

impl fmt::Display for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Builder::BuildKit => "BuildKit",
            Builder::Legacy => "the legacy builder",
        })
    }
}

/// The builder and why it was chosen, said once in the plan and in doctor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub builder: Builder,
    pub why: String,
}

/// As the docker CLI decides: `DOCKER_BUILDKIT` when set (`0`/`false`:
/// legacy; `1`/`true`: BuildKit), else BuildKit where the daemon has it,
/// else the legacy builder. Without a daemon to ask, BuildKit is assumed
/// (the build itself will then say what the daemon lacks).
pub fn choose(docker_buildkit: Option<&str>, daemon: Option<&DaemonView>) -> Choice {
    let setting = docker_buildkit.map(str::trim).filter(|v| !v.is_empty());
    match setting.map(str::to_ascii_lowercase).as_deref() {
        Some("0" | "false") => Choice {
            builder: Builder::Legacy,
            why: "DOCKER_BUILDKIT=0".into(),
        },
        Some("1" | "true") => Choice {
            builder: Builder::BuildKit,
            why: "DOCKER_BUILDKIT=1".into(),
        },
        _ => match daemon {
            Some(view) if !view.buildkit => Choice {
                builder: Builder::Legacy,
                why: format!(
                    "the Docker daemon has no BuildKit ({})",
                    view.server.as_deref().unwrap_or("an unknown engine")
                ),
            },
            Some(_) => Choice {
                builder: Builder::BuildKit,
                why: "the daemon's, as `docker build` uses".into(),
            },
            None => Choice {
                builder: Builder::BuildKit,
                why: "assumed: no daemon answered to ask".into(),
            },
        },
    }
}

/// `choose` with this process's `DOCKER_BUILDKIT`.
pub fn choose_here(daemon: Option<&DaemonView>) -> Choice {
    choose(std::env::var("DOCKER_BUILDKIT").ok().as_deref(), daemon)
}

/// Whether a daemon offers BuildKit: a Linux engine from 18.09 on
/// (`docker info`'s OSType and ServerVersion, e.g. `20.10.24+dfsg1`).
pub fn daemon_has_buildkit(os_type: &str, server_version: &str) -> bool {
    let mut numbers = server_version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    os_type.eq_ignore_ascii_case("linux") && (major, minor) >= (18, 9)
}

/// What a Dockerfile asks of the builder, with its line numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Syntax only BuildKit understands.
    pub buildkit: Vec<String>,
    /// Build secrets the Dockerfile mounts: (where, the secret's id).
    pub secrets: Vec<(String, String)>,
    /// SSH forwarding, which the tool cannot serve yet (the Engine API
    /// client offers BuildKit no SSH agent service).
    pub unserved: Vec<String>,
    /// It has `RUN` steps (which need a network unless told `none`).
    pub runs: bool,
}

/// Reads a Dockerfile's instructions (continuation lines joined) for
/// BuildKit-only syntax.
pub fn needs(dockerfile: &str) -> Needs {
    let mut needs = Needs::default();
    for (line, instruction) in instructions(dockerfile) {
        let words: Vec<&str> = instruction.split_whitespace().collect();
        let Some(keyword) = words.first().map(|w| w.to_ascii_uppercase()) else {
            continue;
        };
        needs.runs |= keyword == "RUN";
        let flags = words[1..].iter().take_while(|w| w.starts_with("--"));
        for flag in flags {
            let name = flag.split('=').next().unwrap_or(flag);
            let buildkit_only = match keyword.as_str() {
                "RUN" => matches!(name, "--mount" | "--network" | "--security"),
                "COPY" | "ADD" => matches!(
                    name,
                    "--chmod"
                        | "--link"
                        | "--parents"
                        | "--exclude"
                        | "--checksum"
                        | "--keep-git-dir"
                ),
                _ => false,
            };
            if buildkit_only {
                needs
                    .buildkit
                    .push(format!("line {line}: {keyword} {flag}"));
            }
            if name == "--mount" && flag.contains("type=secret") {
                let at = format!("line {line}: {keyword} {flag}");
                needs.secrets.push((at, secret_id(flag)));
            }
            if name == "--mount" && flag.contains("type=ssh") {
                needs
                    .unserved
                    .push(format!("line {line}: {keyword} {flag}"));
            }
        }
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") && instruction.contains("<<") {
            needs.buildkit.push(format!("line {line}: a heredoc (<<)"));
        }
    }
    if let Some(syntax) = syntax_directive(dockerfile) {
        needs.buildkit.push(format!("line 1: # syntax={syntax}"));
    }
    needs
}

/// A secret mount's id: `id=`, else the base name of its `target=`, as
/// BuildKit's Dockerfile frontend defaults it.
fn secret_id(flag: &str) -> String {
    let options = flag.split_once('=').map_or("", |(_, rest)| rest);
    let option = |key: &str| {
        options
            .split(',')
            .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    option("id")
        .or_else(|| {
            option("target")
                .or(option("dst"))
                .and_then(|t| t.rsplit('/').next())
        })
        .unwrap_or_default()
        .to_string()
}

/// Everything that stops one image's build before it starts: the
/// builder's refusals, the network's and the secrets' (a mount that
/// deploy.toml does not provide).
pub fn image_refusals(
    image: &crate::config::Image,
    choice: &Choice,
    needs: &Needs,
    daemon: Option<&DaemonView>,
) -> Vec<String> {
    let component = image.component.as_str();
    let mut found = refusals(component, choice, needs);
    found.extend(
        needs
            .secrets
            .iter()
            .filter(|(_, id)| !image.secrets.contains_key(id))
            .map(|(at, id)| {
                format!(
                    "the {component} Dockerfile mounts the build secret {id:?} ({at}), which deploy.toml \
                     does not provide: set images.{component}.secrets.{id} = {{ env = \"VARIABLE\" }} \
                     (or {{ file = \"PATH\" }})"
                )
            }),
    );
    found.extend(network_refusal(
        component,
        needs,
        image.network.as_deref(),
        daemon,
    ));
    found.extend(secrets_network_refusal(image, daemon));
    found
}

/// Builds with secrets on a daemon this tool reaches by a Unix socket go
/// through the session it serves (`images::session`), as `docker build`'s
/// do, with any network. Elsewhere they go through BuildKit's gRPC API,
/// which bollard calls without entitlements: `network.host` is not granted
/// there, and a named network is not offered; `none` and the default
/// network are.
fn secrets_network_refusal(
    image: &crate::config::Image,
    daemon: Option<&DaemonView>,
) -> Option<String> {
    let network = image.network.as_deref()?;
    let session = daemon.is_some_and(|d| d.session);
    (!image.secrets.is_empty() && !session && !matches!(network, "none" | "default")).then(|| {
        format!(
            "images.{0}.network = {network:?} cannot be used with build secrets on a daemon \
             that is not reached by a Unix socket: BuildKit's gRPC API, which such builds go \
             through, is not granted other networks; use network = \"none\" (uv's cache and \
             bind mounts need none), or the default network",
            image.component
        )
    })
}

/// Why this Dockerfile cannot be built with this builder (empty: it can).
pub fn refusals(component: &str, choice: &Choice, needs: &Needs) -> Vec<String> {
    let mut refusals = Vec::new();
    if choice.builder == Builder::Legacy && !needs.buildkit.is_empty() {
        refusals.push(format!(
            "the {component} Dockerfile needs BuildKit ({}), but the build would use {} ({}); \
             use a daemon with BuildKit, or unset DOCKER_BUILDKIT",
            needs.buildkit.join("; "),
            choice.builder,
            choice.why
        ));
    }
    if choice.builder == Builder::BuildKit && !needs.unserved.is_empty() {
        refusals.push(format!(
            "the {component} Dockerfile forwards SSH ({}), which this tool cannot pass to BuildKit yet; \
             build that image with `docker build --ssh` and deploy with --skip-build",
            needs.unserved.join("; ")
        ));
    }
    refusals
}

/// A Dockerfile with `RUN` steps, built on the daemon's default network,
/// on a daemon without a bridge network (`dockerd --bridge=none`, some
/// rootless and homelab set-ups) fails at its first `RUN` with "network
/// bridge not found": refused before anything changes, with the fix.
pub fn network_refusal(
    component: &str,
    needs: &Needs,
    network: Option<&str>,
    daemon: Option<&DaemonView>,
) -> Option<String> {
    let no_bridge = daemon.is_some_and(|view| !view.bridge);
    (needs.runs && network.is_none() && no_bridge).then(|| {
        format!(
            "the {component} Dockerfile has RUN steps, but the Docker daemon has no bridge network for them: \
             set images.{component}.network = \"host\" (or \"none\") in deploy.toml, as `docker build --network host` would"
        )
    })
}

/// `(line number, instruction)` with continuation lines (`\`) joined and
/// comments and blank lines dropped.
fn instructions(dockerfile: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in dockerfile.lines().enumerate() {
        let line = raw.trim();
        if current.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        let (start, mut text) = current.take().unwrap_or((index + 1, String::new()));
        if line.starts_with('#') {
            current = Some((start, text)); // a comment inside a continuation
            continue;
        }
        match line.strip_suffix('\\') {
            Some(continued) => {
                text.push_str(continued);
                text.push(' ');
                current = Some((start, text));
            }
            None => {
                text.push_str(line);
                out.push((start, text));
            }
        }
    }
    out.extend(current);
    out
}

/// A `# syntax=` parser directive: it must stand before anything else.
fn syntax_directive(dockerfile: &str) -> Option<String> {
    for line in dockerfile.lines().map(str::trim) {
        let (key, value) = line.strip_prefix('#')?.split_once('=')?;
        if key.trim().eq_ignore_ascii_case("syntax") {
            return Some(value.trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(buildkit: bool) -> DaemonView {
        DaemonView {
            buildkit,
            server: Some("Docker Engine 20.10.24+dfsg1 (linux)".into()),
            ..DaemonView::default()
        }
    }

    #[test]
    fn the_builder_is_chosen_as_the_docker_cli_chooses() {
        assert_eq!(choose(None, Some(&view(true))).builder, Builder::BuildKit);
        assert_eq!(choose(None, None).builder, Builder::BuildKit);
        let legacy = choose(None, Some(&view(false)));
        assert_eq!(legacy.builder, Builder::Legacy);
        assert!(legacy.why.contains("20.10.24"), "{}", legacy.why);
        for off in ["0", "false", "FALSE"] {
            let choice = choose(Some(off), Some(&view(true)));
            assert_eq!(choice.builder, Builder::Legacy, "{off}");
        }
        assert_eq!(
            choose(Some("1"), Some(&view(false))).builder,
            Builder::BuildKit
        );
        assert_eq!(
            choose(Some(""), Some(&view(true))).builder,
            Builder::BuildKit
        );
    }

    #[test]
    fn a_daemon_has_buildkit_on_linux_from_18_09() {
        assert!(daemon_has_buildkit("linux", "20.10.24+dfsg1"));
        assert!(daemon_has_buildkit("linux", "28.2.2"));
        assert!(daemon_has_buildkit("linux", "18.09.0"));
        assert!(!daemon_has_buildkit("linux", "18.06.3-ce"));
        assert!(!daemon_has_buildkit("windows", "28.2.2"));
        assert!(!daemon_has_buildkit("linux", ""));
    }

    /// The Dockerfile uv's guide gives for a FastAPI app, shortened.
    const UV_STYLE: &str = "\
FROM python:3.12-slim AS base
COPY --from=uv /uv /bin/uv
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/uv \\
    --mount=type=bind,source=uv.lock,target=uv.lock \\
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \\
    uv sync --locked --no-install-project
COPY --chmod=0755 entrypoint.sh /entrypoint.sh
";

    #[test]
    fn buildkit_syntax_is_found_with_its_line() {
        let found = needs(UV_STYLE);
        assert_eq!(
            found.buildkit,
            [
                "line 4: RUN --mount=type=cache,target=/root/.cache/uv",
                "line 4: RUN --mount=type=bind,source=uv.lock,target=uv.lock",
                "line 4: RUN --mount=type=bind,source=pyproject.toml,target=pyproject.toml",
                "line 8: COPY --chmod=0755",
            ]
        );
        assert!(found.unserved.is_empty());
        let heredoc =
            needs("# syntax=docker/dockerfile:1\nFROM scratch\nRUN <<EOF\necho hi\nEOF\n");
        assert_eq!(
            heredoc.buildkit,
            [
                "line 3: a heredoc (<<)",
                "line 1: # syntax=docker/dockerfile:1"
            ]
        );
        let classic = "FROM scratch\n# RUN --mount=type=cache in a comment\nCOPY --from=base /a /a\nRUN echo --mount\n";
        assert_eq!(
            needs(classic),
            Needs {
                runs: true,
                ..Needs::default()
            }
        );
        assert!(!needs("FROM scratch\nCOPY . /app\n").runs);
    }

    /// Secrets on a Unix socket go by this tool's session, with any
    /// network; elsewhere by BuildKit's gRPC API, without `network.host`.
    #[test]
    fn build_secrets_take_the_host_network_only_through_the_session() {
        use crate::config::{Component, Image, SecretSource};
        let image = Image {
            component: Component::Backend,
            context: "backend".into(),
            dockerfile: "Dockerfile".into(),
            reference: "registry/colony-backend".into(),
            build_args: Default::default(),
            also_tag_latest: false,
            platform: None,
            target: None,
            network: Some("host".into()),
            secrets: [("token".to_string(), SecretSource::Env("TOKEN".into()))].into(),
        };
        let socket = DaemonView {
            session: true,
            ..view(true)
        };
        assert_eq!(secrets_network_refusal(&image, Some(&socket)), None);
        let refused = secrets_network_refusal(&image, Some(&view(true))).unwrap();
        assert!(
            refused.contains("not reached by a Unix socket"),
            "{refused}"
        );
        assert!(secrets_network_refusal(&image, None).is_some());
        let none = Image {
            network: Some("none".into()),
            ..image.clone()
        };
        assert_eq!(secrets_network_refusal(&none, Some(&view(true))), None);
        let without_secrets = Image {
            secrets: Default::default(),
            ..image
        };
        assert_eq!(
            secrets_network_refusal(&without_secrets, Some(&view(true))),
            None
        );
    }

    #[test]
    fn run_steps_on_a_daemon_without_a_bridge_need_a_network_named() {
        let with_run = needs("FROM x\nRUN true\n");
        let no_bridge = DaemonView::default();
        let bridged = DaemonView {
            bridge: true,
            ..DaemonView::default()
        };
        let refused = network_refusal("backend", &with_run, None, Some(&no_bridge)).unwrap();
        assert!(
            refused.contains("set images.backend.network = \"host\""),
            "{refused}"
        );
        assert_eq!(
            network_refusal("backend", &with_run, Some("host"), Some(&no_bridge)),
            None
        );
        assert_eq!(
            network_refusal("backend", &with_run, None, Some(&bridged)),
            None
        );
        assert_eq!(network_refusal("backend", &with_run, None, None), None);
        let copy_only = needs("FROM scratch\nCOPY . /app\n");
        assert_eq!(
            network_refusal("backend", &copy_only, None, Some(&no_bridge)),
            None
        );
    }

    #[test]
    fn the_legacy_builder_refuses_buildkit_syntax_and_buildkit_refuses_ssh() {
        let legacy = choose(Some("0"), None);
        let refused = refusals("backend", &legacy, &needs(UV_STYLE));
        assert_eq!(refused.len(), 1);
        assert!(refused[0]
            .starts_with("the backend Dockerfile needs BuildKit (line 4: RUN --mount=type=cache"));
        assert!(
            refused[0].contains("but the build would use the legacy builder (DOCKER_BUILDKIT=0)")
        );
        assert!(refusals("backend", &choose(None, None), &needs(UV_STYLE)).is_empty());
        let ssh = needs("FROM x\nRUN --mount=type=ssh git clone git@host:x\n");
        let refused = refusals("backend", &choose(None, None), &ssh);
        assert!(
            refused[0].contains("forwards SSH (line 2: RUN --mount=type=ssh)"),
            "{refused:?}"
        );
    }

    #[test]
    fn secret_mounts_are_read_by_id_or_target() {
        let found = needs(
            "FROM x\nRUN --mount=type=secret,id=pypi_token,env=TOKEN uv sync\n\
             RUN --mount=type=secret,target=/run/secrets/netrc cat /run/secrets/netrc\n",
        );
        let ids: Vec<&str> = found.secrets.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, ["pypi_token", "netrc"]);
        assert!(found.unserved.is_empty());
        assert!(found.secrets[0]
            .0
            .starts_with("line 2: RUN --mount=type=secret"));
    }
}

//! The image registry's HTTP API (Docker Registry v2 / OCI distribution):
//! whether a tag exists and which digest it serves, with the credentials of
//! the standard Docker config. Credentials never reach a message.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use ipnet::IpNet;

use crate::images::trust;

/// `host[:port]` of a registry or an image reference.
pub fn host_of(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

/// What the Docker daemon is configured to trust (`docker info`'s
/// `RegistryConfig`): per-registry `Secure` flags (insecure-registries given
/// by name) and the insecure CIDRs (by address; 127.0.0.0/8 by default).
#[derive(Debug, Clone, Default)]
pub struct DaemonView {
    pub index_secure: HashMap<String, bool>,
    pub insecure_cidrs: Vec<IpNet>,
    /// The platform it builds for when asked for none (`docker info`).
    pub platform: Option<crate::images::runner::Platform>,
    /// It offers BuildKit (`builder::daemon_has_buildkit`).
    pub buildkit: bool,
    /// It has a network named `bridge`, the default one of `RUN` steps.
    pub bridge: bool,
    /// What it is, for messages: `Docker Engine 20.10.24+dfsg1 (linux)`.
    pub server: Option<String>,
    /// It is reached by a Unix socket, where this tool serves BuildKit's
    /// session itself (`images::session`): file sync and build secrets.
    pub session: bool,
    /// It keeps images in containerd (`docker info`: a snapshotter as its
    /// storage driver), whose BuildKit can push from the build itself.
    pub containerd_store: bool,
}

impl DaemonView {
    /// BuildKit builds here through this tool's session into the
    /// containerd image store: where a build can push itself
    /// (`images::pushes_from_build`).
    pub fn builds_by_session_into_containerd(&self) -> bool {
        self.containerd_store && self.session
    }
}

/// How we reach a registry: as the daemon would.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    /// Plain HTTP is allowed after HTTPS fails (an insecure registry).
    pub insecure: bool,
    /// Why, in the daemon's terms, for doctor and errors.
    pub why: String,
}

impl Access {
    /// The schemes to try, in Docker's order: HTTPS first, always.
    fn schemes(&self) -> &'static [&'static str] {
        if self.insecure {
            &["https", "http"]
        } else {
            &["https"]
        }
    }
}

/// Decides like the daemon (moby's `isSecureIndex`): a registry named in
/// its configuration is what that says; otherwise it is insecure when one
/// of its addresses lies in an insecure CIDR. Without a daemon to ask, the
/// default configuration is assumed (loopback is insecure). Pure.
pub fn decide_access(host: &str, daemon: Option<&DaemonView>, addresses: &[IpAddr]) -> Access {
    let default_view;
    let (view, whose) = match daemon {
        Some(view) => (view, "the Docker daemon"),
        None => {
            default_view = DaemonView {
                insecure_cidrs: vec!["127.0.0.0/8".parse().expect("a CIDR")],
                ..DaemonView::default()
            };
            (
                &default_view,
                "Docker's default configuration (no daemon answered to ask)",
            )
        }
    };
    if let Some(secure) = view.index_secure.get(host) {
        return Access {
            insecure: !secure,
            why: if *secure {
                format!("{whose} lists {host} as a secure registry")
            } else {
                format!("{whose} lists {host} in insecure-registries")
            },
        };
    }
    for address in addresses {
        if let Some(net) = view.insecure_cidrs.iter().find(|n| n.contains(address)) {
            return Access {
                insecure: true,
                why: format!(
                    "{host} resolves to {address}, inside the insecure CIDR {net} of {whose}"
                ),
            };
        }
    }
    Access {
        insecure: false,
        why: format!(
            "{whose} treats {host} as secure: it is not in insecure-registries{}",
            if addresses.is_empty() {
                " (and does not resolve here)".to_string()
            } else {
                format!(
                    " and resolves to {}",
                    addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
    }
}

/// The addresses `host[:port]` resolves to here (none when it does not).
pub fn resolve(host: &str) -> Vec<IpAddr> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let mut addresses: Vec<IpAddr> = (name, 0)
        .to_socket_addrs()
        .map(|found| found.map(|a| a.ip()).collect())
        .unwrap_or_default();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// `decide_access` for a registry, resolving its host here.
pub fn access_for(registry: &str, daemon: Option<&DaemonView>) -> Access {
    let host = host_of(registry);
    decide_access(host, daemon, &resolve(host))
}

/// The agent for manifests and tokens: a 10 s deadline per request.
fn agent(tls: &ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(tls.clone())
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// The agent for blobs: no overall deadline (a layer may take minutes),
/// only deadlines for connecting and for the answer to start.
fn blob_agent(tls: &ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(tls.clone())
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Docker Hub's API host and credential key for the names users write
/// (`docker.io/me/app`): the daemon maps them so, and so must we. Pure.
pub fn api_host(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

/// The key Docker keeps a login under: Docker Hub's is its v1 URL. Pure.
pub fn credential_key(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
        other => other,
    }
}

/// A registry login. Debug never shows the secret.
#[derive(Clone)]
pub enum Credential {
    UsernamePassword { username: String, password: String },
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::UsernamePassword { username, .. } => {
                write!(f, "Credential({username}:***)")
            }
            Credential::IdentityToken(_) => write!(f, "Credential(token ***)"),
        }
    }
}

/// What goes wrong asking a registry (or the Docker config) about images.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No allowed scheme answered; the text says which were tried, and why
    /// only those.
    #[error("{0}")]
    Unreachable(String),
    #[error("registry {host} requires a login: run `docker login {host}`")]
    LoginRequired { host: String },
    #[error("registry {host} refused the credentials for {image} (HTTP {status}): run `docker login {host}`")]
    CredentialsRefused {
        host: String,
        image: String,
        status: u16,
    },
    #[error("token service of {host}")]
    TokenService {
        host: String,
        #[source]
        source: Box<ureq::Error>,
    },
    /// It answered, but not as a registry API does.
    #[error("{0}")]
    Unexpected(String),
    /// A certs.d file for the registry that cannot be used.
    #[error("the TLS settings for registry {host}: {problem}")]
    Certificates { host: String, problem: String },
    /// The helper's own output may hold secrets: the failure is only named.
    #[error("the Docker credential helper docker-credential-{helper} failed for {host}")]
    CredentialHelper { helper: String, host: String },
    #[error("cannot read the Docker credentials for {host}")]
    Credentials {
        host: String,
        #[source]
        source: CredentialRetrievalError,
    },
}

/// The credential the Docker config (`DOCKER_CONFIG` or `~/.docker`) holds
/// for `host`: `auths`, `credHelpers` or `credsStore`. None when it has none.
pub fn credential_for(host: &str) -> Result<Option<Credential>, RegistryError> {
    match docker_credential::get_credential(credential_key(host)) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credential::UsernamePassword { username, password }))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(Some(Credential::IdentityToken(token))),
        Err(
            CredentialRetrievalError::NoCredentialConfigured
            | CredentialRetrievalError::ConfigNotFound
            | CredentialRetrievalError::ConfigReadError,
        ) => Ok(None),
        Err(CredentialRetrievalError::HelperFailure { helper, .. }) => {
            Err(RegistryError::CredentialHelper {
                helper,
                host: host.to_string(),
            })
        }
        Err(source) => Err(RegistryError::Credentials {
            host: host.to_string(),
            source,
        }),
    }
}

/// Talks to one registry, over HTTPS or, for a registry the daemon treats
/// as insecure, over plain HTTP when HTTPS fails: reads manifests, and
/// (`images::copy`) writes blobs and manifests.
pub struct RegistryClient {
    agent: ureq::Agent,
    blob_agent: ureq::Agent,
    /// Where requests go (`registry-1.docker.io` for `docker.io`).
    host: String,
    /// What its HTTPS is checked against, in words (doctor).
    trust: String,
    access: Access,
    /// The scheme that answered last (an index into `access.schemes()`).
    scheme: AtomicUsize,
    credential: Option<Credential>,
    /// The last Authorization header a challenge led to, reused until the
    /// registry asks again (a token per request would be a round trip each).
    authorization: Mutex<Option<String>>,
}

pub const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// What a request sends: nothing, bytes (sent again after a challenge),
/// or another registry's answer or a reader streamed through (sent once:
/// the token must be had before).
pub enum Payload {
    Empty,
    Bytes(Vec<u8>),
    Stream(ureq::http::Response<ureq::Body>),
    /// Sent as it is read, chunked.
    Reader(Box<dyn std::io::Read + Send>),
}

/// Whom a token is asked for: `repository:<name>:<actions>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Want {
    Pull,
    Push,
}

impl Want {
    fn scope(self, name: &str) -> String {
        match self {
            Want::Pull => format!("repository:{name}:pull"),
            Want::Push => format!("repository:{name}:pull,push"),
        }
    }
}

type Response = ureq::http::Response<ureq::Body>;

impl RegistryClient {
    /// A client trusting what dockerd would for this registry
    /// (`images::trust`); a certs.d file it cannot use is an error.
    pub fn new(
        registry: &str,
        credential: Option<Credential>,
        access: &Access,
    ) -> Result<RegistryClient, RegistryError> {
        let named = host_of(registry);
        let trust = trust::for_registry(named, access.insecure).map_err(|problem| {
            RegistryError::Certificates {
                host: named.to_string(),
                problem,
            }
        })?;
        Ok(RegistryClient {
            agent: agent(&trust.tls),
            blob_agent: blob_agent(&trust.tls),
            host: api_host(named).to_string(),
            trust: trust.said,
            access: access.clone(),
            scheme: AtomicUsize::new(0),
            credential,
            authorization: Mutex::new(None),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// What its HTTPS is checked against, in words.
    pub fn trust(&self) -> &str {
        &self.trust
    }

    /// The scheme in use (after a request), e.g. for doctor.
    pub fn scheme(&self) -> &'static str {
        self.access.schemes()[self.scheme.load(Ordering::Relaxed)]
    }

    /// Sends `method path` with the schemes allowed, in order; the first that
    /// answers at all is kept. Only a transport failure moves on. A `path`
    /// that is a whole URL (an upload's `Location`) is sent as it is.
    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        payload: Payload,
    ) -> Result<Response, RegistryError> {
        let schemes = self.access.schemes();
        let start = self.scheme.load(Ordering::Relaxed);
        let whole_url = path.starts_with("http://") || path.starts_with("https://");
        let mut payload = Some(payload);
        let mut failures = Vec::new();
        for (index, scheme) in schemes.iter().enumerate().skip(start) {
            let url = if whole_url {
                path.to_string()
            } else {
                format!("{scheme}://{}{path}", self.host)
            };
            let sent = match payload.take().unwrap_or(Payload::Empty) {
                once @ (Payload::Stream(_) | Payload::Reader(_)) => {
                    // Cannot be sent twice: this scheme is the last try.
                    return self.request(method, &url, headers, once).map_err(|e| {
                        RegistryError::Unreachable(format!("registry {}: {e}", self.host))
                    });
                }
                Payload::Bytes(bytes) => {
                    let sent = self.request(method, &url, headers, Payload::Bytes(bytes.clone()));
                    payload = Some(Payload::Bytes(bytes));
                    sent
                }
                Payload::Empty => self.request(method, &url, headers, Payload::Empty),
            };
            match sent {
                Ok(response) => {
                    if !whole_url {
                        self.scheme.store(index, Ordering::Relaxed);
                    }
                    return Ok(response);
                }
                Err(e) => failures.push(format!("{scheme}: {e}")),
            }
            if whole_url {
                break;
            }
        }
        Err(RegistryError::Unreachable(if self.access.insecure {
            format!(
                "registry {} does not answer over HTTPS or plain HTTP ({}; {})",
                self.host,
                failures.join("; "),
                self.access.why
            )
        } else if failures.iter().any(|f| f.contains("certificate")) {
            format!(
                "registry {} does not answer over HTTPS ({}): {}",
                self.host,
                failures.join("; "),
                trust::untrusted_hint(&self.host)
            )
        } else {
            format!(
                "registry {host} does not answer over HTTPS ({}). HTTPS is the only way because {why}; \
                 if it serves plain HTTP, add \"{host}\" to insecure-registries in the daemon's \
                 /etc/docker/daemon.json and restart dockerd (as `docker push` needs too)",
                failures.join("; "),
                host = self.host,
                why = self.access.why
            )
        }))
    }

    /// One HTTP request; blobs go through the agent without a deadline.
    fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        payload: Payload,
    ) -> Result<Response, ureq::Error> {
        let agent = if url.contains("/blobs/") {
            &self.blob_agent
        } else {
            &self.agent
        };
        macro_rules! with_headers {
            ($request:expr) => {{
                let mut request = $request;
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request
            }};
        }
        match (method, payload) {
            ("HEAD", _) => with_headers!(agent.head(url)).call(),
            ("GET", _) => with_headers!(agent.get(url)).call(),
            (method, payload) => {
                let request = match method {
                    "PUT" => with_headers!(agent.put(url)),
                    "PATCH" => with_headers!(agent.patch(url)),
                    _ => with_headers!(agent.post(url)),
                };
                match payload {
                    Payload::Empty => request.send_empty(),
                    Payload::Bytes(bytes) => request.send(&bytes[..]),
                    Payload::Stream(body) => request.send(body),
                    Payload::Reader(reader) => {
                        request.send(ureq::SendBody::from_owned_reader(reader))
                    }
                }
            }
        }
    }

    /// `send` with the registry's login: the token cached from the last
    /// challenge, and on a 401 a new one for `name` and `want` (sent again
    /// once, unless the payload is a stream, which must not need it).
    pub fn send_as(
        &self,
        want: Want,
        name: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        payload: Payload,
    ) -> Result<Response, RegistryError> {
        let cached = self.authorization.lock().expect("not poisoned").clone();
        let with = |authorization: &Option<String>| {
            let mut all = headers.to_vec();
            if let Some(value) = authorization {
                all.push(("Authorization", value.as_str()));
            }
            all.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let again = match &payload {
            Payload::Bytes(bytes) => Some(Payload::Bytes(bytes.clone())),
            Payload::Empty => Some(Payload::Empty),
            Payload::Stream(_) | Payload::Reader(_) => None,
        };
        let first = with(&cached);
        let response = self.send(method, path, &borrowed(&first), payload)?;
        if response.status().as_u16() != 401 {
            return Ok(response);
        }
        let Some(again) = again else {
            return Ok(response);
        };
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let authorization = Some(self.authorization(&challenge, &want.scope(name))?);
        *self.authorization.lock().expect("not poisoned") = authorization.clone();
        self.send(method, path, &borrowed(&with(&authorization)), again)
    }

    /// `GET /v2/`: 200 (open) or 401 (auth required) both mean it answers.
    pub fn ping(&self) -> Result<u16, RegistryError> {
        let response = self.send("GET", "/v2/", &[], Payload::Empty)?;
        match response.status().as_u16() {
            status @ (200 | 401) => Ok(status),
            status => Err(RegistryError::Unexpected(format!(
                "{}://{}/v2/ answered HTTP {status}, not a registry API",
                self.scheme(),
                self.host
            ))),
        }
    }

    /// The digest the registry serves for `image:tag` (`image` without the
    /// host), or None when it has no such tag.
    pub fn manifest_digest(&self, image: &str, tag: &str) -> Result<Option<String>, RegistryError> {
        let path = format!("/v2/{image}/manifests/{tag}");
        let response = self.send_as(
            Want::Pull,
            image,
            "HEAD",
            &path,
            &[("Accept", MANIFEST_TYPES)],
            Payload::Empty,
        )?;
        match response.status().as_u16() {
            200 => response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(|d| Some(d.to_string()))
                .ok_or_else(|| {
                    RegistryError::Unexpected(format!(
                        "registry {} sent no Docker-Content-Digest for {image}:{tag}",
                        self.host
                    ))
                }),
            404 => Ok(None),
            status => Err(self.refused(status, &format!("{image}:{tag}"))),
        }
    }

    /// The error for an answer that is neither what was asked nor "absent".
    pub fn refused(&self, status: u16, what: &str) -> RegistryError {
        match status {
            401 | 403 => RegistryError::CredentialsRefused {
                host: self.host.clone(),
                image: what.to_string(),
                status,
            },
            status => RegistryError::Unexpected(format!(
                "registry {} answered HTTP {status} for {what}",
                self.host
            )),
        }
    }

    /// The Authorization header for a `WWW-Authenticate` challenge: Basic
    /// directly, Bearer through the token service it names (Docker's token
    /// flow; an identity token from `docker login` is an OAuth2 refresh token).
    fn authorization(&self, challenge: &str, scope: &str) -> Result<String, RegistryError> {
        let login = || RegistryError::LoginRequired {
            host: self.host.clone(),
        };
        let token_service = |source: ureq::Error| RegistryError::TokenService {
            host: self.host.clone(),
            source: Box::new(source),
        };
        let challenge = Challenge::parse(challenge).map_err(|e| {
            RegistryError::Unexpected(format!(
                "registry {} sent a WWW-Authenticate header that does not parse: {e}",
                self.host
            ))
        })?;
        let basic = match &self.credential {
            Some(Credential::UsernamePassword { username, password }) => Some(
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")),
            ),
            _ => None,
        };
        if challenge.scheme == "basic" {
            return basic.map(|b| format!("Basic {b}")).ok_or_else(login);
        }
        let realm = challenge.param("realm").ok_or_else(login)?;
        let mut response = match &self.credential {
            Some(Credential::IdentityToken(token)) => self
                .agent
                .post(realm)
                .send_form(refresh_token_form(token, challenge.param("service"), scope))
                .map_err(token_service)?,
            _ => {
                let mut request = self.agent.get(realm).query("scope", scope);
                if let Some(service) = challenge.param("service") {
                    request = request.query("service", service);
                }
                if let Some(b) = &basic {
                    request = request.header("Authorization", &format!("Basic {b}"));
                }
                request.call().map_err(token_service)?
            }
        };
        if response.status().as_u16() != 200 {
            return Err(login());
        }
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(token_service)?;
        let body: TokenAnswer = serde_json::from_str(&text).map_err(|e| {
            RegistryError::Unexpected(format!("token service of {}: {e}", self.host))
        })?;
        let token = body.token.or(body.access_token).ok_or_else(login)?;
        Ok(format!("Bearer {token}"))
    }
}

fn borrowed(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A token service's answer: Docker's `token`, or OAuth2's `access_token`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
}

/// The form Docker posts to a token service with an identity token (OAuth2
/// refresh-token grant). Pure.
fn refresh_token_form<'a>(
    token: &'a str,
    service: Option<&'a str>,
    scope: &'a str,
) -> Vec<(&'static str, &'a str)> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", "colony-xtask"),
        ("scope", scope),
    ];
    if let Some(service) = service {
        form.push(("service", service));
    }
    form
}

/// The first challenge of a `WWW-Authenticate` header, parsed by
/// `http-auth` (quoted values may hold commas and escapes).
#[derive(Debug, Clone, PartialEq)]
struct Challenge {
    /// Lowercased: `basic`, `bearer`.
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(header: &str) -> Result<Challenge, String> {
        let challenges = http_auth::parse_challenges(header).map_err(|e| e.to_string())?;
        let first = challenges.first().ok_or("no challenge in it")?;
        Ok(Challenge {
            scheme: first.scheme.to_ascii_lowercase(),
            params: first
                .params
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_unescaped()))
                .collect(),
        })
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(named: &[(&str, bool)], cidrs: &[&str]) -> DaemonView {
        DaemonView {
            index_secure: named.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            insecure_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ..DaemonView::default()
        }
    }

    #[test]
    fn docker_hub_names_reach_its_api_host_and_its_login_key() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("index.docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
        assert_eq!(credential_key("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(credential_key("registry.lan:5000"), "registry.lan:5000");
    }

    #[test]
    fn registries_are_insecure_exactly_when_the_daemon_says_so() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let view = daemon(
            &[("registry.homelab.lan:5000", false), ("docker.io", true)],
            &["127.0.0.0/8", "10.1.0.0/16"],
        );
        let named = decide_access(
            "registry.homelab.lan:5000",
            Some(&view),
            &[ip("192.168.1.5")],
        );
        assert!(named.insecure);
        assert!(
            named.why.contains("in insecure-registries"),
            "{}",
            named.why
        );
        let by_address = decide_access("nas.lan:5000", Some(&view), &[ip("10.1.2.3")]);
        assert!(by_address.insecure);
        assert!(
            by_address
                .why
                .contains("10.1.2.3, inside the insecure CIDR 10.1.0.0/16 of the Docker daemon"),
            "{}",
            by_address.why
        );
        let loopback = decide_access(
            "registry.homelab.test:46567",
            Some(&view),
            &[ip("127.0.0.1")],
        );
        assert!(loopback.insecure);
        let secure = decide_access("ghcr.io", Some(&view), &[ip("140.82.1.1")]);
        assert!(!secure.insecure);
        assert!(
            secure
                .why
                .contains("not in insecure-registries and resolves to 140.82.1.1"),
            "{}",
            secure.why
        );
        // Not listed by name, and ::1 is not in 127.0.0.0/8: secure, as for Docker.
        assert!(!decide_access("v6.test:5000", Some(&view), &[ip("::1")]).insecure);
        // No daemon: Docker's default, loopback only.
        assert!(decide_access("localhost:5000", None, &[ip("127.0.0.1")]).insecure);
        assert!(!decide_access("registry.homelab.lan:5000", None, &[]).insecure);
        assert_eq!(
            Access {
                insecure: true,
                why: String::new()
            }
            .schemes(),
            ["https", "http"]
        );
    }

    #[test]
    fn hosts_resolve_without_their_port() {
        assert!(resolve("127.0.0.1:5000").contains(&"127.0.0.1".parse().unwrap()));
        assert!(resolve("[::1]:5000").contains(&"::1".parse().unwrap()));
        assert!(resolve("localhost").iter().all(IpAddr::is_loopback));
        assert!(resolve("no-such-host.invalid:5000").is_empty());
    }

    #[test]
    fn bearer_challenges() {
        let challenge = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:x:pull""#,
        )
        .unwrap();
        assert_eq!(challenge.scheme, "bearer");
        assert_eq!(challenge.param("realm"), Some("https://auth.example/token"));
        assert_eq!(challenge.param("service"), Some("registry.example"));
        // A quoted value holding commas and an escaped quote stays whole.
        let odd = Challenge::parse(
            r#"Bearer realm="https://auth.example/token?a=1,b=2",service="r\"x",scope="repository:x:pull""#,
        )
        .unwrap();
        assert_eq!(
            odd.param("realm"),
            Some("https://auth.example/token?a=1,b=2")
        );
        assert_eq!(odd.param("service"), Some("r\"x"));
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#).unwrap().scheme,
            "basic"
        );
        assert!(Challenge::parse("").is_err());
    }

    #[test]
    fn an_identity_token_is_a_refresh_token_grant() {
        let form = refresh_token_form("idt", Some("registry.example"), "repository:x:pull");
        assert!(form.contains(&("grant_type", "refresh_token")));
        assert!(form.contains(&("refresh_token", "idt")));
        assert!(form.contains(&("service", "registry.example")));
        assert!(form.contains(&("scope", "repository:x:pull")));
    }
}

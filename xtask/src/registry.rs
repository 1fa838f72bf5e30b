//! The image registry's HTTP API (Docker Registry v2 / OCI distribution):
//! whether a tag exists and which digest it serves, with the credentials of
//! the standard Docker config. Credentials never reach a message.

use std::time::Duration;

use base64::Engine as _;
use docker_credential::{CredentialRetrievalError, DockerCredential};

/// Docker trusts plain HTTP for registries on the loopback interface only;
/// everything else is HTTPS.
pub fn base_url(registry: &str) -> String {
    let host = host_of(registry);
    let host_only = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let loopback =
        host_only == "localhost" || host_only.starts_with("127.") || host_only == "[::1]";
    format!("{}://{host}", if loopback { "http" } else { "https" })
}

/// `host[:port]` of a registry or an image reference.
pub fn host_of(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// `GET /v2/`: 200 (open) or 401 (auth required) both mean it answers.
pub fn ping(registry: &str) -> Result<u16, String> {
    let url = format!("{}/v2/", base_url(registry));
    let response = agent()
        .get(&url)
        .call()
        .map_err(|e| format!("{url}: {e}"))?;
    match response.status().as_u16() {
        status @ (200 | 401) => Ok(status),
        status => Err(format!("{url} answered HTTP {status}, not a registry API")),
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

/// The credential the Docker config (`DOCKER_CONFIG` or `~/.docker`) holds
/// for `host`: `auths`, `credHelpers` or `credsStore`. None when it has none.
pub fn credential_for(host: &str) -> Result<Option<Credential>, String> {
    match docker_credential::get_credential(host) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credential::UsernamePassword { username, password }))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(Some(Credential::IdentityToken(token))),
        Err(
            CredentialRetrievalError::NoCredentialConfigured
            | CredentialRetrievalError::ConfigNotFound
            | CredentialRetrievalError::ConfigReadError,
        ) => Ok(None),
        // The helper's own output may hold secrets: name the failure only.
        Err(CredentialRetrievalError::HelperFailure { helper, .. }) => Err(format!(
            "the Docker credential helper docker-credential-{helper} failed for {host}"
        )),
        Err(other) => Err(format!(
            "cannot read the Docker credentials for {host}: {other}"
        )),
    }
}

/// Reads manifests of one registry.
pub struct RegistryClient {
    agent: ureq::Agent,
    base: String,
    host: String,
    credential: Option<Credential>,
}

const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

impl RegistryClient {
    pub fn new(registry: &str, credential: Option<Credential>) -> RegistryClient {
        RegistryClient {
            agent: agent(),
            base: base_url(registry),
            host: host_of(registry).to_string(),
            credential,
        }
    }

    /// The digest the registry serves for `image:tag` (`image` without the
    /// host), or None when it has no such tag.
    pub fn manifest_digest(&self, image: &str, tag: &str) -> Result<Option<String>, String> {
        let url = format!("{}/v2/{image}/manifests/{tag}", self.base);
        let head = |authorization: Option<&str>| {
            let mut request = self.agent.head(&url).header("Accept", MANIFEST_TYPES);
            if let Some(value) = authorization {
                request = request.header("Authorization", value);
            }
            request
                .call()
                .map_err(|e| format!("registry {} does not answer: {e}", self.host))
        };
        let mut response = head(None)?;
        if response.status().as_u16() == 401 {
            let challenge = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let authorization = self.authorization(&challenge, image)?;
            response = head(Some(&authorization))?;
        }
        match response.status().as_u16() {
            200 => response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(|d| Some(d.to_string()))
                .ok_or_else(|| {
                    format!(
                        "registry {} sent no Docker-Content-Digest for {image}:{tag}",
                        self.host
                    )
                }),
            404 => Ok(None),
            401 | 403 => Err(format!(
                "registry {} refused the credentials for {image} (HTTP {}): run `docker login {}`",
                self.host,
                response.status().as_u16(),
                self.host
            )),
            status => Err(format!(
                "registry {} answered HTTP {status} for {image}:{tag}",
                self.host
            )),
        }
    }

    /// The Authorization header for a `WWW-Authenticate` challenge: Basic
    /// directly, Bearer through the token service it names.
    fn authorization(&self, challenge: &str, image: &str) -> Result<String, String> {
        let login = || {
            format!(
                "registry {} requires a login: run `docker login {}`",
                self.host, self.host
            )
        };
        let basic = match &self.credential {
            Some(Credential::UsernamePassword { username, password }) => Some(
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")),
            ),
            _ => None,
        };
        if challenge.to_ascii_lowercase().starts_with("basic") {
            return basic.map(|b| format!("Basic {b}")).ok_or_else(login);
        }
        let params = parse_challenge(challenge);
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(login)?;
        let mut request = self
            .agent
            .get(&realm)
            .query("scope", format!("repository:{image}:pull"));
        if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
            request = request.query("service", service);
        }
        if let Some(b) = &basic {
            request = request.header("Authorization", &format!("Basic {b}"));
        }
        let mut response = request
            .call()
            .map_err(|e| format!("token service of {}: {e}", self.host))?;
        if response.status().as_u16() != 200 {
            return Err(login());
        }
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .ok_or_else(login)?;
        Ok(format!("Bearer {token}"))
    }
}

/// `Bearer realm="…",service="…",scope="…"` → [(realm, …), …]. Pure.
fn parse_challenge(challenge: &str) -> Vec<(String, String)> {
    let params = challenge.split_once(' ').map_or("", |(_, rest)| rest);
    params
        .split(',')
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            Some((
                key.trim().to_ascii_lowercase(),
                value.trim().trim_matches('"').to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert_eq!(base_url("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(base_url("localhost:5000/team"), "http://localhost:5000");
        assert_eq!(base_url("ghcr.io/colony-app"), "https://ghcr.io");
        assert_eq!(
            base_url("registry.homelab.lan:5000"),
            "https://registry.homelab.lan:5000"
        );
    }

    #[test]
    fn bearer_challenges() {
        let params = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:x:pull""#,
        );
        assert_eq!(
            params[0],
            ("realm".into(), "https://auth.example/token".into())
        );
        assert_eq!(params[1], ("service".into(), "registry.example".into()));
    }
}

//! The image registry's HTTP API (Docker Registry v2 / OCI distribution).

use std::time::Duration;

/// Docker trusts plain HTTP for registries on the loopback interface only;
/// everything else is HTTPS.
pub fn base_url(registry: &str) -> String {
    let host = registry.split('/').next().unwrap_or(registry);
    let host_only = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let loopback =
        host_only == "localhost" || host_only.starts_with("127.") || host_only == "[::1]";
    format!("{}://{host}", if loopback { "http" } else { "https" })
}

/// `GET /v2/`: 200 (open) or 401 (auth required) both mean it answers.
pub fn ping(registry: &str) -> Result<u16, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/v2/", base_url(registry));
    let response = agent.get(&url).call().map_err(|e| format!("{url}: {e}"))?;
    match response.status().as_u16() {
        status @ (200 | 401) => Ok(status),
        status => Err(format!("{url} answered HTTP {status}, not a registry API")),
    }
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
}

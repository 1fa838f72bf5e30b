//! Which certificates a registry's HTTPS is checked against, as dockerd
//! checks them for a push: the system's roots plus what
//! `certs.d/<host:port>/` holds (`*.crt` CAs, a `*.cert` + `*.key` client
//! pair: moby's `ReadCertsDirectory`). For a registry the daemon treats as
//! insecure, HTTPS without verification comes before plain HTTP, as
//! dockerd tries it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// Where a rootful dockerd reads certs.d; a rootless one reads
/// `$XDG_CONFIG_HOME/docker/certs.d` (both are looked at, this one first).
pub const SYSTEM_CERTS_D: &str = "/etc/docker/certs.d";

/// The certs.d directories to look in, in order.
pub fn certs_d_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(SYSTEM_CERTS_D)];
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")));
    if let Some(home) = config_home {
        dirs.push(home.join("docker/certs.d"));
    }
    dirs
}

/// What one registry's certs.d directory holds, by file name.
#[derive(Debug, Default, PartialEq)]
pub struct CertFiles {
    /// `*.crt`: CAs added to the system's roots.
    pub cas: Vec<String>,
    /// `name.cert` + `name.key`: the client certificate (the first pair).
    pub client: Option<(String, String)>,
}

/// Sorts the file names as moby does, with its refusals: a `.cert`
/// without its `.key` (or the reverse) is an error. Pure.
pub fn classify(names: &[String]) -> Result<CertFiles, String> {
    let mut sorted = names.to_vec();
    sorted.sort();
    let has = |name: &str| sorted.iter().any(|n| n == name);
    let mut files = CertFiles::default();
    for name in &sorted {
        if name.ends_with(".crt") {
            files.cas.push(name.clone());
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = format!("{stem}.key");
            if !has(&key) {
                return Err(format!(
                    "missing key {key} for client certificate {name}. CA certificates must use the extension .crt"
                ));
            }
            files.client.get_or_insert((name.clone(), key));
        } else if let Some(stem) = name.strip_suffix(".key") {
            let cert = format!("{stem}.cert");
            if !has(&cert) {
                return Err(format!("missing client certificate {cert} for key {name}"));
            }
        }
    }
    Ok(files)
}

/// The TLS settings for one registry, and what they trust, in words.
#[derive(Clone)]
pub struct Trust {
    pub tls: TlsConfig,
    pub said: String,
}

/// The trust for `host` (`host[:port]`, as certs.d names it): the system's
/// roots and the certs.d files, or no verification for an insecure
/// registry. A certs.d file that cannot be read or parsed is an error
/// naming it.
pub fn for_registry(host: &str, insecure: bool) -> Result<Trust, String> {
    let dir = certs_d_dirs()
        .into_iter()
        .map(|dir| dir.join(host))
        .find(|dir| dir.is_dir());
    let (extra, client, from) = match &dir {
        Some(dir) => read_dir(dir)?,
        None => (Vec::new(), None, Vec::new()),
    };
    let mut said = if insecure {
        "without verifying its certificate (an insecure registry, as the daemon does)".to_string()
    } else if system_roots().is_empty() {
        "Mozilla's roots (this system has no CA store)".to_string()
    } else {
        "the system's CA store".to_string()
    };
    if !from.is_empty() {
        said.push_str(&format!(" and {}", from.join(", ")));
    }
    let roots = if extra.is_empty() && system_roots().is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::Specific(Arc::new(
            system_roots().iter().cloned().chain(extra).collect(),
        ))
    };
    let tls = TlsConfig::builder()
        .root_certs(roots)
        .client_cert(client)
        .disable_verification(insecure)
        .build();
    Ok(Trust { tls, said })
}

type DirContents = (Vec<Certificate<'static>>, Option<ClientCert>, Vec<String>);

/// The CAs and the client pair of one certs.d directory, and the files
/// used (for the trust's words).
fn read_dir(dir: &Path) -> Result<DirContents, String> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let files = classify(&names).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cas = Vec::new();
    let mut used = Vec::new();
    for name in &files.cas {
        let path = dir.join(name);
        cas.extend(certificates(&path)?);
        used.push(path.display().to_string());
    }
    let client = match &files.client {
        Some((cert, key)) => {
            let (cert, key) = (dir.join(cert), dir.join(key));
            let chain = certificates(&cert)?;
            let key = PrivateKey::from_pem(&read(&key)?)
                .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
            used.push(format!("the client certificate {}", cert.display()));
            Some(ClientCert::new_with_certs(&chain, key))
        }
        None => None,
    };
    Ok((cas, client, used))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every certificate of a PEM file; none is an error (a CA file that
/// trusts nothing is a mistake worth saying).
fn certificates(path: &Path) -> Result<Vec<Certificate<'static>>, String> {
    let pem = read(path)?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The system's CA store (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the
/// distribution's bundle), read once.
fn system_roots() -> &'static [Certificate<'static>] {
    static ROOTS: OnceLock<Vec<Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect()
    })
}

/// The hint for a certificate HTTPS did not trust, naming where the CA
/// goes. Pure.
pub fn untrusted_hint(host: &str) -> String {
    format!(
        "its certificate is not trusted here: put the CA that signed it in {SYSTEM_CERTS_D}/{host}/ca.crt \
         (where dockerd reads it too) or in the system's CA store (update-ca-certificates)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cas_and_a_client_pair_are_sorted_out_as_moby_does() {
        let files = classify(&names(&[
            "client.key",
            "ca.crt",
            "client.cert",
            "README",
            "b.crt",
        ]))
        .unwrap();
        assert_eq!(files.cas, ["b.crt", "ca.crt"]);
        assert_eq!(
            files.client,
            Some(("client.cert".to_string(), "client.key".to_string()))
        );
    }

    #[test]
    fn a_half_client_pair_is_refused_with_moby_s_words() {
        assert_eq!(
            classify(&names(&["ca.cert"])).unwrap_err(),
            "missing key ca.key for client certificate ca.cert. CA certificates must use the extension .crt"
        );
        assert_eq!(
            classify(&names(&["client.key"])).unwrap_err(),
            "missing client certificate client.cert for key client.key"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
        let error = read_dir(dir.path()).err().unwrap();
        assert!(
            error.ends_with("ca.crt: no PEM certificate in it"),
            "{error}"
        );
    }
}

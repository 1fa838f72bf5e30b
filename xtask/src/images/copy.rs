//! A copy by digest from one repository to another, for `deploy
//! --images-from` when the other environment's images live elsewhere: what
//! `crane copy` and `skopeo copy` do, through the registries' HTTP API.
//! The digest stays the same (the manifest's bytes are copied as they are),
//! so what was tested there is what runs here. Blobs the target has are
//! skipped (or mounted from the source repository on the same registry);
//! the others are streamed registry to registry, never held in memory or on
//! disk; an index's manifests are copied before the index that names them.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::registry::{
    access_for, credential_for, host_of, DaemonView, Payload, RegistryClient, RegistryError, Want,
    MANIFEST_TYPES,
};

/// One repository (`host[:port]/name`) and a client logged in to its host.
pub struct Repository {
    client: RegistryClient,
    /// The name in the registry's API (`colony-backend`, `team/app`).
    name: String,
}

impl Repository {
    /// With the Docker config's login for its host and the daemon's view of
    /// how to reach it (HTTPS, or plain HTTP for an insecure registry).
    pub fn open(reference: &str, daemon: Option<&DaemonView>) -> Result<Repository, RegistryError> {
        let host = host_of(reference);
        let name = reference
            .strip_prefix(host)
            .unwrap_or(reference)
            .trim_start_matches('/')
            .to_string();
        let client =
            RegistryClient::new(reference, credential_for(host)?, &access_for(host, daemon))?;
        client.ping()?;
        Ok(Repository { client, name })
    }

    fn send(
        &self,
        want: Want,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        payload: Payload,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        self.client
            .send_as(want, &self.name, method, path, headers, payload)
    }

    fn what(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.client.host(), self.name)
    }

    /// A repository reached through `client` (`name` as the API spells it).
    pub fn with_client(client: RegistryClient, name: &str) -> Repository {
        Repository {
            client,
            name: name.to_string(),
        }
    }

    pub fn blob_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        let path = format!("/v2/{}/blobs/{digest}", self.name);
        let head = self.send(Want::Push, "HEAD", &path, &[], Payload::Empty)?;
        match head.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(answered(self, status, &self.what(digest), head)),
        }
    }

    /// Starts a blob's upload; with `mount_from` (a repository on the same
    /// registry) the registry may take the blob from there instead (then
    /// None: no bytes need to move).
    pub fn start_upload(
        &self,
        digest: &str,
        mount_from: Option<&str>,
    ) -> Result<Option<String>, RegistryError> {
        let mut start = format!("/v2/{}/blobs/uploads/", self.name);
        if let Some(from) = mount_from {
            start.push_str(&format!("?mount={digest}&from={from}"));
        }
        let started = self.send(Want::Push, "POST", &start, &[], Payload::Empty)?;
        match started.status().as_u16() {
            201 => Ok(None),
            202 => started
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(|location| Some(location.to_string()))
                .ok_or_else(|| {
                    RegistryError::Unexpected(format!(
                        "registry {} started an upload without a Location",
                        self.client.host()
                    ))
                }),
            status => Err(answered(self, status, &self.what(digest), started)),
        }
    }

    /// Sends bytes to an upload `start_upload` began, without naming their
    /// digest yet (a PATCH); where the upload goes on.
    pub fn append_to_upload(
        &self,
        location: &str,
        payload: Payload,
    ) -> Result<String, RegistryError> {
        let patch = self.send(
            Want::Push,
            "PATCH",
            location,
            &[("Content-Type", "application/octet-stream")],
            payload,
        )?;
        match patch.status().as_u16() {
            202 => patch
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
                .ok_or_else(|| {
                    RegistryError::Unexpected(format!(
                        "registry {} took an upload's bytes without a Location",
                        self.client.host()
                    ))
                }),
            status => Err(answered(
                self,
                status,
                &format!("an upload to {}", self.name),
                patch,
            )),
        }
    }

    /// Sends the blob's bytes to an upload `start_upload` began, in one
    /// request that names its digest (the registry checks it).
    pub fn finish_upload(
        &self,
        location: &str,
        digest: &str,
        payload: Payload,
    ) -> Result<(), RegistryError> {
        let put = self.send(
            Want::Push,
            "PUT",
            &upload_url(location, digest),
            &[("Content-Type", "application/octet-stream")],
            payload,
        )?;
        match put.status().as_u16() {
            201 | 204 => Ok(()),
            status => Err(answered(self, status, &self.what(digest), put)),
        }
    }

    /// Puts a manifest under `reference` (a tag or its digest).
    pub fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<(), RegistryError> {
        let response = self.send(
            Want::Push,
            "PUT",
            &format!("/v2/{}/manifests/{reference}", self.name),
            &[("Content-Type", media_type)],
            Payload::Bytes(bytes),
        )?;
        match response.status().as_u16() {
            200 | 201 => Ok(()),
            status => Err(answered(self, status, &self.what(reference), response)),
        }
    }
}

/// What a copy did, for the step's note.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Copied {
    pub manifests: usize,
    /// Blobs sent from the source.
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs the target had already, or took by a mount.
    pub blobs_present: usize,
    /// The manifest was in the target already: nothing was sent.
    pub already_there: bool,
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.already_there {
            return write!(f, "already there");
        }
        write!(
            f,
            "{} manifest{}, {} blob{} ({}) copied, {} already there",
            self.manifests,
            if self.manifests == 1 { "" } else { "s" },
            self.blobs,
            if self.blobs == 1 { "" } else { "s" },
            super::human_bytes(self.bytes),
            self.blobs_present
        )
    }
}

/// Copies `digest` from `from` to `to`; `say` hears of each blob sent.
pub fn copy(
    from: &Repository,
    to: &Repository,
    digest: &str,
    say: &dyn Fn(String),
) -> Result<Copied, RegistryError> {
    let mut copied = Copied::default();
    if manifest_exists(to, digest)? {
        copied.already_there = true;
        return Ok(copied);
    }
    copy_manifest(from, to, digest, say, &mut copied)?;
    Ok(copied)
}

fn manifest_exists(repository: &Repository, digest: &str) -> Result<bool, RegistryError> {
    let response = repository.send(
        Want::Push,
        "HEAD",
        &format!("/v2/{}/manifests/{digest}", repository.name),
        &[("Accept", MANIFEST_TYPES)],
        Payload::Empty,
    )?;
    match response.status().as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        status => Err(repository.client.refused(status, &repository.what(digest))),
    }
}

fn copy_manifest(
    from: &Repository,
    to: &Repository,
    digest: &str,
    say: &dyn Fn(String),
    copied: &mut Copied,
) -> Result<(), RegistryError> {
    let (media_type, bytes) = read_manifest(from, digest)?;
    let references = references(&bytes).map_err(|e| {
        RegistryError::Unexpected(format!(
            "the manifest {} does not parse: {e}",
            from.what(digest)
        ))
    })?;
    for child in &references.manifests {
        if !manifest_exists(to, child)? {
            copy_manifest(from, to, child, say, copied)?;
        }
    }
    for (blob, size) in &references.blobs {
        copy_blob(from, to, blob, *size, say, copied)?;
    }
    to.put_manifest(digest, &media_type, bytes)?;
    copied.manifests += 1;
    Ok(())
}

/// The manifest's media type and bytes, checked against its digest (the
/// bytes are what the digest names: copied as they are, never re-encoded).
fn read_manifest(from: &Repository, digest: &str) -> Result<(String, Vec<u8>), RegistryError> {
    let mut response = from.send(
        Want::Pull,
        "GET",
        &format!("/v2/{}/manifests/{digest}", from.name),
        &[("Accept", MANIFEST_TYPES)],
        Payload::Empty,
    )?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(answered(from, status, &from.what(digest), response));
    }
    let media_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(4 << 20)
        .read_to_vec()
        .map_err(|e| RegistryError::Unexpected(format!("reading {}: {e}", from.what(digest))))?;
    let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
    if actual != digest {
        return Err(RegistryError::Unexpected(format!(
            "{} sent a manifest whose digest is {actual}: refusing to copy it",
            from.what(digest)
        )));
    }
    Ok((media_type, bytes))
}

fn copy_blob(
    from: &Repository,
    to: &Repository,
    digest: &str,
    size: u64,
    say: &dyn Fn(String),
    copied: &mut Copied,
) -> Result<(), RegistryError> {
    if to.blob_exists(digest)? {
        copied.blobs_present += 1;
        return Ok(());
    }
    // On the same registry, ask it to mount the blob from the source
    // repository (no bytes move); it answers 202 and an upload when it won't.
    let same_registry = from.client.host() == to.client.host();
    let Some(location) = to.start_upload(digest, same_registry.then_some(from.name.as_str()))?
    else {
        copied.blobs_present += 1;
        return Ok(());
    };
    say(format!(
        "blob {} ({})",
        short(digest),
        super::human_bytes(size)
    ));
    let blob_path = format!("/v2/{}/blobs/{digest}", from.name);
    let source = from.send(Want::Pull, "GET", &blob_path, &[], Payload::Empty)?;
    let status = source.status().as_u16();
    if status != 200 {
        return Err(answered(from, status, &from.what(digest), source));
    }
    to.finish_upload(&location, digest, Payload::Stream(source))?;
    copied.blobs += 1;
    copied.bytes += size;
    Ok(())
}

/// The upload's URL with the digest that completes it. Pure.
fn upload_url(location: &str, digest: &str) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}digest={}", digest.replace(':', "%3A"))
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// An unexpected answer, with the registry's own error text (its `errors`
/// JSON says why: unknown blob, manifest invalid, denied).
fn answered(
    repository: &Repository,
    status: u16,
    what: &str,
    mut response: ureq::http::Response<ureq::Body>,
) -> RegistryError {
    if matches!(status, 401 | 403) {
        return repository.client.refused(status, what);
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(16 << 10)
        .read_to_string()
        .unwrap_or_default();
    RegistryError::Unexpected(format!(
        "registry {} answered HTTP {status} for {what}: {}",
        repository.client.host(),
        body.trim()
    ))
}

/// What a manifest names: the manifests of an index, the blobs (config and
/// layers) of an image.
#[derive(Debug, Default, PartialEq)]
pub struct References {
    pub manifests: Vec<String>,
    /// (digest, size)
    pub blobs: Vec<(String, u64)>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    /// A foreign layer (Windows base layers): fetched from these URLs by
    /// whoever pulls, never pushed, so never copied.
    #[serde(default)]
    urls: Vec<String>,
}

/// Parses a manifest or an index (Docker v2 or OCI). Pure.
pub fn references(manifest: &[u8]) -> Result<References, serde_json::Error> {
    let parsed: Manifest = serde_json::from_slice(manifest)?;
    let valid = |d: &Descriptor| d.digest.starts_with("sha256:") && d.urls.is_empty();
    Ok(References {
        manifests: parsed
            .manifests
            .iter()
            .filter(|d| valid(d))
            .map(|d| d.digest.clone())
            .collect(),
        blobs: parsed
            .config
            .iter()
            .chain(&parsed.layers)
            .filter(|d| valid(d))
            .map(|d| (d.digest.clone(), d.size))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_names_its_manifests_and_an_image_its_config_and_layers() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[{"digest":"sha256:aa","size":10,"platform":{"os":"linux"}},
                         {"digest":"sha256:bb","size":11}]}"#;
        assert_eq!(
            references(index).unwrap(),
            References {
                manifests: vec!["sha256:aa".into(), "sha256:bb".into()],
                blobs: vec![],
            }
        );
        let image = br#"{"schemaVersion":2,"config":{"digest":"sha256:cc","size":3},
            "layers":[{"digest":"sha256:dd","size":400},
                      {"digest":"sha256:ee","size":9,"urls":["https://foreign.example/layer"]}]}"#;
        assert_eq!(
            references(image).unwrap(),
            References {
                manifests: vec![],
                blobs: vec![("sha256:cc".into(), 3), ("sha256:dd".into(), 400)],
            }
        );
        assert!(references(b"not json").is_err());
    }

    #[test]
    fn the_upload_is_completed_with_its_digest() {
        assert_eq!(
            upload_url("/v2/x/blobs/uploads/u1", "sha256:ab"),
            "/v2/x/blobs/uploads/u1?digest=sha256%3Aab"
        );
        assert_eq!(
            upload_url("http://r:5000/v2/x/blobs/uploads/u1?_state=s", "sha256:ab"),
            "http://r:5000/v2/x/blobs/uploads/u1?_state=s&digest=sha256%3Aab"
        );
    }

    #[test]
    fn a_copy_says_what_moved() {
        let copied = Copied {
            manifests: 1,
            blobs: 2,
            bytes: 3 << 20,
            blobs_present: 1,
            already_there: false,
        };
        assert_eq!(
            copied.to_string(),
            "1 manifest, 2 blobs (3.00 MiB) copied, 1 already there"
        );
    }
}

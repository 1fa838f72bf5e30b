//! The push this tool makes itself (`images.push = "fast"`).
//! The daemon's push gzips every layer at Go's default level on one core;
//! on incompressible content that is most of an image stage's time, and a
//! separate `docker push` cannot be told otherwise (Docker 20.10's BuildKit
//! exports only to the image store). So the image is read once from the
//! daemon's export (`docker save`'s stream, uncompressed layers), each
//! layer is gzipped by `gzip::FastGzip` into a spool file while both its
//! digests are taken, and sent only when the registry lacks it; then the
//! config and a Docker v2 manifest go up under each tag. The result is what
//! `docker push` makes (same config, same layers' contents, gzip), with
//! other bytes of gzip, so another digest.
//!
//! It is not the default: Docker 20.10 writes an export whole to disk
//! before sending it (about 13 ms a MiB here, every layer, also those the
//! registry has), while the daemon's push skips what the registry has and
//! gzips the rest at about 25–35 ms a MiB. So it pays when most of an
//! image's bytes are new and poorly compressible (media, models, wheels),
//! and costs when a small layer changes on a big base image.
//!
//! The export comes in either shape the daemon writes: Docker 20.10's
//! (`<id>/layer.tar`, `<image id>.json`) or the OCI layout of Docker 25+
//! (`blobs/sha256/<digest>`, layers named by their diff id).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Seek, Write};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::copy::Repository;
use super::docker::PushProgress;
use super::gzip::FastGzip;
use super::registry::{Payload, RegistryError};

pub const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The built image as the daemon's inspect tells it.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// `sha256:…` of its config: the image id.
    pub id: String,
    /// `sha256:…` of each layer's uncompressed tar, bottom first.
    pub diff_ids: Vec<String>,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pushed {
    /// The manifest's digest, as the registry serves it by tag.
    pub digest: String,
    pub layers_sent: usize,
    /// Layers the registry had already.
    pub layers_present: usize,
    /// Layer bytes read from the export, and gzip bytes sent.
    pub bytes_read: u64,
    pub bytes_sent: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("reading the daemon's export of the image: {0}")]
    Export(#[source] io::Error),
    #[error("the daemon's export of the image {0}; set images.push = \"docker\" in deploy.toml to let the daemon push it")]
    Shape(String),
    #[error("spooling a layer to a temporary file: {0}")]
    Spool(#[source] io::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl PushError {
    /// Whether trying the whole push again may succeed (as
    /// `docker::push_is_transient` for the daemon's push): the registry
    /// unreachable for a moment, a 5xx or 429, a blob it does not know yet.
    pub fn transient(&self) -> bool {
        match self {
            PushError::Registry(RegistryError::Unreachable(_)) => true,
            PushError::Registry(RegistryError::Unexpected(message)) => {
                let message = message.to_lowercase();
                message.contains("answered http 5")
                    || message.contains("answered http 429")
                    || message.contains("blob_unknown")
                    || message.contains("blob unknown")
            }
            _ => false,
        }
    }
}

/// What an entry of the export is. Pure.
#[derive(Debug, PartialEq)]
enum Entry {
    Config,
    /// A layer's tar; its diff id when the name says it (OCI layout).
    Layer(Option<String>),
    Other,
}

fn classify(path: &str, image_id: &str, diff_ids: &HashSet<&str>) -> Entry {
    let image_hex = image_id.trim_start_matches("sha256:");
    if let Some(hex) = path.strip_prefix("blobs/sha256/") {
        let digest = format!("sha256:{hex}");
        return if hex == image_hex {
            Entry::Config
        } else if diff_ids.contains(digest.as_str()) {
            Entry::Layer(Some(digest))
        } else {
            Entry::Other
        };
    }
    if path == format!("{image_hex}.json") {
        Entry::Config
    } else if path.ends_with("/layer.tar") {
        Entry::Layer(None)
    } else {
        Entry::Other
    }
}

/// Pushes `image` from `export` (the daemon's `docker save` stream of it)
/// to `repository` under each of `tags`; `on_progress` hears of each layer
/// as it is read.
pub fn push_export(
    export: impl Read,
    image: &LocalImage,
    repository: &Repository,
    tags: &[String],
    on_progress: &mut dyn FnMut(PushProgress),
) -> Result<Pushed, PushError> {
    let wanted: HashSet<&str> = image.diff_ids.iter().map(String::as_str).collect();
    let mut layers: HashMap<String, Descriptor> = HashMap::new();
    let mut config: Option<Descriptor> = None;
    let mut pushed = Pushed::default();
    let mut archive = tar::Archive::new(export);
    for entry in archive.entries().map_err(PushError::Export)? {
        let mut entry = entry.map_err(PushError::Export)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(PushError::Export)?
            .to_string_lossy()
            .into_owned();
        match classify(&path, &image.id, &wanted) {
            Entry::Config => {
                config = Some(send_config(&mut entry, &image.id, repository)?);
            }
            Entry::Layer(named) => {
                if named.as_ref().is_some_and(|d| layers.contains_key(d)) {
                    continue;
                }
                let size = entry.header().size().unwrap_or(0);
                let progress = PushProgress {
                    layers_done: layers.len(),
                    current: 0,
                    total: size,
                };
                let layer = send_layer(&mut entry, &wanted, &layers, repository, &mut |read| {
                    on_progress(PushProgress {
                        current: read,
                        ..progress
                    })
                })?;
                if let Some(layer) = layer {
                    pushed.bytes_read += layer.read;
                    if layer.sent {
                        pushed.layers_sent += 1;
                        pushed.bytes_sent += layer.descriptor.size;
                    } else {
                        pushed.layers_present += 1;
                    }
                    layers.insert(layer.diff_id, layer.descriptor);
                }
            }
            Entry::Other => {}
        }
    }
    let config = config.ok_or_else(|| {
        PushError::Shape(format!(
            "holds no config named by the image id {}",
            image.id
        ))
    })?;
    let manifest = manifest(&config, &image.diff_ids, &layers)?;
    pushed.digest = format!("sha256:{:x}", Sha256::digest(&manifest));
    for tag in tags {
        repository.put_manifest(tag, MANIFEST_TYPE, manifest.clone())?;
    }
    Ok(pushed)
}

#[derive(Debug, Clone, Serialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    size: u64,
    digest: String,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    config: &'a Descriptor,
    layers: Vec<&'a Descriptor>,
}

/// The Docker v2 manifest: the config, and the layers in the config's
/// order (a layer twice in the image is named twice). Pure.
fn manifest(
    config: &Descriptor,
    diff_ids: &[String],
    layers: &HashMap<String, Descriptor>,
) -> Result<Vec<u8>, PushError> {
    let layers = diff_ids
        .iter()
        .map(|diff_id| {
            layers.get(diff_id).ok_or_else(|| {
                PushError::Shape(format!("holds no layer whose contents are {diff_id}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_TYPE,
        config,
        layers,
    };
    Ok(serde_json::to_vec(&manifest).expect("a manifest serializes"))
}

/// The config's bytes are the image id's preimage: checked, then sent
/// unless the registry has them.
fn send_config(
    entry: &mut impl Read,
    image_id: &str,
    repository: &Repository,
) -> Result<Descriptor, PushError> {
    let mut bytes = Vec::new();
    entry
        .take(16 << 20)
        .read_to_end(&mut bytes)
        .map_err(PushError::Export)?;
    let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
    if digest != image_id {
        return Err(PushError::Shape(format!(
            "holds a config whose digest {digest} is not the image id {image_id}"
        )));
    }
    let descriptor = Descriptor {
        media_type: CONFIG_TYPE,
        size: bytes.len() as u64,
        digest: digest.clone(),
    };
    if !repository.blob_exists(&digest)? {
        if let Some(location) = repository.start_upload(&digest, None)? {
            repository.finish_upload(&location, &digest, Payload::Bytes(bytes))?;
        }
    }
    Ok(descriptor)
}

struct SentLayer {
    diff_id: String,
    descriptor: Descriptor,
    read: u64,
    /// False when the registry had it.
    sent: bool,
}

/// Gzips one layer's tar into a spool file, taking the digests of both;
/// sends it unless the registry has it. None: not a layer of this image
/// (or one already sent under another name).
fn send_layer(
    entry: &mut impl Read,
    wanted: &HashSet<&str>,
    done: &HashMap<String, Descriptor>,
    repository: &Repository,
    on_read: &mut dyn FnMut(u64),
) -> Result<Option<SentLayer>, PushError> {
    let mut spool = tempfile::tempfile().map_err(PushError::Spool)?;
    let mut gzip = FastGzip::new(Hashing::new(entry));
    let mut out = Hashing::new(io::BufWriter::with_capacity(1 << 20, &mut spool));
    let mut buffer = vec![0; 256 * 1024];
    let mut said = 0;
    loop {
        let n = match gzip.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PushError::Export(e)),
        };
        out.write_all(&buffer[..n]).map_err(PushError::Spool)?;
        if gzip.read >= said + (8 << 20) {
            said = gzip.read;
            on_read(said);
        }
    }
    let read = gzip.read;
    on_read(read);
    let diff_id = gzip.into_inner().digest();
    if !wanted.contains(diff_id.as_str()) || done.contains_key(&diff_id) {
        return Ok(None);
    }
    let size = out.count;
    let digest = out.digest();
    let descriptor = Descriptor {
        media_type: LAYER_TYPE,
        size,
        digest: digest.clone(),
    };
    let mut sent = false;
    if !repository.blob_exists(&digest)? {
        if let Some(location) = repository.start_upload(&digest, None)? {
            spool.rewind().map_err(PushError::Spool)?;
            repository.finish_upload(&location, &digest, Payload::File(spool))?;
            sent = true;
        }
    }
    Ok(Some(SentLayer {
        diff_id,
        descriptor,
        read,
        sent,
    }))
}

/// Passes bytes through (read or written), taking their sha256 and count.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Hashing<T> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn digest(self) -> String {
        format!("sha256:{:x}", self.hasher.finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "sha256:aaaa";

    fn wanted() -> HashSet<&'static str> {
        ["sha256:1111", "sha256:2222"].into_iter().collect()
    }

    #[test]
    fn docker_20_exports_and_oci_layouts_are_both_read() {
        let wanted = wanted();
        assert_eq!(classify("aaaa.json", ID, &wanted), Entry::Config);
        assert_eq!(classify("0f3e/layer.tar", ID, &wanted), Entry::Layer(None));
        assert_eq!(classify("0f3e/json", ID, &wanted), Entry::Other);
        assert_eq!(classify("manifest.json", ID, &wanted), Entry::Other);
        assert_eq!(classify("blobs/sha256/aaaa", ID, &wanted), Entry::Config);
        assert_eq!(
            classify("blobs/sha256/2222", ID, &wanted),
            Entry::Layer(Some("sha256:2222".into()))
        );
        // An OCI manifest or index blob: neither.
        assert_eq!(classify("blobs/sha256/9999", ID, &wanted), Entry::Other);
    }

    #[test]
    fn the_manifest_lists_layers_in_the_config_s_order_and_names_a_missing_one() {
        let descriptor = |digest: &str| Descriptor {
            media_type: LAYER_TYPE,
            size: 3,
            digest: digest.into(),
        };
        let config = Descriptor {
            media_type: CONFIG_TYPE,
            size: 10,
            digest: ID.into(),
        };
        let layers: HashMap<String, Descriptor> = [
            ("sha256:1111".to_string(), descriptor("sha256:gz1")),
            ("sha256:2222".to_string(), descriptor("sha256:gz2")),
        ]
        .into();
        let order = ["sha256:2222", "sha256:1111", "sha256:2222"].map(String::from);
        let bytes = manifest(&config, &order, &layers).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["mediaType"], MANIFEST_TYPE);
        assert_eq!(json["config"]["digest"], ID);
        let digests: Vec<_> = json["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(digests, ["sha256:gz2", "sha256:gz1", "sha256:gz2"]);

        let missing = manifest(&config, &["sha256:3333".to_string()], &layers).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("no layer whose contents are sha256:3333")
                && missing.to_string().contains("images.push = \"docker\""),
            "{missing}"
        );
    }

    #[test]
    fn what_a_registry_may_answer_otherwise_next_time_is_tried_again() {
        let unexpected = |m: &str| PushError::Registry(RegistryError::Unexpected(m.into()));
        assert!(unexpected("registry r answered HTTP 503 for x: busy").transient());
        assert!(unexpected(
            "registry r answered HTTP 400 for x: {\"errors\":[{\"code\":\"BLOB_UNKNOWN\"}]}"
        )
        .transient());
        assert!(PushError::Registry(RegistryError::Unreachable("gone".into())).transient());
        assert!(!unexpected("registry r answered HTTP 400 for x: MANIFEST_INVALID").transient());
        assert!(!PushError::Shape("holds nothing".into()).transient());
    }
}

//! The push this tool makes itself (`images.push = "fast"`).
//! The daemon's push gzips every layer at Go's default level on one core;
//! on incompressible content that is most of an image stage's time, and a
//! separate `docker push` cannot be told otherwise (Docker 20.10's BuildKit
//! exports only to the image store). So the image is read once from the
//! daemon's export (`docker save`'s stream, uncompressed layers); each
//! layer is gzipped by `gzip::FastGzip` and streamed to the registry as it
//! is read (one PATCH, then the PUT that names the digest taken on the
//! way), unless this machine knows its gzip and the registry has that:
//! then it is only read through and checked. Then the config and a Docker
//! v2 manifest go up under each tag.
//!
//! What this machine knows (`Known`, a file in its cache directory): a
//! layer's gzip is a pure function of its tar, so a layer's diff id and tar
//! size name its gzip's digest for any registry. A Docker 20.10 export
//! names a layer only after its bytes (by their hash), so a layer is
//! recognised by its tar size among the image's known layers the registry
//! has, when exactly one has that size, and checked once read: a wrong
//! guess (`PushError::Stale`) makes the push start over without guesses. The result is what
//! `docker push` makes (same config, same layers' contents, gzip), with
//! other bytes of gzip, so another digest.
//!
//! It is not always faster: Docker 20.10 writes an export whole to disk
//! before sending it (about 13 ms a MiB here, every layer, also those the
//! registry has), while the daemon's push skips what the registry has and
//! gzips the rest at about 25–35 ms a MiB. So it pays when most of an
//! image's bytes are new (media, models, wheels), and costs when a small
//! layer changes on a big base image. By default (`images.push = "auto"`)
//! the daemon starts the push, and this push takes over when the layers
//! the daemon says it is sending are most of the image
//! (`worth_taking_over`).
//!
//! The export comes in either shape the daemon writes: Docker 20.10's
//! (`<id>/layer.tar`, `<image id>.json`) or the OCI layout of Docker 25+
//! (`blobs/sha256/<digest>`, layers named by their diff id).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::copy::Repository;
use super::docker::PushProgress;
use super::gzip::{read_full, FastGzip};
use super::registry::{Payload, RegistryError};

pub const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Below this many new bytes a hand-over saves under a second: the
/// daemon's push goes on.
pub const TAKE_OVER_FROM: u64 = 32 * 1024 * 1024;

/// Whether this push should take over from the daemon's, now that the
/// daemon has started to send `sending` bytes of layers of an image of
/// `image_size` bytes, `known` of which this machine pushed itself before
/// (pure). The export costs about 13 ms a MiB of the whole image; each new
/// MiB the daemon would gzip costs it 25-35, this push under 5 (measured
/// on the test bed): so this push is the faster one once the new bytes
/// are about half the image. But this push sends again every layer it did
/// not push itself before, where the daemon skips or mounts what the
/// registry has (a base image pushed from this daemon or pulled from that
/// registry): so the daemon must be sending nearly all (4/5) of what this
/// push would send. And when most of the image is layers this push sent
/// before, the daemon is sending them again only because it never saw them
/// go up: it is let finish once, and from then on it skips them (where
/// this push would export them at every push).
pub fn worth_taking_over(sending: u64, image_size: u64, known: u64) -> bool {
    let this_push_sends = image_size.saturating_sub(known);
    sending >= TAKE_OVER_FROM
        && sending.saturating_mul(2) >= image_size
        && sending.saturating_mul(5) >= this_push_sends.saturating_mul(4)
        && known.saturating_mul(2) < image_size.max(1)
}

/// The bytes (uncompressed) of the image's layers this machine knows it
/// pushed before (pure).
pub fn known_bytes(known: &[Known], diff_ids: &[String]) -> u64 {
    let ours: HashSet<&str> = diff_ids.iter().map(String::as_str).collect();
    let mut counted = HashSet::new();
    known
        .iter()
        .filter(|k| ours.contains(k.diff_id.as_str()) && counted.insert(k.diff_id.as_str()))
        .map(|k| k.tar_size)
        .sum()
}

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
    /// A layer taken for a known one by its size was not: start over.
    #[error("a layer of the export was not the known layer its size suggested")]
    Stale,
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

/// What this machine learned of a layer from an earlier fast push.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub diff_id: String,
    /// The uncompressed tar's length, as the export's entry has it.
    pub tar_size: u64,
    /// Its gzip's digest and length.
    pub digest: String,
    pub size: u64,
}

/// Pushes `image` from `export` (the daemon's `docker save` stream of it)
/// to `repository` under each of `tags`; `known` is what earlier pushes
/// learned, and the layers this one gzipped are returned to be learned.
/// `on_progress` hears of each layer as it is read.
pub fn push_export(
    export: impl Read,
    image: &LocalImage,
    repository: &Repository,
    tags: &[String],
    known: &[Known],
    on_progress: &mut dyn FnMut(PushProgress),
) -> Result<(Pushed, Vec<Known>), PushError> {
    let wanted: HashSet<&str> = image.diff_ids.iter().map(String::as_str).collect();
    let mut present = Vec::new();
    for layer in known {
        let new = !present.iter().any(|p: &&Known| p.diff_id == layer.diff_id);
        if new
            && wanted.contains(layer.diff_id.as_str())
            && repository.blob_exists(&layer.digest)?
        {
            present.push(layer);
        }
    }
    let mut layers: HashMap<String, Descriptor> = HashMap::new();
    let mut learned = Vec::new();
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
        let tar_size = entry.header().size().unwrap_or(0);
        let named = match classify(&path, &image.id, &wanted) {
            Entry::Config => {
                config = Some(send_config(&mut entry, &image.id, repository)?);
                continue;
            }
            Entry::Other => continue,
            Entry::Layer(named) => named,
        };
        let progress = PushProgress {
            layers_done: layers.len(),
            current: 0,
            total: tar_size,
            sending: 0,
        };
        let mut on_read = |read| {
            on_progress(PushProgress {
                current: read,
                ..progress
            })
        };
        if let Some(known) = recognise(named.as_deref(), tar_size, &present, &layers) {
            let diff_id = read_through(&mut entry, &mut on_read)?;
            if diff_id != known.diff_id {
                return Err(PushError::Stale);
            }
            pushed.layers_present += 1;
            pushed.bytes_read += tar_size;
            layers.insert(diff_id, descriptor(&known.digest, known.size));
            continue;
        }
        let sent = stream_layer(&mut entry, repository, &mut on_read)?;
        pushed.layers_sent += 1;
        pushed.bytes_read += tar_size;
        pushed.bytes_sent += sent.size;
        learned.push(Known {
            diff_id: sent.diff_id.clone(),
            tar_size,
            digest: sent.digest.clone(),
            size: sent.size,
        });
        layers.insert(sent.diff_id, descriptor(&sent.digest, sent.size));
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
    Ok((pushed, learned))
}

/// The known layer (that the registry has) an entry is taken for: the one
/// its name says, or else the only one of its tar size not seen yet. Pure.
fn recognise<'a>(
    named: Option<&str>,
    tar_size: u64,
    present: &[&'a Known],
    seen: &HashMap<String, Descriptor>,
) -> Option<&'a Known> {
    if let Some(diff_id) = named {
        return present.iter().copied().find(|k| k.diff_id == diff_id);
    }
    let mut candidates = present
        .iter()
        .copied()
        .filter(|k| k.tar_size == tar_size && !seen.contains_key(&k.diff_id));
    match (candidates.next(), candidates.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

fn descriptor(digest: &str, size: u64) -> Descriptor {
    Descriptor {
        media_type: LAYER_TYPE,
        size,
        digest: digest.to_string(),
    }
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

struct StreamedLayer {
    diff_id: String,
    digest: String,
    size: u64,
}

/// How much gzip goes to the upload at a time, and how many such chunks
/// may wait for it: a few MiB in flight, whatever the layer's size.
const CHUNK: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 8;

/// Gzips one layer's tar and streams it to the registry as it is read (an
/// upload thread sends what a channel brings), taking the digests of both;
/// the upload is then completed under the gzip's digest.
fn stream_layer(
    entry: &mut impl Read,
    repository: &Repository,
    on_read: &mut dyn FnMut(u64),
) -> Result<StreamedLayer, PushError> {
    let location = repository
        .start_upload("a layer", None)?
        .ok_or_else(|| PushError::Shape("led the registry to mount a blob nobody named".into()))?;
    let mut gzip = FastGzip::new(Hashing::new(entry));
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let (uploaded, produced) = std::thread::scope(|scope| {
        let upload = scope.spawn(|| {
            let body = Payload::Reader(Box::new(ChannelReader::new(receiver)));
            repository.append_to_upload(&location, body)
        });
        let produced = produce(&mut gzip, sender, on_read);
        (upload.join().expect("the upload thread ends"), produced)
    });
    // The registry's refusal explains a gzip that could not be handed over.
    let next = uploaded?;
    let (digest, size) = produced.map_err(PushError::Export)?;
    repository.finish_upload(&next, &digest, Payload::Empty)?;
    Ok(StreamedLayer {
        diff_id: gzip.into_inner().digest(),
        digest,
        size,
    })
}

/// Reads the gzip out in chunks to `sender`; the gzip's digest and length.
fn produce<R: Read>(
    gzip: &mut FastGzip<Hashing<R>>,
    sender: std::sync::mpsc::SyncSender<Vec<u8>>,
    on_read: &mut dyn FnMut(u64),
) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut size = 0;
    let mut said = 0;
    loop {
        let mut chunk = vec![0; CHUNK];
        let n = read_full(gzip, &mut chunk)?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        hasher.update(&chunk);
        size += n as u64;
        if sender.send(chunk).is_err() {
            return Err(io::Error::other("the upload stopped"));
        }
        if gzip.read >= said + (8 << 20) {
            said = gzip.read;
            on_read(said);
        }
    }
    on_read(gzip.read);
    Ok((format!("sha256:{:x}", hasher.finalize()), size))
}

/// Reads a layer the registry has through, for its diff id.
fn read_through(entry: &mut impl Read, on_read: &mut dyn FnMut(u64)) -> Result<String, PushError> {
    let mut hashing = Hashing::new(entry);
    let mut buffer = vec![0; CHUNK];
    let mut said = 0;
    loop {
        match hashing.read(&mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PushError::Export(e)),
        }
        if hashing.count >= said + (8 << 20) {
            said = hashing.count;
            on_read(said);
        }
    }
    on_read(hashing.count);
    Ok(hashing.digest())
}

/// The upload's body: what the channel brings, until it closes.
struct ChannelReader {
    receiver: std::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    given: usize,
}

impl ChannelReader {
    fn new(receiver: std::sync::mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            receiver,
            current: Vec::new(),
            given: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.given == self.current.len() {
            match self.receiver.recv() {
                Ok(chunk) => (self.current, self.given) = (chunk, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.given);
        buf[..n].copy_from_slice(&self.current[self.given..self.given + n]);
        self.given += n;
        Ok(n)
    }
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

/// Where this machine keeps what it learned (`Known`): the user's cache
/// directory; the encoder's version is in the name, since another encoder
/// would give other digests. None without a home.
pub fn known_file() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(
        base.join("colony-deploy")
            .join(format!("fast-push-layers-v{}.tsv", super::gzip::ENCODING)),
    )
}

/// The file's lines (`diff_id tar_size digest size`); a line that does
/// not parse is left out (it only costs a gzip), a missing file is empty.
pub fn load_known(path: &std::path::Path) -> Vec<Known> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse_known(&text)
}

/// Pure.
fn parse_known(text: &str) -> Vec<Known> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let known = Known {
                diff_id: words.next()?.to_string(),
                tar_size: words.next()?.parse().ok()?,
                digest: words.next()?.to_string(),
                size: words.next()?.parse().ok()?,
            };
            (known.diff_id.starts_with("sha256:") && known.digest.starts_with("sha256:"))
                .then_some(known)
        })
        .collect()
}

/// Appends `learned` (each line in one write, so two pushes at once do not
/// interleave within a line); a failure only loses what would be learned.
pub fn remember(path: &std::path::Path, learned: &[Known]) -> io::Result<()> {
    use std::io::Write as _;
    if learned.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for known in learned {
        file.write_all(
            format!(
                "{} {} {} {}\n",
                known.diff_id, known.tar_size, known.digest, known.size
            )
            .as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_hands_over_only_when_most_of_a_big_enough_image_is_new() {
        const MIB: u64 = 1024 * 1024;
        // 200 MiB of new data on a 2 MiB base: this push's export pays.
        assert!(worth_taking_over(200 * MIB, 202 * MIB, 0));
        // All but a small base is new: the base is re-sent, at little cost.
        assert!(worth_taking_over(180 * MIB, 200 * MIB, 0));
        // A 200 MiB layer on a 217 MiB Python base that the registry has
        // (the daemon mounts it): this push would send the base again,
        // 417 MiB against the daemon's 210 (the case measured by hand:
        // 14.9 s against the daemon's 12.4 s).
        assert!(!worth_taking_over(210 * MIB, 417 * MIB, 0));
        // A 50 MiB layer on a 230 MiB Python base: the daemon's gzip of
        // the new layer costs less than an export of the whole image.
        assert!(!worth_taking_over(50 * MIB, 280 * MIB, 0));
        // A small image, all new: under a second either way.
        assert!(!worth_taking_over(20 * MIB, 20 * MIB, 0));
        // The daemon has said nothing yet.
        assert!(!worth_taking_over(0, 100 * MIB, 0));
        // The image's size unknown (0): the new bytes alone decide.
        assert!(worth_taking_over(40 * MIB, 0, 0));
        // The daemon sends again the base this push sent last time: it is
        // let finish once, so that it skips the base from then on.
        assert!(!worth_taking_over(230 * MIB, 240 * MIB, 230 * MIB));
        // A known base under a big new layer: the new layer decides.
        assert!(worth_taking_over(300 * MIB, 330 * MIB, 30 * MIB));
    }

    #[test]
    fn known_bytes_count_each_of_the_image_s_known_layers_once() {
        let layer = |diff_id: &str, tar_size| Known {
            diff_id: diff_id.into(),
            tar_size,
            digest: format!("sha256:gz-{diff_id}"),
            size: tar_size / 2,
        };
        let known = [
            layer("sha256:1111", 100),
            layer("sha256:2222", 20),
            layer("sha256:1111", 100),
            layer("sha256:9999", 5000),
        ];
        let image = [
            "sha256:1111".to_string(),
            "sha256:2222".into(),
            "sha256:3333".into(),
        ];
        assert_eq!(known_bytes(&known, &image), 120);
        assert_eq!(known_bytes(&[], &image), 0);
    }

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

    fn known(diff_id: &str, tar_size: u64) -> Known {
        Known {
            diff_id: diff_id.into(),
            tar_size,
            digest: format!("{diff_id}-gz"),
            size: tar_size / 2,
        }
    }

    #[test]
    fn a_known_layer_is_recognised_by_its_name_or_its_one_size() {
        let (a, b, c) = (
            known("sha256:a", 1024),
            known("sha256:b", 2048),
            known("sha256:c", 2048),
        );
        let present = [&a, &b, &c];
        let mut seen = HashMap::new();
        assert_eq!(recognise(None, 1024, &present, &seen), Some(&a));
        // Two of that size: neither is guessed.
        assert_eq!(recognise(None, 2048, &present, &seen), None);
        assert_eq!(recognise(None, 4096, &present, &seen), None);
        // Once one of them was seen, the other is the only one left.
        seen.insert("sha256:b".to_string(), descriptor("sha256:b-gz", 1024));
        assert_eq!(recognise(None, 2048, &present, &seen), Some(&c));
        // An OCI layout names it.
        assert_eq!(recognise(Some("sha256:b"), 1, &present, &seen), Some(&b));
        assert_eq!(recognise(Some("sha256:z"), 1024, &present, &seen), None);
    }

    #[test]
    fn what_was_learned_reads_back_and_a_bad_line_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache/known.tsv");
        let learned = [known("sha256:a", 1024), known("sha256:b", 2048)];
        remember(&path, &learned[..1]).unwrap();
        remember(&path, &learned[1..]).unwrap();
        remember(&path, &[]).unwrap();
        assert_eq!(load_known(&path), learned);
        assert_eq!(
            parse_known("sha256:a 12 sha256:x 6\nhalf a line\nsha256:b many sha256:y 1\nmd5:c 1 sha256:z 1\n"),
            [Known {
                diff_id: "sha256:a".into(),
                tar_size: 12,
                digest: "sha256:x".into(),
                size: 6
            }]
        );
        assert!(load_known(&dir.path().join("none")).is_empty());
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

//! Build contexts as tar streams: the files of a directory that
//! `.dockerignore` lets through, written by a blocking thread into a small
//! bounded channel, so a context of any size costs a few chunks of memory.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::images::dockerignore::DockerIgnore;

/// Chunks in flight between the tar writer and the Docker API request.
const CHANNEL_CHUNKS: usize = 4;
const CHUNK_SIZE: usize = 64 * 1024;

/// The ignore file that BuildKit's Dockerfile frontend reads for
/// `dockerfile` (both relative to the context), and the docker CLI with
/// it: `<Dockerfile>.dockerignore` beside the Dockerfile when there is one,
/// in place of the context's `.dockerignore`. The legacy builder's CLI
/// reads `.dockerignore` only.
pub fn ignore_file(context: &Path, dockerfile: &Path, buildkit: bool) -> PathBuf {
    let mut own = dockerfile.as_os_str().to_owned();
    own.push(".dockerignore");
    match buildkit && context.join(&own).is_file() {
        true => PathBuf::from(own),
        false => PathBuf::from(".dockerignore"),
    }
}

/// The files of `context` that go to the daemon, relative and sorted
/// (directories before their contents), as `ignore_file` (relative to the
/// context) lets them through. The Dockerfile and the ignore file always
/// go, as the Docker CLI sends them even when ignored.
pub fn list_files(
    context: &Path,
    dockerfile: &Path,
    ignore_file: &Path,
) -> io::Result<Vec<PathBuf>> {
    let ignore = match std::fs::read_to_string(context.join(ignore_file)) {
        Ok(text) => DockerIgnore::parse(&text).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", context.join(ignore_file).display()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(e) => return Err(e),
    };
    let always = [ignore_file.to_path_buf(), dockerfile.to_path_buf()];
    let mut files = Vec::new();
    walk(context, Path::new(""), &ignore, &always, &mut files)?;
    Ok(files)
}

/// The refusal of a socket, FIFO or device in a context: `docker build`
/// refuses them too.
pub fn not_sendable(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is not a file, directory or symbolic link",
            path.display()
        ),
    )
}

fn walk(
    root: &Path,
    dir: &Path,
    ignore: &DockerIgnore,
    always: &[PathBuf],
    out: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let relative = dir.join(entry.file_name());
        let as_text = relative.to_string_lossy().replace('\\', "/");
        let excluded = ignore.is_excluded(&as_text) && !always.contains(&relative);
        let is_dir = entry.file_type()?.is_dir();
        if !excluded {
            out.push(relative.clone());
        }
        // An excluded directory may still hold a re-included file.
        if is_dir && (!excluded || ignore.has_reinclusions()) {
            walk(root, &relative, ignore, always, out)?;
        }
    }
    Ok(())
}

/// A file the tool adds to a context under a name of its own.
#[derive(Clone)]
pub struct Extra {
    pub name: PathBuf,
    pub source: ExtraSource,
    /// Unix mode in the tar header (the legacy builder has no `COPY --chmod`).
    pub mode: u32,
}

#[derive(Clone)]
pub enum ExtraSource {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// A tar of `files` (relative to `root`) then `extras`, streamed; `sent`
/// counts the bytes that left.
pub fn tar_stream(
    root: PathBuf,
    files: Vec<PathBuf>,
    extras: Vec<Extra>,
    sent: Arc<AtomicU64>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            sender: sender.clone(),
            buffer: Vec::with_capacity(CHUNK_SIZE),
            sent,
        };
        if let Err(e) = write_tar(writer, &root, &files, &extras) {
            let _ = sender.blocking_send(Err(e));
        }
    });
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    })
}

/// Each file with its own mode, as `docker build` sends it (a 0600 file
/// stays 0600 in the image, a 0700 script stays executable to its owner
/// only); times and owners fixed (mtime 0, uid and gid 0), so an unchanged
/// tree gives the daemon the same layer cache keys on every machine.
fn write_tar(
    writer: ChannelWriter,
    root: &Path,
    files: &[PathBuf],
    extras: &[Extra],
) -> io::Result<()> {
    let mut tar = tar::Builder::new(writer);
    tar.follow_symlinks(false);
    for file in files {
        append_with_mode(&mut tar, &root.join(file), file)?;
    }
    for extra in extras {
        let mut header = tar::Header::new_gnu();
        header.set_mode(extra.mode);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        match &extra.source {
            ExtraSource::Bytes(bytes) => {
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, &extra.name, bytes.as_slice())?;
            }
            ExtraSource::File(path) => {
                let file = std::fs::File::open(path)?;
                header.set_size(file.metadata()?.len());
                tar.append_data(&mut header, &extra.name, file)?;
            }
        }
    }
    let mut writer = tar.into_inner()?;
    writer.flush()
}

/// One entry (file, directory or symbolic link) with its mode kept and its
/// times and owners fixed.
fn append_with_mode<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_username("")?;
    header.set_groupname("")?;
    if let Some(gnu) = header.as_gnu_mut() {
        gnu.set_atime(0);
        gnu.set_ctime(0);
    }
    let kind = meta.file_type();
    if kind.is_symlink() {
        header.set_size(0);
        tar.append_link(&mut header, name, std::fs::read_link(path)?)
    } else if kind.is_dir() {
        header.set_size(0);
        tar.append_data(&mut header, name, io::empty())
    } else if kind.is_file() {
        tar.append_data(&mut header, name, std::fs::File::open(path)?)
    } else {
        Err(not_sendable(path))
    }
}

/// Blocking writer half: fills a chunk, hands it to the async side, waits
/// when the channel is full (backpressure from the daemon's upload speed).
struct ChannelWriter {
    sender: mpsc::Sender<Result<Bytes, io::Error>>,
    buffer: Vec<u8>,
    sent: Arc<AtomicU64>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_SIZE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_SIZE));
        self.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.sender
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the Docker daemon stopped reading the build context",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docker build` with BuildKit reads `<Dockerfile>.dockerignore` in
    /// place of `.dockerignore`; the legacy builder does not.
    #[test]
    fn a_dockerfile_of_its_own_ignore_file_replaces_dockerignore() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("docker")).unwrap();
        for (file, text) in [
            ("docker/prod.Dockerfile", "FROM scratch\n"),
            ("docker/prod.Dockerfile.dockerignore", "*.md\n"),
            (".dockerignore", "*.txt\n"),
            ("notes.md", "x"),
            ("notes.txt", "x"),
        ] {
            std::fs::write(root.join(file), text).unwrap();
        }
        let dockerfile = Path::new("docker/prod.Dockerfile");
        let own = ignore_file(root, dockerfile, true);
        assert_eq!(own, Path::new("docker/prod.Dockerfile.dockerignore"));
        assert_eq!(
            ignore_file(root, dockerfile, false),
            Path::new(".dockerignore")
        );
        assert_eq!(
            ignore_file(root, Path::new("Dockerfile"), true),
            Path::new(".dockerignore")
        );
        assert_eq!(
            listed(root, dockerfile, &own),
            [
                ".dockerignore",
                "docker",
                "docker/prod.Dockerfile",
                "docker/prod.Dockerfile.dockerignore",
                "notes.txt"
            ]
        );
    }

    fn listed(root: &Path, dockerfile: &Path, ignore_file: &Path) -> Vec<String> {
        list_files(root, dockerfile, ignore_file)
            .unwrap()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn lists_what_dockerignore_lets_through() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for file in [
            "Dockerfile",
            "app.py",
            "notes.md",
            "README.md",
            "cache/a.bin",
            "cache/keep.txt",
            ".dockerignore",
        ] {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), "x").unwrap();
        }
        std::fs::write(
            root.join(".dockerignore"),
            "*.md\n!README.md\ncache\n!cache/keep.txt\nDockerfile\n.dockerignore\n",
        )
        .unwrap();
        let dockerignore = Path::new(".dockerignore");
        assert_eq!(
            listed(root, Path::new("Dockerfile"), dockerignore),
            [
                ".dockerignore",
                "Dockerfile",
                "README.md",
                "app.py",
                "cache/keep.txt"
            ]
        );
    }

    #[test]
    fn modes_are_kept_and_times_and_owners_fixed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (file, mode) in [("secret.txt", 0o600), ("run.sh", 0o750), ("app.py", 0o644)] {
            std::fs::write(root.join(file), "x").unwrap();
            std::fs::set_permissions(root.join(file), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        std::os::unix::fs::symlink("app.py", root.join("link.py")).unwrap();
        let files: Vec<PathBuf> = ["app.py", "link.py", "run.sh", "secret.txt"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let mut out = Vec::new();
        {
            let mut tar = tar::Builder::new(&mut out);
            for file in &files {
                append_with_mode(&mut tar, &root.join(file), file).unwrap();
            }
            tar.finish().unwrap();
        }
        let mut archive = tar::Archive::new(out.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(
                (
                    header.mtime().unwrap(),
                    header.uid().unwrap(),
                    header.gid().unwrap()
                ),
                (0, 0, 0)
            );
            seen.push((
                entry.path().unwrap().display().to_string(),
                header.mode().unwrap() & 0o7777,
                header.entry_type(),
            ));
        }
        assert_eq!(
            seen,
            [
                ("app.py".to_string(), 0o644, tar::EntryType::Regular),
                ("link.py".to_string(), 0o777, tar::EntryType::Symlink),
                ("run.sh".to_string(), 0o750, tar::EntryType::Regular),
                ("secret.txt".to_string(), 0o600, tar::EntryType::Regular),
            ]
        );
    }
}

//! What a build context looks like to BuildKit's file sync (fsutil's
//! `DiffCopy`, as the docker CLI serves it): every entry's stat, in the
//! order fsutil's receiver checks (depth first, names byte-sorted, each
//! directory before its contents), filtered by the patterns the receiver
//! asks with. The session (`images/session.rs`) sends these stats and then
//! the files the receiver requests. Pure but for `Tree::read`'s stat calls.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard_buildkit_proto::fsutil::types::Stat;

use crate::images::context::{self, Extra, ExtraSource};
use crate::images::dockerignore::DockerIgnore;

/// Go's `os.FileMode` bits, which fsutil puts in `Stat.mode`.
const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_SETUID: u32 = 1 << 23;
const GO_SETGID: u32 = 1 << 22;
const GO_STICKY: u32 = 1 << 20;

/// Where a file's bytes come from when the receiver asks for them.
#[derive(Debug, Clone)]
pub enum Content {
    Disk(PathBuf),
    Bytes(Arc<Vec<u8>>),
    /// Directories and symbolic links: nothing to send.
    None,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub stat: Stat,
    pub content: Content,
    /// The tool's own file (the runner, its Dockerfile): the user's ignore
    /// patterns never drop it.
    pub ours: bool,
}

/// A context: its entries keyed by path components, which orders them
/// as fsutil walks (`a` < `a/x` < `a.txt`).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    entries: BTreeMap<Vec<String>, Entry>,
}

impl Tree {
    /// `files` (relative to `root`, as `context::list_files` gives them)
    /// and `extras`, with every directory above them. Owners are root, as
    /// the CLI sends them. Times are the files' own: BuildKit keeps the
    /// last context of a checkout and asks again only for the files whose
    /// size or time changed (its cache keys hash the content, not times).
    /// The tool's generated files get a time from their content.
    pub fn read(root: &Path, files: &[PathBuf], extras: &[Extra]) -> io::Result<Tree> {
        let mut tree = Tree::default();
        for file in files {
            let meta = std::fs::symlink_metadata(root.join(file))?;
            let link = match meta.file_type().is_symlink() {
                true => std::fs::read_link(root.join(file))?
                    .to_string_lossy()
                    .into_owned(),
                false => String::new(),
            };
            let content = match meta.file_type().is_file() {
                true => Content::Disk(root.join(file)),
                false => Content::None,
            };
            let mode = go_mode(&meta, &root.join(file))?;
            tree.insert(
                slashed(file),
                mode,
                meta.len(),
                mod_time(&meta),
                link,
                content,
                false,
            );
        }
        for extra in extras {
            let (size, time, content) = match &extra.source {
                ExtraSource::Bytes(bytes) => (
                    bytes.len() as u64,
                    time_of(bytes),
                    Content::Bytes(Arc::new(bytes.clone())),
                ),
                ExtraSource::File(path) => {
                    let meta = std::fs::metadata(path)?;
                    (meta.len(), mod_time(&meta), Content::Disk(path.clone()))
                }
            };
            let (path, mode) = (slashed(&extra.name), extra.mode & 0o777);
            tree.insert(path, mode, size, time, String::new(), content, true);
        }
        tree.add_parents(root)?;
        Ok(tree)
    }

    #[allow(clippy::too_many_arguments)] // one stat's fields, named at each call
    fn insert(
        &mut self,
        path: String,
        mode: u32,
        size: u64,
        mod_time: i64,
        linkname: String,
        content: Content,
        ours: bool,
    ) {
        let size = match content {
            Content::None => 0,
            _ => size as i64,
        };
        let stat = Stat {
            path: path.clone(),
            mode,
            size,
            mod_time,
            linkname,
            ..Stat::default()
        };
        self.entries.insert(
            components(&path),
            Entry {
                stat,
                content,
                ours,
            },
        );
    }

    /// Every directory above an entry is an entry too: fsutil's receiver
    /// refuses a path whose parent it has not seen. A directory the user's
    /// `.dockerignore` left out but that holds a re-included file is
    /// stat'ed here; the tool's own directory is 0755.
    fn add_parents(&mut self, root: &Path) -> io::Result<()> {
        let missing: BTreeSet<Vec<String>> = self
            .entries
            .keys()
            .flat_map(|key| (1..key.len()).map(move |n| key[..n].to_vec()))
            .filter(|parent| !self.entries.contains_key(parent))
            .collect();
        for parent in missing {
            let path = parent.join("/");
            let ours = self
                .entries
                .iter()
                .filter(|(key, _)| key.starts_with(&parent))
                .all(|(_, entry)| entry.ours);
            let (mode, time) = match std::fs::symlink_metadata(root.join(&path)) {
                Ok(meta) if meta.is_dir() && !ours => {
                    (go_mode(&meta, &root.join(&path))?, mod_time(&meta))
                }
                _ => (GO_DIR | 0o755, 0),
            };
            self.insert(path, mode, 0, time, String::new(), Content::None, ours);
        }
        Ok(())
    }

    /// The entries the receiver asked for, in fsutil's order: those its
    /// include patterns (and `followpaths`) let in and its exclude patterns
    /// do not drop, with the directories above them. No include pattern
    /// and no follow path: everything is included.
    pub fn select(&self, request: &Request) -> Result<Vec<Entry>, String> {
        let mut includes = request.include_patterns.clone();
        includes.extend(self.followed(&request.follow_paths));
        let included = (!includes.is_empty())
            .then(|| DockerIgnore::parse(&includes.join("\n")))
            .transpose()?;
        let excluded = DockerIgnore::parse(&request.exclude_patterns.join("\n"))?;
        let kept: BTreeSet<&Vec<String>> = self
            .entries
            .iter()
            .filter(|(_, entry)| {
                let path = &entry.stat.path;
                let wanted = included.as_ref().is_none_or(|i| i.is_excluded(path));
                wanted && (entry.ours || !excluded.is_excluded(path))
            })
            .map(|(key, _)| key)
            .collect();
        let with_parents: BTreeSet<Vec<String>> = kept
            .iter()
            .flat_map(|key| (1..=key.len()).map(move |n| key[..n].to_vec()))
            .collect();
        Ok(with_parents
            .iter()
            .filter_map(|key| self.entries.get(key).cloned())
            .collect())
    }

    /// `followpaths`: the paths themselves and, for a symbolic link in the
    /// tree, what it points to (relative to its directory), as fsutil's
    /// `FollowLinks` resolves them.
    fn followed(&self, paths: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for path in paths {
            let path = path.trim_start_matches('/').to_string();
            let mut current = path.clone();
            // A chain of links, bounded as the kernel bounds it.
            for _ in 0..40 {
                let Some(entry) = self.entries.get(&components(&current)) else {
                    break;
                };
                if entry.stat.linkname.is_empty() || entry.stat.mode & GO_SYMLINK == 0 {
                    break;
                }
                let parent = Path::new(&current).parent().unwrap_or(Path::new(""));
                let target = normalise(&parent.join(&entry.stat.linkname));
                out.push(current);
                current = target;
            }
            out.push(current);
        }
        out
    }
}

/// What a `DiffCopy` call asks for, from its gRPC metadata.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Request {
    pub dir_name: String,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub follow_paths: Vec<String>,
}

impl Request {
    /// From metadata values by key; a key's values are URL-encoded when
    /// `<key>-encoded` says `true` (BuildKit encodes non-ASCII patterns).
    pub fn from_metadata(get: impl Fn(&str) -> Vec<String>) -> Request {
        let values = |key: &str| {
            let encoded = get(&format!("{key}-encoded"))
                .first()
                .is_some_and(|v| v == "true" || v == "1");
            get(key)
                .into_iter()
                .map(|v| match encoded {
                    true => percent_encoding::percent_decode_str(&v.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned(),
                    false => v,
                })
                .collect::<Vec<_>>()
        };
        Request {
            dir_name: values("dir-name").into_iter().next().unwrap_or_default(),
            include_patterns: values("include-patterns"),
            exclude_patterns: values("exclude-patterns"),
            follow_paths: values("followpaths"),
        }
    }
}

/// fsutil's request for a file's bytes names it by its stat's position.
pub fn requestable(stat: &Stat) -> bool {
    stat.mode & (GO_DIR | GO_SYMLINK) == 0
}

fn go_mode(meta: &std::fs::Metadata, path: &Path) -> io::Result<u32> {
    let unix = meta.permissions().mode();
    let kind = meta.file_type();
    let mut mode = unix & 0o777;
    for (bit, go) in [
        (0o4000, GO_SETUID),
        (0o2000, GO_SETGID),
        (0o1000, GO_STICKY),
    ] {
        if unix & bit != 0 {
            mode |= go;
        }
    }
    if kind.is_dir() {
        mode |= GO_DIR;
    } else if kind.is_symlink() {
        mode |= GO_SYMLINK;
    } else if !kind.is_file() {
        return Err(context::not_sendable(path));
    }
    Ok(mode)
}

/// A file's modification time in nanoseconds, as fsutil's stat holds it.
fn mod_time(meta: &std::fs::Metadata) -> i64 {
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// The first of `files` whose name is not UTF-8: fsutil's stat holds a
/// path as a protobuf string, which cannot carry it (a tar can).
pub fn first_name_not_utf8(files: &[PathBuf]) -> Option<&PathBuf> {
    files.iter().find(|file| file.to_str().is_none())
}

/// A time for generated bytes that changes when they do (so BuildKit,
/// which compares size and time, asks for them again).
fn time_of(bytes: &[u8]) -> i64 {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(bytes);
    let mut first = [0; 8];
    first.copy_from_slice(&hash[..8]);
    (u64::from_le_bytes(first) >> 2) as i64
}

fn slashed(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "/")
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(String::from)
        .collect()
}

/// `a/./b/../c` → `a/c`, never above the root.
fn normalise(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in slashed(path).split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other.to_string()),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_not_utf8_is_found() {
        use std::os::unix::ffi::OsStrExt;
        let latin1 = PathBuf::from(std::ffi::OsStr::from_bytes(b"menu/caf\xe9.txt"));
        let files = vec![
            PathBuf::from("a.txt"),
            latin1.clone(),
            PathBuf::from("café.txt"),
        ];
        assert_eq!(first_name_not_utf8(&files), Some(&latin1));
        assert_eq!(first_name_not_utf8(&files[2..]), None);
    }

    fn tree(files: &[&str]) -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        for file in files {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, file.as_bytes()).unwrap();
        }
        let listed: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        let extras = vec![Extra {
            name: ".colony-deploy/run-migrations".into(),
            source: ExtraSource::Bytes(b"runner".to_vec()),
            mode: 0o755,
        }];
        let tree = Tree::read(dir.path(), &listed, &extras).unwrap();
        (dir, tree)
    }

    fn paths(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.stat.path.as_str()).collect()
    }

    #[test]
    fn entries_come_in_fsutils_order_with_their_directories() {
        let (_dir, tree) = tree(&["a.txt", "a/x", "Dockerfile", "b/c/d"]);
        let all = tree.select(&Request::default()).unwrap();
        assert_eq!(
            paths(&all),
            [
                ".colony-deploy",
                ".colony-deploy/run-migrations",
                "Dockerfile",
                "a",
                "a/x",
                "a.txt",
                "b",
                "b/c",
                "b/c/d"
            ]
        );
        let dir = &all[3].stat;
        assert_eq!(dir.mode & GO_DIR, GO_DIR);
        assert!(!requestable(dir));
        let runner = &all[1].stat;
        assert_eq!((runner.mode, runner.size), (0o755, 6));
        assert_eq!(runner.mod_time, time_of(b"runner"));
        assert_ne!(time_of(b"runner"), time_of(b"runnex"));
        assert!(requestable(runner));
    }

    #[test]
    fn the_receivers_patterns_choose_and_the_tools_files_stay() {
        let (_dir, tree) = tree(&["Dockerfile", "app/main.py", "app/cache/x", "docs/a.md"]);
        let dockerfile_only = Request {
            follow_paths: vec!["Dockerfile".into(), "Dockerfile.dockerignore".into()],
            ..Request::default()
        };
        assert_eq!(
            paths(&tree.select(&dockerfile_only).unwrap()),
            ["Dockerfile"]
        );
        let ignoring = Request {
            exclude_patterns: vec!["docs".into(), "**/cache".into(), ".*".into()],
            ..Request::default()
        };
        assert_eq!(
            paths(&tree.select(&ignoring).unwrap()),
            [
                ".colony-deploy",
                ".colony-deploy/run-migrations",
                "Dockerfile",
                "app",
                "app/main.py"
            ]
        );
        let one_file = Request {
            include_patterns: vec!["app/main.py".into()],
            ..Request::default()
        };
        assert_eq!(
            paths(&tree.select(&one_file).unwrap()),
            ["app", "app/main.py"]
        );
    }

    #[test]
    fn a_followed_link_brings_its_target() {
        let (dir, _) = tree(&["docker/Dockerfile.real"]);
        std::os::unix::fs::symlink("docker/Dockerfile.real", dir.path().join("Dockerfile"))
            .unwrap();
        let listed: Vec<PathBuf> = ["Dockerfile", "docker/Dockerfile.real"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let tree = Tree::read(dir.path(), &listed, &[]).unwrap();
        let request = Request {
            follow_paths: vec!["Dockerfile".into()],
            ..Request::default()
        };
        assert_eq!(
            paths(&tree.select(&request).unwrap()),
            ["Dockerfile", "docker", "docker/Dockerfile.real"]
        );
    }

    #[test]
    fn encoded_metadata_is_decoded() {
        let request = Request::from_metadata(|key| match key {
            "dir-name" => vec!["context".into()],
            "exclude-patterns" => vec!["caf%C3%A9".into(), "a+b".into()],
            "exclude-patterns-encoded" => vec!["true".into()],
            "followpaths" => vec!["Dockerfile".into()],
            _ => vec![],
        });
        assert_eq!(request.dir_name, "context");
        assert_eq!(request.exclude_patterns, ["café", "a b"]);
        assert_eq!(request.follow_paths, ["Dockerfile"]);
    }
}

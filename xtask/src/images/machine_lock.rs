//! One build and push of an image tag at a time on this machine. Two
//! terminals (or a person and a script) deploying the same commit would
//! otherwise build two images under one tag and push both at once: the
//! registry may then answer one push's manifest with "blob unknown" (see
//! `docker::push_is_transient`), and the two deploys pin different digests.
//! With the lock, the second waits, finds the tag in the registry, and uses
//! the first one's digest. Across machines, the push's retries cover it.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Held while one image tag is checked, built and pushed; released when
/// dropped (or when the process ends, however it ends: it is a `flock`).
/// Dropped, it also removes its file (every deploy locks new tags: the files
/// would pile up in the temp directory, thousands of them); a waiter that
/// then holds the removed file finds out and locks the path anew.
#[derive(Debug)]
pub struct ImageLock {
    file: File,
    path: PathBuf,
}

impl Drop for ImageLock {
    fn drop(&mut self) {
        // Still locked here: nobody holds this file after us but waiters,
        // which will see it gone. Another user's file may not be ours to
        // remove (the sticky temp directory): then it stays, as before.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Whether `file` is still what `path` names (not removed by the holder
/// that let it go while this process waited).
fn still_named(file: &File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(held), Ok(named)) => held.ino() == named.ino() && held.dev() == named.dev(),
        _ => false,
    }
}

/// The lock file of `reference:tag`, in the temporary directory every
/// user of this machine shares.
fn path_for(image: &str) -> PathBuf {
    let hash = format!("{:x}", Sha256::digest(image.as_bytes()));
    std::env::temp_dir().join(format!("colony-deploy-image-{}.lock", &hash[..16]))
}

impl ImageLock {
    /// Takes the lock of `image` (`reference:tag`), calling `on_wait` once
    /// if another process holds it. Blocks: call from a blocking thread.
    pub fn acquire(image: &str, on_wait: impl FnOnce(&str)) -> Result<ImageLock> {
        let path = path_for(image);
        let mut on_wait = Some(on_wait);
        loop {
            // Another user's file may be read-only to us; a shared read-only
            // descriptor locks the same.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .or_else(|_| File::open(&path))
                .with_context(|| format!("opening the lock file {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    if let Some(on_wait) = on_wait.take() {
                        on_wait(&format!(
                            "waiting for another build or push of {image} on this machine to finish"
                        ));
                    }
                    file.lock()
                        .with_context(|| format!("locking {}", path.display()))?;
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
            if still_named(&file, &path) {
                return Ok(ImageLock { file, path });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let image = format!("127.0.0.1:1/lock-test-{}:t", std::process::id());
        let first = ImageLock::acquire(&image, |_| panic!("nobody holds it yet")).unwrap();
        let (said, heard) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let lock =
                ImageLock::acquire(&image, |message| said.send(message.to_string()).unwrap());
            lock.map(|_| ())
        });
        let message = heard.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            message.starts_with("waiting for another build or push of 127.0.0.1:1/lock-test-"),
            "{message}"
        );
        assert!(!waiter.is_finished(), "took a held lock");
        drop(first);
        waiter.join().unwrap().unwrap();
    }

    #[test]
    fn a_released_lock_leaves_no_file_and_a_waiter_on_the_removed_one_locks_anew() {
        let image = format!("127.0.0.1:1/lock-file-{}:t", std::process::id());
        let path = path_for(&image);
        let first = ImageLock::acquire(&image, |_| panic!("nobody holds it yet")).unwrap();
        assert!(path.exists());
        let (said, heard) = mpsc::channel();
        let (image2, path2) = (image.clone(), path.clone());
        let waiter = std::thread::spawn(move || {
            let lock = ImageLock::acquire(&image2, |m| said.send(m.to_string()).unwrap()).unwrap();
            // It holds the file the path names now, not the removed one.
            assert!(still_named(&lock.file, &path2));
            lock
        });
        heard.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(first);
        let second = waiter.join().unwrap();
        drop(second);
        assert!(!path.exists(), "the lock file outlived its holders");
        drop(ImageLock::acquire(&image, |_| panic!("nobody holds it now")).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn each_tag_has_its_own_lock() {
        assert_ne!(path_for("r/a:1"), path_for("r/a:2"));
        assert_eq!(path_for("r/a:1"), path_for("r/a:1"));
    }
}

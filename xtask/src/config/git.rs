//! Image tags from git: immutable, so that `helm upgrade` always rolls pods.
//!
//! A clean build context is tagged with the commit's short sha. A context
//! with uncommitted changes gets a suffix from a hash of those changes, so
//! two different dirty trees never share a tag.

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

/// The commit the images are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
    pub short: String,
}

/// Whether a build context matches the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextState {
    Clean,
    /// A hash of the uncommitted changes (diff and untracked files).
    Dirty {
        fingerprint: String,
    },
}

/// The tag an image built from `context` at `commit` with `settings`
/// (`Image::settings_fingerprint`: the Dockerfile, build args, platform and
/// target deploy.toml gives it) gets: a change of any of them is another
/// image, so another tag. Pure.
pub fn image_tag(commit: &Commit, state: &ContextState, settings: &str) -> String {
    let clean = format!("{}-{settings}", commit.short);
    match state {
        ContextState::Clean => clean,
        ContextState::Dirty { fingerprint } => {
            format!("{clean}-dirty-{}", &fingerprint[..12])
        }
    }
}

/// HEAD of the repository at `root`; None outside a repository or before
/// the first commit.
pub fn head(sh: &Shell, root: &Path) -> Option<Commit> {
    let _dir = sh.push_dir(root);
    let sha = cmd!(sh, "git rev-parse --verify --quiet HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    let short = cmd!(sh, "git rev-parse --short=12 HEAD")
        .quiet()
        .read()
        .ok()?;
    Some(Commit { sha, short })
}

/// Compares `context` (relative to `root`) with HEAD.
pub fn context_state(sh: &Shell, root: &Path, context: &Path) -> Result<ContextState> {
    let _dir = sh.push_dir(root);
    let diff = cmd!(sh, "git diff HEAD --binary -- {context}")
        .quiet()
        .output()
        .context("running git diff")?
        .stdout;
    let untracked = cmd!(
        sh,
        "git ls-files -z --others --exclude-standard -- {context}"
    )
    .quiet()
    .read()
    .context("running git ls-files")?;
    if diff.is_empty() && untracked.is_empty() {
        return Ok(ContextState::Clean);
    }
    let mut hasher = Sha256::new();
    hasher.update(&diff);
    for file in untracked.split('\0').filter(|f| !f.is_empty()) {
        hasher.update(file.as_bytes());
        hasher.update([0]);
        // An unreadable file still changes the name part of the hash.
        hasher.update(std::fs::read(root.join(file)).unwrap_or_default());
    }
    let fingerprint = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(ContextState::Dirty { fingerprint })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> Commit {
        Commit {
            sha: "0123456789abcdef".repeat(2) + "01234567",
            short: "0123456789ab".into(),
        }
    }

    #[test]
    fn clean_contexts_get_the_short_sha_and_the_settings() {
        assert_eq!(
            image_tag(&commit(), &ContextState::Clean, "5e771265"),
            "0123456789ab-5e771265"
        );
        assert_ne!(
            image_tag(&commit(), &ContextState::Clean, "5e771265"),
            image_tag(&commit(), &ContextState::Clean, "0ther5e7")
        );
    }

    #[test]
    fn dirty_contexts_get_a_content_suffix() {
        let a = ContextState::Dirty {
            fingerprint: "aaaaaaaaaaaaaaaa".into(),
        };
        let b = ContextState::Dirty {
            fingerprint: "bbbbbbbbbbbbbbbb".into(),
        };
        assert_eq!(
            image_tag(&commit(), &a, "5e771265"),
            "0123456789ab-5e771265-dirty-aaaaaaaaaaaa"
        );
        assert_ne!(
            image_tag(&commit(), &a, "5e771265"),
            image_tag(&commit(), &b, "5e771265")
        );
    }

    #[test]
    fn a_real_repository_changes_tag_with_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let sh = Shell::new().unwrap();
        sh.change_dir(dir.path());
        std::fs::create_dir(dir.path().join("backend")).unwrap();
        std::fs::write(dir.path().join("backend/app.py"), "v1\n").unwrap();
        cmd!(sh, "git init -q").run().unwrap();
        cmd!(sh, "git add .").run().unwrap();
        cmd!(sh, "git -c user.name=t -c user.email=t@t commit -q -m init")
            .run()
            .unwrap();
        let head = head(&sh, dir.path()).unwrap();
        let backend = Path::new("backend");
        assert_eq!(
            context_state(&sh, dir.path(), backend).unwrap(),
            ContextState::Clean
        );

        std::fs::write(dir.path().join("backend/app.py"), "v2\n").unwrap();
        let first = image_tag(
            &head,
            &context_state(&sh, dir.path(), backend).unwrap(),
            "s",
        );
        std::fs::write(dir.path().join("backend/app.py"), "v3\n").unwrap();
        let second = image_tag(
            &head,
            &context_state(&sh, dir.path(), backend).unwrap(),
            "s",
        );
        assert!(first.starts_with(&format!("{}-s-dirty-", head.short)));
        assert_ne!(first, second);

        std::fs::write(dir.path().join("backend/app.py"), "v1\n").unwrap();
        std::fs::write(dir.path().join("backend/new.py"), "x\n").unwrap();
        assert!(matches!(
            context_state(&sh, dir.path(), backend).unwrap(),
            ContextState::Dirty { .. }
        ));
        // The other context is unaffected.
        assert_eq!(
            context_state(&sh, dir.path(), Path::new("frontend")).unwrap(),
            ContextState::Clean
        );
    }
}

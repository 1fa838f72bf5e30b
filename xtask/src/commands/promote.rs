//! `deploy <env> --images-from <other>`: the images the other environment
//! runs, by the digests its running release recorded, promoted here with
//! no build and no push, so that what was tested there is what this
//! environment gets. The plan previews, lints and rehearses the migrations
//! of the commit those images were built from, so the checkout must be at
//! that commit. Images in another repository (another registry) are
//! copied by digest (`images::copy`), so the digest pinned is the same.

use anyhow::Result;

use crate::cluster::release;
use crate::config::{self, Component, Environment};
use crate::error::input_error;
use crate::plan::deploy::{DeployFacts, Promotion};

/// `repo@sha256:…` → (repo, digest); None for a tag-only reference. Pure.
pub fn split_digest(reference: &str) -> Option<(String, String)> {
    let (repository, digest) = reference.split_once('@')?;
    digest
        .starts_with("sha256:")
        .then(|| (repository.to_string(), digest.to_string()))
}

/// Reads `other`'s running release; refuses (exit 2) what cannot be
/// promoted as it stands.
pub fn read(
    env: &Environment,
    other: &str,
    overrides: &crate::cli::EnvOverrides,
) -> Result<Promotion> {
    if other == env.name {
        return Err(input_error(format!(
            "--images-from {other}: that is the environment being deployed"
        )));
    }
    let source = config::load(Some(other), overrides)?;
    release::check_context(&source)?;
    let current = release::current(&source)?.ok_or_else(|| {
        input_error(format!(
            "--images-from {other}: release {} is not installed in {}, so it runs no images to promote",
            source.release, source.namespace
        ))
    })?;
    let record = &current.record;
    let mut images = Vec::new();
    for (component, reference) in [
        (Component::Backend, &record.backend_image),
        (Component::Frontend, &record.frontend_image),
    ] {
        let (repository, digest) = split_digest(reference).ok_or_else(|| {
            input_error(format!(
                "--images-from {other}: revision {} runs the {component} image {reference:?}, not pinned by digest \
                 (installed by hand?): deploy {other} with this tool first",
                current.revision
            ))
        })?;
        images.push((component, repository, digest));
    }
    if record.git_sha.is_empty() {
        return Err(input_error(format!(
            "--images-from {other}: revision {} has no deploy record naming its commit",
            current.revision
        )));
    }
    Ok(Promotion {
        from: other.to_string(),
        git_sha: record.git_sha.clone(),
        images,
    })
}

/// The facts with the promoted digests in place of this commit's, and a
/// refusal in the plan when the checkout is not at their commit.
pub fn apply(facts: &mut DeployFacts, promotion: &Promotion) {
    for image in &mut facts.images {
        if let Some((_, _, digest)) = promotion
            .images
            .iter()
            .find(|(component, _, _)| *component == image.component)
        {
            image.registry_digest = Ok(Some(digest.clone()));
        }
    }
    facts.promotion = Some(promotion.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_reference_pinned_by_digest_can_be_promoted() {
        assert_eq!(
            split_digest("reg:5000/colony-backend@sha256:abc"),
            Some(("reg:5000/colony-backend".into(), "sha256:abc".into()))
        );
        assert_eq!(split_digest("reg:5000/colony-backend:v1"), None);
        assert_eq!(split_digest("reg/colony-backend@md5:x"), None);
    }
}

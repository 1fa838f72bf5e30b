//! Pulling an image for a simulated pod: manifest and layers from the test
//! registry (plain HTTP), unpacked into a directory that stands for the
//! container's filesystem.

use std::io::Read;
use std::path::{Path, PathBuf};

const MANIFEST_TYPES: &str =
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";

/// `host/name[:tag][@digest]` → (host, name, tag-or-digest).
pub fn parse_reference(image: &str) -> Option<(String, String, String)> {
    let (host, rest) = image.split_once('/')?;
    let (name, reference) = match rest.split_once('@') {
        Some((name, digest)) => (name.to_string(), digest.to_string()),
        None => match rest.rsplit_once(':') {
            Some((name, tag)) => (name.to_string(), tag.to_string()),
            None => (rest.to_string(), "latest".to_string()),
        },
    };
    Some((host.to_string(), name, reference))
}

/// Pulls `image` into `<images_dir>/<manifest digest>/rootfs` (once) and
/// returns that directory, or the error a kubelet would report.
pub fn pull(images_dir: &Path, image: &str) -> Result<PathBuf, String> {
    let (host, name, reference) = parse_reference(image)
        .ok_or_else(|| format!("failed to pull image \"{image}\": invalid reference format"))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let failed = |why: String| format!("failed to pull and unpack image \"{image}\": {why}");
    let url = format!("http://{host}/v2/{name}/manifests/{reference}");
    let mut response = agent
        .get(&url)
        .header("Accept", MANIFEST_TYPES)
        .call()
        .map_err(|e| failed(e.to_string()))?;
    match response.status().as_u16() {
        200 => {}
        404 => return Err(failed(format!("{image}: not found"))),
        status => {
            return Err(failed(format!(
                "unexpected status from GET request to {url}: {status}"
            )))
        }
    }
    let digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .replace(':', "-");
    let manifest: serde_json::Value = serde_json::from_str(
        &response
            .body_mut()
            .read_to_string()
            .map_err(|e| failed(e.to_string()))?,
    )
    .map_err(|e| failed(e.to_string()))?;
    let rootfs = images_dir.join(&digest).join("rootfs");
    if rootfs.is_dir() {
        return Ok(rootfs);
    }
    let partial = images_dir.join(format!("{digest}.partial-{}", std::process::id()));
    std::fs::create_dir_all(&partial).map_err(|e| failed(e.to_string()))?;
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let blob = layer["digest"].as_str().unwrap_or_default();
        let mut bytes = Vec::new();
        agent
            .get(&format!("http://{host}/v2/{name}/blobs/{blob}"))
            .call()
            .map_err(|e| failed(e.to_string()))?
            .body_mut()
            .as_reader()
            .read_to_end(&mut bytes)
            .map_err(|e| failed(e.to_string()))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        archive.set_preserve_permissions(true);
        archive
            .unpack(&partial)
            .map_err(|e| failed(format!("unpacking {blob}: {e}")))?;
    }
    std::fs::create_dir_all(rootfs.parent().unwrap()).map_err(|e| failed(e.to_string()))?;
    // Another pod may have pulled the same image meanwhile: either copy is fine.
    if std::fs::rename(&partial, &rootfs).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    Ok(rootfs)
}

/// Where `program` is inside the image, as a container's PATH lookup finds it.
pub fn find_in_image(rootfs: &Path, program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = rootfs.join(program.trim_start_matches('/'));
        return path.is_file().then_some(path);
    }
    [
        "usr/local/sbin",
        "usr/local/bin",
        "usr/sbin",
        "usr/bin",
        "sbin",
        "bin",
    ]
    .iter()
    .map(|dir| rootfs.join(dir).join(program))
    .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            parse_reference("127.0.0.1:5000/colony-backend@sha256:ab").unwrap(),
            (
                "127.0.0.1:5000".into(),
                "colony-backend".into(),
                "sha256:ab".into()
            )
        );
        assert_eq!(
            parse_reference("127.0.0.1:5000/team/x:v1").unwrap(),
            ("127.0.0.1:5000".into(), "team/x".into(), "v1".into())
        );
    }
}

//! Validation of the names that end up in command lines, before any command
//! is built (DESIGN.md §6). Pure functions; each error says the rule.

/// A Kubernetes namespace: an RFC 1123 label.
pub fn check_namespace(name: &str) -> Result<(), String> {
    check_dns1123_label(name, 63)
        .map_err(|why| format!("namespace {name:?} is not a valid DNS-1123 label: {why}"))
}

/// A Helm release name: a DNS-1123 subdomain of at most 53 characters
/// (Helm's own limit, so that generated names still fit in 63).
pub fn check_release(name: &str) -> Result<(), String> {
    let why = if name.len() > 53 {
        Some(format!(
            "it has {} characters, Helm allows at most 53",
            name.len()
        ))
    } else {
        name.split('.')
            .find_map(|label| check_dns1123_label(label, 63).err())
    };
    match why {
        Some(why) => Err(format!(
            "release name {name:?} is not a valid Helm release name: {why}"
        )),
        None => Ok(()),
    }
}

/// An Alembic revision id as this project writes them.
pub fn check_revision(revision: &str) -> Result<(), String> {
    if !revision.is_empty()
        && revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(format!(
            "revision {revision:?} is not a valid Alembic revision id (letters, digits and _ only)"
        ))
    }
}

/// A kube context name: anything kubectl accepts, but not empty and no
/// whitespace or control characters (those only come from typos).
pub fn check_kube_context(context: &str) -> Result<(), String> {
    if context.is_empty() || context.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!(
            "kube context {context:?} must be non-empty, without spaces"
        ))
    } else if context.starts_with('-') {
        // It would be read as an option by kubectl and helm.
        Err(format!("kube context {context:?} must not start with '-'"))
    } else {
        Ok(())
    }
}

/// An image repository path component list, as the registry API accepts it:
/// lowercase alphanumerics separated by `.`, `_`, `__` or dashes, joined by `/`.
pub fn check_repository(repository: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
    };
    if repository.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "image repository {repository:?} is invalid: use lowercase letters, digits, '.', '_', '-' and '/' separators"
        ))
    }
}

/// A registry as it prefixes image names: `host[:port][/path]`, no scheme,
/// no credentials (those come from the Docker config, never from here).
pub fn check_registry(registry: &str) -> Result<(), String> {
    if registry.trim().is_empty() {
        return Err("registry is empty: set `registry` in deploy.toml, COLONY_REGISTRY or --registry (e.g. registry.example.com:5000)".into());
    }
    if registry.contains("://") {
        return Err(format!(
            "registry {:?} must be host[:port][/path], without a scheme",
            backend_migrations::redact::mask_url(registry)
        ));
    }
    if registry.contains('@') {
        return Err(
            "registry must not contain credentials: put them in the Docker config (docker login)"
                .into(),
        );
    }
    let (host, path) = registry.split_once('/').unwrap_or((registry, ""));
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if !host_ok || (!path.is_empty() && check_repository(path).is_err()) {
        return Err(format!(
            "registry {registry:?} is not a valid host[:port][/path]"
        ));
    }
    Ok(())
}

fn check_dns1123_label(label: &str, max: usize) -> Result<(), String> {
    if label.is_empty() {
        return Err("it is empty".into());
    }
    if label.len() > max {
        return Err(format!(
            "it has {} characters, at most {max} are allowed",
            label.len()
        ));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{bad:?} is not allowed (lowercase letters, digits and '-' only)"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        assert!(check_namespace("colony-dev").is_ok());
        assert!(check_namespace(&"a".repeat(63)).is_ok());
        for bad in [
            "",
            "Colony",
            "colony_dev",
            "-colony",
            "colony-",
            "colony.dev",
            &"a".repeat(64),
        ] {
            assert!(check_namespace(bad).is_err(), "{bad} accepted");
        }
        assert!(check_namespace("Colony_Dev")
            .unwrap_err()
            .contains("'C' is not allowed"));
    }

    #[test]
    fn releases() {
        assert!(check_release("colony").is_ok());
        assert!(check_release("colony.v2").is_ok());
        assert!(check_release(&"a".repeat(54))
            .unwrap_err()
            .contains("at most 53"));
        assert!(check_release("Colony").is_err());
    }

    #[test]
    fn revisions() {
        assert!(check_revision("0001_baseline").is_ok());
        for bad in ["", "0001-baseline", "head; rm -rf /", "a b"] {
            assert!(check_revision(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn registries_and_repositories() {
        for ok in [
            "127.0.0.1:5000",
            "registry.example.com",
            "ghcr.io/colony-app",
            "localhost:5000/team/x",
        ] {
            assert!(check_registry(ok).is_ok(), "{ok} refused");
        }
        assert!(check_registry("")
            .unwrap_err()
            .contains("registry is empty"));
        assert!(check_registry("https://r.example")
            .unwrap_err()
            .contains("without a scheme"));
        let with_password = check_registry("user:hunter2@r.example").unwrap_err();
        assert!(!with_password.contains("hunter2"));
        assert!(check_repository("colony-backend").is_ok());
        assert!(check_repository("Colony").is_err());
        assert!(check_repository("a//b").is_err());
    }

    #[test]
    fn kube_contexts() {
        assert!(check_kube_context("homelab").is_ok());
        assert!(check_kube_context("arn:aws:eks:eu-west-1:1:cluster/x").is_ok());
        assert!(check_kube_context("").is_err());
        assert!(check_kube_context("home lab").is_err());
    }
}

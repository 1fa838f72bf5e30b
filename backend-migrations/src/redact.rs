//! Secrets never reach output: passwords in URLs are masked everywhere.
//! Shared by the runner and xtask (dependency-free).

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`. Text without
/// a password is returned as it is.
pub fn mask_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let authority_start = scheme_end + 3;
    let rest = &text[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return text.to_string();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    if !userinfo.contains(':') {
        return text.to_string();
    }
    format!(
        "{}{user}:***{}",
        &text[..authority_start],
        &text[authority_start + at..]
    )
}

/// Masks every URL password inside a longer text (a log line, an argv).
pub fn mask_all(text: &str) -> String {
    text.split(' ').map(mask_url).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_only() {
        assert_eq!(
            mask_url("postgresql://colony:s3cret@db:5432/colony"),
            "postgresql://colony:***@db:5432/colony"
        );
        assert_eq!(
            mask_url("postgresql://colony@db/colony"),
            "postgresql://colony@db/colony"
        );
        assert_eq!(
            mask_url("https://u:p%40ss@h/x?y=z@w"),
            "https://u:***@h/x?y=z@w"
        );
        assert_eq!(mask_url("no url here"), "no url here");
        assert_eq!(
            mask_all("connect to postgres://a:b@h failed"),
            "connect to postgres://a:***@h failed"
        );
    }
}

//! Secrets never reach output: passwords in URLs and in libpq's
//! `password=` settings are masked everywhere. Shared by the runner and
//! xtask (dependency-free).
//!
//! The rules lean towards masking too much rather than too little:
//! - a URL's user-info runs from `scheme://` to the *last* `@` before the
//!   next whitespace, so a password holding `/`, `?`, `#`, `@` or `,` is
//!   hidden whole (a second URL glued on with a comma may lose its host);
//! - the same for a percent-encoded URL (`%3A%2F%2F` … `%40`) inside another;
//! - `password=` (libpq key=value, or a URL query) masks its value up to the
//!   next whitespace, or the whole `'quoted value'`.
//!
//! A password containing whitespace cannot be told apart in a URL (libpq
//! needs it percent-encoded there) and is out of scope.

const MASK: &str = "***";

/// Text another session chose (its application_name) as it may be
/// printed: control characters become `?`, so no escape sequence reaches a
/// terminal through a log.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Masks every password in `text`: any number of URLs and `password=`
/// settings, on any line, in any position.
pub fn mask_all(text: &str) -> String {
    let text = mask_urls(text, "://", ":", "@");
    let text = mask_urls(&text, "%3A%2F%2F", "%3A", "%40");
    mask_password_settings(&text)
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`. Kept for
/// callers that mask one URL; the same as `mask_all`.
pub fn mask_url(text: &str) -> String {
    mask_all(text)
}

/// Masks the passwords of URLs written with `separator` (`://`), `colon`
/// and `at`, matched without regard to case (for the `%3A` forms).
fn mask_urls(text: &str, separator: &str, colon: &str, at: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let (separator, colon, at) = (
        separator.to_ascii_lowercase(),
        colon.to_ascii_lowercase(),
        at.to_ascii_lowercase(),
    );
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(&separator) {
        let authority = search + found + separator.len();
        // The URL ends at whitespace; its user-info at the last `@` in it.
        let end = lower[authority..]
            .find(char::is_whitespace)
            .map_or(lower.len(), |e| authority + e);
        search = authority;
        let Some(at_offset) = lower[authority..end].rfind(&at) else {
            continue;
        };
        let userinfo = &lower[authority..authority + at_offset];
        let Some(colon_offset) = userinfo.find(&colon) else {
            continue; // a user without a password
        };
        let secret_start = authority + colon_offset + colon.len();
        let secret_end = authority + at_offset;
        out.push_str(&text[copied..secret_start]);
        out.push_str(MASK);
        copied = secret_end;
        search = secret_end;
    }
    out.push_str(&text[copied..]);
    out
}

/// `password=VALUE` / `password='quoted value'` (libpq, URL queries).
fn mask_password_settings(text: &str) -> String {
    const KEY: &str = "password=";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(KEY) {
        let value_start = search + found + KEY.len();
        let value_end = if text[value_start..].starts_with('\'') {
            quoted_end(text, value_start + 1)
        } else {
            text[value_start..]
                .find(char::is_whitespace)
                .map_or(text.len(), |e| value_start + e)
        };
        search = value_end.max(value_start);
        if value_end == value_start {
            continue;
        }
        out.push_str(&text[copied..value_start]);
        out.push_str(MASK);
        copied = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

/// The end (after the closing quote) of a libpq single-quoted value whose
/// content starts at `start`; `\'` and `\\` are escapes. Unterminated: the
/// rest of the text.
fn quoted_end(text: &str, start: usize) -> usize {
    let mut chars = text[start..].char_indices();
    while let Some((offset, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\'' => return start + offset + 1,
            _ => {}
        }
    }
    text.len()
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
        assert_eq!(mask_url("no url here"), "no url here");
        assert_eq!(
            mask_all("connect to postgres://a:b@h failed"),
            "connect to postgres://a:***@h failed"
        );
    }

    #[test]
    fn the_cases_that_leaked() {
        for (text, masked) in [
            (
                "postgresql://u:SE/KRIT@host/db",
                "postgresql://u:***@host/db",
            ),
            (
                "postgresql://u:a?b#c@host/db?sslmode=require",
                "postgresql://u:***@host/db?sslmode=require",
            ),
            (
                "first postgresql://u:one@h1/db\nsecond postgresql://v:two@h2/db",
                "first postgresql://u:***@h1/db\nsecond postgresql://v:***@h2/db",
            ),
            (
                "host=db port=5432 user=colony password=s3cr3t dbname=colony",
                "host=db port=5432 user=colony password=*** dbname=colony",
            ),
            (
                "host=db password='with space \\' quote' dbname=colony",
                "host=db password=*** dbname=colony",
            ),
            (
                "postgresql://db/colony?user=u&password=s3cr3t",
                "postgresql://db/colony?user=u&password=***",
            ),
            ("https://u:p%40ss@h/x?y=z", "https://u:***@h/x?y=z"),
            (
                "next=postgresql%3A%2F%2Fu%3As3cr3t%40db%2Fcolony",
                "next=postgresql%3A%2F%2Fu%3A***%40db%2Fcolony",
            ),
        ] {
            assert_eq!(mask_all(text), masked, "{text}");
        }
        // Two URLs glued by a comma: both secrets go (a host may go too).
        let glued = mask_all("postgresql://u:one@h1/db,postgresql://v:two@h2/db");
        assert!(!glued.contains("one") && !glued.contains("two"), "{glued}");
    }

    /// A small deterministic generator, so the property runs everywhere
    /// without a dependency.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }

        /// A password of printable non-space ASCII, marked so that it cannot
        /// occur by chance in the rest of the text.
        fn password(&mut self) -> String {
            let alphabet: Vec<char> = ('!'..='~').collect();
            let length = 4 + self.next() % 20;
            let body: String = (0..length)
                .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize])
                .collect();
            format!("Zq{body}")
        }
    }

    fn percent_encode(text: &str) -> String {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    /// Any password, in any of the forms, any number of times, anywhere in
    /// a text: neither it nor its percent-encoded form survives.
    #[test]
    fn no_password_survives_masking() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let mut text = String::new();
            let mut secrets = Vec::new();
            for _ in 0..1 + random.next() % 4 {
                let password = random.password();
                let encoded = percent_encode(&password);
                let user = random.pick(&["colony", "u", "app.user", "x-y"]);
                let host = random.pick(&["db", "db:5432", "10.0.0.1:5432", "[::1]:5432"]);
                let form = match random.next() % 6 {
                    0 => format!("postgresql://{user}:{password}@{host}/colony"),
                    1 => format!("postgres://{user}:{encoded}@{host}/colony?sslmode=require"),
                    2 => format!("host={host} user={user} password={password} dbname=colony"),
                    3 => format!(
                        "host={host} password='{}' dbname=colony",
                        password.replace('\\', "\\\\").replace('\'', "\\'")
                    ),
                    4 => format!("postgresql://{host}/colony?user={user}&password={encoded}"),
                    _ => format!(
                        "next={}",
                        percent_encode(&format!("postgresql://{user}:{password}@{host}/colony"))
                    ),
                };
                let separator = random.pick(&[" ", "\n", ", ", "\t", " -> ", ","]);
                let prefix = random.pick(&["", "error: ", "connecting to ", "DATABASE_URL="]);
                text.push_str(&format!("{prefix}{form}{separator}"));
                secrets.push(password);
            }
            let masked = mask_all(&text);
            for secret in &secrets {
                assert!(
                    !masked.contains(secret.as_str()) && !masked.contains(&percent_encode(secret)),
                    "{secret:?} survived in:\n{text}\n->\n{masked}"
                );
            }
        }
    }
}

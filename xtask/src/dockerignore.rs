//! `.dockerignore` with Docker's semantics (moby's patternmatcher): patterns
//! relative to the context root, `*` and `?` within one path component, `**`
//! across components, `[…]` classes, `\` escapes, `!` re-includes, the last
//! matching pattern wins, and a pattern that matches a directory matches
//! everything below it. Pure.

#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    glob: Vec<char>,
    /// `!pattern`: re-includes what an earlier pattern excluded.
    include: bool,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| {
                let (include, body) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                let cleaned = clean(body);
                (!cleaned.is_empty()).then(|| Pattern {
                    glob: cleaned.chars().collect(),
                    include,
                })
            })
            .collect();
        DockerIgnore { patterns }
    }

    /// Whether `path` (relative, `/`-separated) stays out of the context.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let mut excluded = false;
        for pattern in &self.patterns {
            if pattern.include == excluded && matches_path_or_parent(&pattern.glob, &path) {
                excluded = !pattern.include;
            }
        }
        excluded
    }

    /// Whether some `!` pattern could bring back a file below an excluded
    /// directory, so that the walk must still descend into it.
    pub fn has_reinclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.include)
    }
}

/// Go's filepath.Clean for relative patterns, minus a leading `/` or `./`.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn matches_path_or_parent(glob: &[char], path: &str) -> bool {
    let chars: Vec<char> = path.chars().collect();
    if glob_match(glob, &chars) {
        return true;
    }
    // A pattern matching a parent directory matches everything inside it.
    chars
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == '/')
        .any(|(i, _)| glob_match(glob, &chars[..i]))
}

fn glob_match(pattern: &[char], path: &[char]) -> bool {
    match pattern {
        [] => path.is_empty(),
        ['*', '*', '/', rest @ ..] => {
            // Zero or more whole directories.
            glob_match(rest, path)
                || path
                    .iter()
                    .enumerate()
                    .any(|(i, c)| *c == '/' && glob_match(rest, &path[i + 1..]))
        }
        ['*', '*', rest @ ..] => (0..=path.len()).any(|i| glob_match(rest, &path[i..])),
        ['*', rest @ ..] => {
            let run = path.iter().take_while(|c| **c != '/').count();
            (0..=run).any(|i| glob_match(rest, &path[i..]))
        }
        ['?', rest @ ..] => matches!(path, [c, tail @ ..] if *c != '/' && glob_match(rest, tail)),
        ['[', rest @ ..] => match (class_match(rest, path.first().copied()), path) {
            (Some((true, after)), [_, tail @ ..]) => glob_match(after, tail),
            _ => false,
        },
        ['\\', literal, rest @ ..] => {
            matches!(path, [c, tail @ ..] if c == literal && glob_match(rest, tail))
        }
        [literal, rest @ ..] => {
            matches!(path, [c, tail @ ..] if c == literal && glob_match(rest, tail))
        }
    }
}

/// `[…]` after its `[`: whether `c` is in the class, and the pattern after `]`.
fn class_match(class: &[char], c: Option<char>) -> Option<(bool, &[char])> {
    let c = c.filter(|c| *c != '/')?;
    let (negated, mut rest) = match class {
        ['^' | '!', tail @ ..] => (true, tail),
        _ => (false, class),
    };
    let mut found = false;
    let mut first = true;
    loop {
        match rest {
            [']', tail @ ..] if !first => return Some((found != negated, tail)),
            [low, '-', high, tail @ ..] if *high != ']' => {
                found |= (*low..=*high).contains(&c);
                rest = tail;
            }
            ['\\', escaped, tail @ ..] | [escaped, tail @ ..] => {
                found |= *escaped == c;
                rest = tail;
            }
            [] => return None, // unterminated class: matches nothing
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text)
    }

    #[test]
    fn plain_names_and_directories() {
        let rules = ignore("# comment\n\nnode_modules\n/build\n*.pyc\n");
        assert!(rules.is_excluded("node_modules"));
        assert!(
            rules.is_excluded("node_modules/react/index.js"),
            "a directory pattern covers its contents"
        );
        assert!(rules.is_excluded("build/out.txt"));
        assert!(rules.is_excluded("app.pyc"));
        assert!(
            !rules.is_excluded("app/cache.pyc"),
            "* does not cross directories"
        );
        assert!(!rules.is_excluded("src/node_modules_list.txt"));
    }

    #[test]
    fn double_star_crosses_directories() {
        let rules = ignore("**/*.pyc\n**/__pycache__\ndocs/**\n");
        assert!(rules.is_excluded("a.pyc"));
        assert!(rules.is_excluded("app/models/user.pyc"));
        assert!(rules.is_excluded("app/__pycache__/x.cpython-311.pyc"));
        assert!(rules.is_excluded("docs/a/b.md"));
        assert!(!rules.is_excluded("app/models/user.py"));
    }

    #[test]
    fn exceptions_re_include_and_the_last_match_wins() {
        let rules = ignore("*.md\n!README.md\nsecrets\n!secrets/public.pem\n");
        assert!(rules.is_excluded("CHANGELOG.md"));
        assert!(!rules.is_excluded("README.md"));
        assert!(rules.is_excluded("secrets/private.pem"));
        assert!(!rules.is_excluded("secrets/public.pem"));
        assert!(rules.has_reinclusions());
        let later = ignore("!README.md\n*.md\n");
        assert!(later.is_excluded("README.md"), "a later exclusion wins");
    }

    #[test]
    fn single_characters_classes_and_escapes() {
        let rules = ignore("file?.txt\nlog[0-9].txt\nx[!a].txt\n\\*literal\n");
        assert!(rules.is_excluded("file1.txt") && !rules.is_excluded("file12.txt"));
        assert!(rules.is_excluded("log7.txt") && !rules.is_excluded("logx.txt"));
        assert!(rules.is_excluded("xb.txt") && !rules.is_excluded("xa.txt"));
        assert!(rules.is_excluded("*literal") && !rules.is_excluded("aliteral"));
    }

    #[test]
    fn paths_are_cleaned() {
        let rules = ignore("./tmp/../cache\n");
        assert!(rules.is_excluded("cache/x"));
        assert!(rules.is_excluded("./cache"));
    }
}

//! `.dockerignore` with Docker's semantics, ported from moby's
//! patternmatcher (which compiles each pattern to a regular expression):
//! patterns relative to the context root; `*` and `?` stay within one path
//! component; `**` is "any number of whole directories" (`(.*/)?`), or
//! everything at the end; `[…]` classes negate with `^` only (`[!a]` is a
//! class of `!` and `a`, as in Go); `\` escapes; `!` re-includes; the last
//! matching pattern wins; a pattern matching a directory matches everything
//! below it. A pattern Go's `filepath.Match` rejects is an error, as in
//! `docker build`. Pure.

#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern text (without `!`).
    text: String,
    kind: Kind,
    /// `!pattern`: re-includes what an earlier pattern excluded.
    include: bool,
}

/// moby's match types: most patterns are plain strings or a prefix or
/// suffix test; the rest are token sequences.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Exact,
    /// `dir/**`: everything starting with `dir/`.
    Prefix,
    /// `**/name`, `**name`: everything ending so.
    Suffix,
    Tokens(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    /// `*`: any run within one component.
    Star,
    /// `?`: one character, not `/`.
    Question,
    /// `**` inside a pattern: zero or more whole directories (`(.*/)?`).
    Directories,
    /// `**` at the end after other wildcards: anything (`.*`).
    Anything,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl DockerIgnore {
    /// Parses the file's text; a malformed pattern is an error naming it.
    pub fn parse(text: &str) -> Result<DockerIgnore, String> {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(body);
            if cleaned.is_empty() {
                if include {
                    return Err(format!(
                        "illegal exclusion pattern {line:?} in .dockerignore"
                    ));
                }
                continue;
            }
            let kind = compile(&cleaned)
                .map_err(|why| format!(".dockerignore pattern {line:?}: {why}"))?;
            patterns.push(Pattern {
                text: cleaned,
                kind,
                include,
            });
        }
        Ok(DockerIgnore { patterns })
    }

    /// Whether `path` (relative, `/`-separated) stays out of the context.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = clean(path);
        if path.is_empty() {
            return false; // the context itself
        }
        let mut excluded = false;
        for pattern in &self.patterns {
            if pattern.include == excluded && pattern.matches_path_or_parent(&path) {
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

impl Pattern {
    fn matches_path_or_parent(&self, path: &str) -> bool {
        self.matches(path)
            || path
                .match_indices('/')
                .any(|(i, _)| self.matches(&path[..i]))
    }

    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix => path.starts_with(&self.text[..self.text.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.text[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/') == Some(path)
            }
            Kind::Tokens(tokens) => {
                let chars: Vec<char> = path.chars().collect();
                match_tokens(tokens, &chars)
            }
        }
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

/// moby's `compile`: the match type, and the tokens when it needs them.
fn compile(pattern: &str) -> Result<Kind, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut kind = Kind::Exact;
    let mut position = 0;
    let mut first = true;
    while position < chars.len() {
        let c = chars[position];
        position += 1;
        match c {
            '*' if chars.get(position) == Some(&'*') => {
                position += 1;
                if chars.get(position) == Some(&'/') {
                    position += 1; // `**/` is `**`
                }
                if position == chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        tokens.push(Token::Anything);
                        kind = Kind::Tokens(Vec::new());
                    }
                } else {
                    tokens.push(Token::Directories);
                    kind = Kind::Tokens(Vec::new());
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                kind = Kind::Tokens(Vec::new());
            }
            '?' => {
                tokens.push(Token::Question);
                kind = Kind::Tokens(Vec::new());
            }
            '\\' => match chars.get(position) {
                Some(&escaped) => {
                    position += 1;
                    tokens.push(Token::Literal(escaped));
                    kind = Kind::Tokens(Vec::new());
                }
                None => return Err("a trailing \\ escapes nothing".into()),
            },
            '[' => {
                let (class, after) = parse_class(&chars, position)?;
                tokens.push(class);
                position = after;
                kind = Kind::Tokens(Vec::new());
            }
            other => tokens.push(Token::Literal(other)),
        }
        first = false;
    }
    Ok(match kind {
        Kind::Tokens(_) => Kind::Tokens(tokens),
        other => other,
    })
}

/// A class after its `[`, with Go's `filepath.Match` rules: `^` negates,
/// `a-z` ranges, `\` escapes; an empty class, a dangling `-` or a missing
/// `]` is a syntax error. Returns the token and the position after `]`.
fn parse_class(chars: &[char], mut position: usize) -> Result<(Token, usize), String> {
    let bad = || "syntax error in a [...] class".to_string();
    let negated = chars.get(position) == Some(&'^');
    if negated {
        position += 1;
    }
    let escaped = |position: &mut usize| -> Result<char, String> {
        match chars.get(*position) {
            None | Some('-') | Some(']') => Err(bad()),
            Some('\\') => {
                let c = *chars.get(*position + 1).ok_or_else(bad)?;
                *position += 2;
                Ok(c)
            }
            Some(&c) => {
                *position += 1;
                Ok(c)
            }
        }
    };
    let mut ranges = Vec::new();
    loop {
        if chars.get(position) == Some(&']') && !ranges.is_empty() {
            return Ok((Token::Class { negated, ranges }, position + 1));
        }
        let low = escaped(&mut position)?;
        let high = if chars.get(position) == Some(&'-') {
            position += 1;
            escaped(&mut position)?
        } else {
            low
        };
        ranges.push((low, high));
    }
}

/// The tokens against the whole path, backtracking where a token can take
/// more or less.
fn match_tokens(tokens: &[Token], path: &[char]) -> bool {
    match tokens {
        [] => path.is_empty(),
        [Token::Literal(c), rest @ ..] => {
            matches!(path, [p, tail @ ..] if p == c && match_tokens(rest, tail))
        }
        [Token::Question, rest @ ..] => {
            matches!(path, [p, tail @ ..] if *p != '/' && match_tokens(rest, tail))
        }
        [Token::Class { negated, ranges }, rest @ ..] => matches!(path, [p, tail @ ..]
            if ranges.iter().any(|(low, high)| (low..=high).contains(&p)) != *negated
                && match_tokens(rest, tail)),
        [Token::Star, rest @ ..] => {
            let run = path.iter().take_while(|c| **c != '/').count();
            (0..=run).any(|i| match_tokens(rest, &path[i..]))
        }
        [Token::Directories, rest @ ..] => {
            match_tokens(rest, path)
                || path
                    .iter()
                    .enumerate()
                    .any(|(i, c)| *c == '/' && match_tokens(rest, &path[i + 1..]))
        }
        [Token::Anything, rest @ ..] => (0..=path.len()).any(|i| match_tokens(rest, &path[i..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    fn excluded(pattern: &str, path: &str) -> bool {
        ignore(pattern).is_excluded(path)
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
    fn only_a_caret_negates_a_class_and_double_stars_are_whole_directories() {
        assert!(excluded("x[!a].txt", "x!.txt") && excluded("x[!a].txt", "xa.txt"));
        assert!(!excluded("x[!a].txt", "xb.txt"));
        assert!(excluded("x[^a].txt", "xb.txt") && !excluded("x[^a].txt", "xa.txt"));
        assert!(!excluded("a**b", "axb"));
        assert!(excluded("a**b", "ab") && excluded("a**b", "a/x/b"));
        assert!(excluded("\\*literal", "*literal") && !excluded("\\*literal", "aliteral"));
    }

    #[test]
    fn malformed_patterns_are_errors_as_in_docker_build() {
        for bad in [
            "[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "\\", "!",
        ] {
            assert!(DockerIgnore::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn paths_are_cleaned() {
        let rules = ignore("./tmp/../cache\n");
        assert!(rules.is_excluded("cache/x"));
        assert!(rules.is_excluded("./cache"));
        assert!(
            !ignore("*.go").is_excluded("."),
            "the context itself is never excluded"
        );
    }

    /// moby/patternmatcher's TestMatches cases: pattern, path, and whether
    /// the path or one of its parents matches.
    #[test]
    fn moby_patternmatcher_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("**", "file", true),
            ("**", "file/", true),
            ("**/", "file", true),
            ("**/", "file/", true),
            ("**", "dir/file", true),
            ("**/", "dir/file", true),
            ("**", "dir/file/", true),
            ("**/**", "dir/file", true),
            ("**/**", "dir/file/", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/file/", true),
            ("dir/**", "dir/dir2/file", true),
            ("dir/**", "dir/dir2/file/", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/*", "dir/dir2/file/", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file/", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**/file", "dir/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def", true),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            ("a\\\\", "a\\", true),
            ("a\\*b", "a*b", true),
            // Go's filepath.Match cases that moby keeps.
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "ab/c", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[^c]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a?b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("*x", "xxx", true),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(
                excluded(pattern, path),
                *expected,
                "pattern {pattern:?}, path {path:?}"
            );
        }
        let multi: &[(&str, &str, bool)] = &[
            ("**\n!util/docker/web", "util/docker/web/foo", false),
            (
                "**\n!util/docker/web\nutil/docker/web/foo",
                "util/docker/web/foo",
                true,
            ),
            (
                "**\n!dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
        ];
        for (patterns, path, expected) in multi {
            assert_eq!(
                excluded(patterns, path),
                *expected,
                "patterns {patterns:?}, path {path:?}"
            );
        }
    }
}

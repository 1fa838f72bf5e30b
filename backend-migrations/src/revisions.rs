//! The Alembic revision graph, read statically from a `versions/` directory.
//!
//! Alembic itself imports each script to learn its `revision` and
//! `down_revision`; we read the two assignments as text instead, so that the
//! expected head is known without Python, a database or a cluster. Only the
//! forms Alembic's templates generate are understood (with or without type
//! annotations; `None`, a string, or a tuple/list of strings); anything else is
//! a precise error rather than a guess.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// One migration script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub id: String,
    /// Parents: empty for a base revision, two or more for a merge.
    pub down: Vec<String>,
    pub file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    Io { path: PathBuf, message: String },
    Parse { file: PathBuf, message: String },
    Empty { dir: PathBuf },
    Duplicate { id: String, files: [PathBuf; 2] },
    MissingParent { id: String, parent: String },
    Cycle { ids: Vec<String> },
    MultipleHeads { heads: Vec<String> },
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::Io { path, message } => {
                write!(f, "cannot read Alembic versions at {}: {message}", path.display())
            }
            GraphError::Parse { file, message } => write!(f, "{}: {message}", file.display()),
            GraphError::Empty { dir } => write!(
                f,
                "no Alembic revision scripts (*.py with a `revision = ...` line) in {}",
                dir.display()
            ),
            GraphError::Duplicate { id, files } => write!(
                f,
                "revision {id} is declared twice: in {} and in {}",
                files[0].display(),
                files[1].display()
            ),
            GraphError::MissingParent { id, parent } => write!(
                f,
                "revision {id} names down_revision {parent}, which no script declares"
            ),
            GraphError::Cycle { ids } => {
                write!(f, "the revision graph has a cycle through {}", ids.join(" -> "))
            }
            GraphError::MultipleHeads { heads } => write!(
                f,
                "the revision graph has {} heads ({}); merge them (`alembic merge heads`) so that `upgrade head` is unambiguous",
                heads.len(),
                heads.join(", ")
            ),
        }
    }
}

impl std::error::Error for GraphError {}

/// A validated graph: unique ids, every parent present, no cycle.
#[derive(Debug, Clone)]
pub struct RevisionGraph {
    revisions: BTreeMap<String, Revision>,
}

impl RevisionGraph {
    /// Reads every `*.py` script of `dir` (not recursing, as Alembic's default).
    pub fn load(dir: &Path) -> Result<Self, GraphError> {
        Self::load_dirs(&[dir.to_path_buf()])
    }

    /// One graph from several version locations (Alembic's `version_locations`).
    pub fn load_dirs(dirs: &[PathBuf]) -> Result<Self, GraphError> {
        let mut files = Vec::new();
        for dir in dirs {
            let entries = std::fs::read_dir(dir).map_err(|e| GraphError::Io {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
            let mut scripts: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "py") && p.is_file())
                .collect();
            scripts.sort();
            files.extend(scripts);
        }
        let dir = dirs.first().cloned().unwrap_or_default();
        let mut revisions = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| GraphError::Io {
                path: file.clone(),
                message: e.to_string(),
            })?;
            if let Some(revision) = parse_script(&file, &text)? {
                revisions.push(revision);
            }
        }
        if revisions.is_empty() {
            return Err(GraphError::Empty { dir });
        }
        Self::from_revisions(revisions)
    }

    pub fn from_revisions(revisions: Vec<Revision>) -> Result<Self, GraphError> {
        let mut by_id: BTreeMap<String, Revision> = BTreeMap::new();
        for revision in revisions {
            if let Some(first) = by_id.get(&revision.id) {
                return Err(GraphError::Duplicate {
                    id: revision.id.clone(),
                    files: [first.file.clone(), revision.file.clone()],
                });
            }
            by_id.insert(revision.id.clone(), revision);
        }
        for revision in by_id.values() {
            if let Some(parent) = revision.down.iter().find(|p| !by_id.contains_key(*p)) {
                return Err(GraphError::MissingParent {
                    id: revision.id.clone(),
                    parent: parent.clone(),
                });
            }
        }
        let graph = RevisionGraph { revisions: by_id };
        graph.check_acyclic()?;
        Ok(graph)
    }

    /// Revisions that no other revision names as a parent.
    pub fn heads(&self) -> Vec<&str> {
        let parents: BTreeSet<&str> = self
            .revisions
            .values()
            .flat_map(|r| r.down.iter().map(String::as_str))
            .collect();
        self.revisions
            .keys()
            .map(String::as_str)
            .filter(|id| !parents.contains(id))
            .collect()
    }

    /// The single head that `alembic upgrade head` goes to.
    pub fn head(&self) -> Result<&str, GraphError> {
        match self.heads().as_slice() {
            [one] => Ok(one),
            many => Err(GraphError::MultipleHeads {
                heads: many.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.revisions.contains_key(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.revisions.keys().map(String::as_str)
    }

    pub fn get(&self, id: &str) -> Option<&Revision> {
        self.revisions.get(id)
    }

    /// The revisions an upgrade from `from` (None: an empty database) to `to`
    /// applies, parents first. None when `to` is unknown or `from` is not an
    /// ancestor of (or equal to) `to`.
    pub fn upgrade_path(&self, from: Option<&str>, to: &str) -> Option<Vec<&str>> {
        if !self.contains(to) {
            return None;
        }
        let target = self.ancestors_and_self(to);
        let done = match from {
            None => BTreeSet::new(),
            Some(from) if target.contains(from) => self.ancestors_and_self(from),
            Some(_) => return None,
        };
        let mut path: Vec<&str> = target.difference(&done).copied().collect();
        // Parents before children: an ancestor has fewer ancestors than its descendants.
        path.sort_by_key(|id| (self.ancestors_and_self(id).len(), *id));
        Some(path)
    }

    /// `id` and every revision below it, borrowed from the graph itself.
    fn ancestors_and_self(&self, id: &str) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&Revision> = self.revisions.get(id).into_iter().collect();
        while let Some(revision) = stack.pop() {
            if seen.insert(revision.id.as_str()) {
                stack.extend(revision.down.iter().filter_map(|p| self.revisions.get(p)));
            }
        }
        seen
    }

    fn check_acyclic(&self) -> Result<(), GraphError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit<'a>(
            graph: &'a RevisionGraph,
            id: &'a str,
            marks: &mut BTreeMap<&'a str, Mark>,
            trail: &mut Vec<&'a str>,
        ) -> Result<(), GraphError> {
            match marks.get(id) {
                Some(Mark::Done) => return Ok(()),
                Some(Mark::Visiting) => {
                    let start = trail.iter().position(|t| *t == id).unwrap_or(0);
                    let mut ids: Vec<String> =
                        trail[start..].iter().map(|s| s.to_string()).collect();
                    ids.push(id.to_string());
                    return Err(GraphError::Cycle { ids });
                }
                None => {}
            }
            marks.insert(id, Mark::Visiting);
            trail.push(id);
            for parent in &graph.revisions[id].down {
                visit(graph, parent, marks, trail)?;
            }
            trail.pop();
            marks.insert(id, Mark::Done);
            Ok(())
        }
        let mut marks = BTreeMap::new();
        for id in self.revisions.keys() {
            visit(self, id, &mut marks, &mut Vec::new())?;
        }
        Ok(())
    }
}

/// Reads `revision` and `down_revision` from one script's text. A script with
/// no `revision` assignment is not a migration (Alembic would not load it
/// either) and yields None.
pub fn parse_script(file: &Path, text: &str) -> Result<Option<Revision>, GraphError> {
    let parse_error = |message: String| GraphError::Parse {
        file: file.to_path_buf(),
        message,
    };
    let revision = match assignment(text, "revision") {
        None => return Ok(None),
        Some(value) => match parse_value(&value).map_err(&parse_error)? {
            Value::Strings(ids) if ids.len() == 1 => ids.into_iter().next().unwrap_or_default(),
            _ => {
                return Err(parse_error(format!(
                    "`revision` must be one string, found `{value}`"
                )))
            }
        },
    };
    let down = match assignment(text, "down_revision") {
        None => return Err(parse_error("no `down_revision = ...` assignment".into())),
        Some(value) => match parse_value(&value).map_err(&parse_error)? {
            Value::None => Vec::new(),
            Value::Strings(ids) => ids,
        },
    };
    Ok(Some(Revision {
        id: revision,
        down,
        file: file.to_path_buf(),
    }))
}

enum Value {
    None,
    Strings(Vec<String>),
}

/// The right-hand side of a top-level `name = ...` or `name: T = ...`,
/// joined across lines while a bracket is open.
fn assignment(text: &str, name: &str) -> Option<String> {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = rest.trim_start();
        let rhs = if let Some(r) = rest.strip_prefix('=') {
            r
        } else if rest.starts_with(':') {
            match rest.split_once('=') {
                Some((_, r)) => r,
                None => continue,
            }
        } else {
            continue; // `revisions_x = ...` or similar: another name
        };
        let mut value = strip_comment(rhs).trim().to_string();
        while open_brackets(&value) > 0 {
            match lines.next() {
                Some(next) => {
                    value.push(' ');
                    value.push_str(strip_comment(next).trim());
                }
                None => break,
            }
        }
        return Some(value);
    }
    None
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

fn open_brackets(value: &str) -> i32 {
    value.chars().fold(0, |depth, c| match c {
        '(' | '[' => depth + 1,
        ')' | ']' => depth - 1,
        _ => depth,
    })
}

fn parse_value(value: &str) -> Result<Value, String> {
    let value = value.trim();
    if value == "None" {
        return Ok(Value::None);
    }
    let inner = value
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .or_else(|| value.strip_prefix('[').and_then(|v| v.strip_suffix(']')));
    let items: Vec<&str> = match inner {
        Some(inner) => inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        None => vec![value],
    };
    let strings = items
        .iter()
        .map(|item| {
            unquote(item).ok_or_else(|| format!("expected a quoted revision id, found `{item}`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if strings.is_empty() {
        return Ok(Value::None);
    }
    Ok(Value::Strings(strings))
}

fn unquote(item: &str) -> Option<String> {
    let quoted = ['"', '\'']
        .iter()
        .find_map(|q| item.strip_prefix(*q).and_then(|s| s.strip_suffix(*q)))?;
    (!quoted.is_empty()).then(|| quoted.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(id: &str, down: &[&str]) -> Revision {
        Revision {
            id: id.into(),
            down: down.iter().map(|s| s.to_string()).collect(),
            file: PathBuf::from(format!("{id}.py")),
        }
    }

    fn parse(text: &str) -> Result<Option<Revision>, GraphError> {
        parse_script(Path::new("v.py"), text)
    }

    #[test]
    fn parses_the_forms_alembic_templates_write() {
        let plain = parse("revision = '0001_baseline'\ndown_revision = None\n")
            .unwrap()
            .unwrap();
        assert_eq!((plain.id.as_str(), plain.down.len()), ("0001_baseline", 0));

        let annotated = parse(
            "revision: str = \"0002_activity_and_comments\"\n\
             down_revision: Union[str, Sequence[str], None] = \"0001_baseline\"  # parent\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(annotated.id, "0002_activity_and_comments");
        assert_eq!(annotated.down, vec!["0001_baseline"]);

        let merge = parse("revision = 'm'\ndown_revision = (\n    'a',\n    'b',\n)\n")
            .unwrap()
            .unwrap();
        assert_eq!(merge.down, vec!["a", "b"]);
    }

    #[test]
    fn ignores_other_names_and_non_migrations() {
        let text =
            "revisions_seen = 3\nrevision = 'x'\ndown_revision_note = 'no'\ndown_revision = None\n";
        assert_eq!(parse(text).unwrap().unwrap().id, "x");
        assert_eq!(parse("import os\n").unwrap(), None);
    }

    #[test]
    fn unparseable_values_are_precise_errors() {
        let err = parse("revision = make_id()\ndown_revision = None\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a quoted revision id, found `make_id()`"),
            "{err}"
        );
        let err = parse("revision = 'x'\n").unwrap_err();
        assert!(err.to_string().contains("no `down_revision"), "{err}");
    }

    #[test]
    fn head_path_and_membership() {
        let graph = RevisionGraph::from_revisions(vec![
            rev("0002_activity_and_comments", &["0001_baseline"]),
            rev("0001_baseline", &[]),
        ])
        .unwrap();
        assert_eq!(graph.head().unwrap(), "0002_activity_and_comments");
        assert!(graph.contains("0001_baseline") && !graph.contains("0003"));
        assert_eq!(
            graph
                .upgrade_path(None, "0002_activity_and_comments")
                .unwrap(),
            vec!["0001_baseline", "0002_activity_and_comments"]
        );
        assert_eq!(
            graph
                .upgrade_path(Some("0001_baseline"), "0002_activity_and_comments")
                .unwrap(),
            vec!["0002_activity_and_comments"]
        );
        assert_eq!(
            graph.upgrade_path(Some("0002_activity_and_comments"), "0001_baseline"),
            None
        );
    }

    #[test]
    fn graph_errors_name_what_is_wrong() {
        let two_heads =
            RevisionGraph::from_revisions(vec![rev("a", &[]), rev("b", &["a"]), rev("c", &["a"])])
                .unwrap();
        assert_eq!(
            two_heads.head().unwrap_err(),
            GraphError::MultipleHeads {
                heads: vec!["b".into(), "c".into()]
            }
        );
        let missing = RevisionGraph::from_revisions(vec![rev("b", &["a"])]).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "revision b names down_revision a, which no script declares"
        );
        let dup = RevisionGraph::from_revisions(vec![rev("a", &[]), rev("a", &[])]).unwrap_err();
        assert!(matches!(dup, GraphError::Duplicate { .. }));
        let cycle =
            RevisionGraph::from_revisions(vec![rev("a", &["b"]), rev("b", &["a"])]).unwrap_err();
        assert!(
            cycle.to_string().contains("cycle through a -> b -> a"),
            "{cycle}"
        );
    }

    #[test]
    fn loads_a_versions_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("0001_baseline.py"),
            "revision = '0001_baseline'\ndown_revision = None\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("__init__.py"), "").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "revision = 'zzz'").unwrap();
        let graph = RevisionGraph::load(dir.path()).unwrap();
        assert_eq!(graph.ids().collect::<Vec<_>>(), vec!["0001_baseline"]);

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            RevisionGraph::load(empty.path()),
            Err(GraphError::Empty { .. })
        ));
        assert!(matches!(
            RevisionGraph::load(&empty.path().join("missing")),
            Err(GraphError::Io { .. })
        ));
    }
}

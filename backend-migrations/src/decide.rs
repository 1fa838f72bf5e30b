//! What the runner does, decided from what the database holds and what the
//! scripts declare. Pure: every combination is unit-tested.

use crate::revisions::RevisionGraph;

/// What the runner saw in the database (under the lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseState {
    /// Rows of `alembic_version`; None when the table does not exist.
    pub versions: Option<Vec<String>>,
    /// The configured legacy tables that exist.
    pub legacy_tables: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// At the head already: nothing to run, not even Python.
    AtHead { head: String },
    /// `alembic upgrade head` from `from` (None: an empty database).
    Upgrade { from: Option<String>, head: String },
    /// A pre-Alembic schema: stamp `baseline`, then upgrade.
    StampThenUpgrade {
        baseline: String,
        legacy_tables: Vec<String>,
        head: String,
    },
    /// A state that must not be touched automatically.
    Refuse { reason: String },
}

impl Decision {
    /// A short name for `status --json` and logs.
    pub fn action(&self) -> &'static str {
        match self {
            Decision::AtHead { .. } => "none",
            Decision::Upgrade { .. } => "upgrade",
            Decision::StampThenUpgrade { .. } => "stamp-and-upgrade",
            Decision::Refuse { .. } => "refuse",
        }
    }
}

pub fn decide(state: &DatabaseState, graph: &RevisionGraph, baseline: &str) -> Decision {
    let head = match graph.head() {
        Ok(head) => head.to_string(),
        Err(e) => {
            return Decision::Refuse {
                reason: e.to_string(),
            }
        }
    };
    let legacy = &state.legacy_tables;
    match state.versions.as_deref() {
        None if legacy.is_empty() => Decision::Upgrade { from: None, head },
        None if !graph.contains(baseline) => Decision::Refuse {
            reason: format!(
                "the database has a pre-Alembic schema ({}) but the baseline revision {baseline} is not among the scripts ({}); pass --baseline with the revision that matches that schema",
                legacy.join(", "),
                graph.ids().collect::<Vec<_>>().join(", ")
            ),
        },
        None => Decision::StampThenUpgrade { baseline: baseline.to_string(), legacy_tables: legacy.clone(), head },
        Some([]) if legacy.is_empty() => Decision::Upgrade { from: None, head },
        Some([]) => Decision::Refuse {
            reason: format!(
                "alembic_version exists but is empty, beside the existing tables {}: the schema's revision is unknown. \
                 Find the revision that matches the schema and record it with `alembic stamp <revision>`, then rerun",
                legacy.join(", ")
            ),
        },
        Some([current]) if *current == head => Decision::AtHead { head },
        Some([current]) if graph.upgrade_path(Some(current), &head).is_some() => {
            Decision::Upgrade { from: Some(current.clone()), head }
        }
        Some([current]) => Decision::Refuse {
            reason: format!(
                "the database is at revision {current}, which these migration scripts do not know (they end at {head}). \
                 A newer release probably migrated it: downgrade with that release's image first \
                 (`cargo xtask rollback --to {head}`), then roll the app back"
            ),
        },
        Some(rows) => Decision::Refuse {
            reason: format!(
                "alembic_version holds {} rows ({}): the database has several heads. Merge them in the scripts \
                 (`alembic merge heads`) or fix the table by hand",
                rows.len(),
                rows.join(", ")
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revisions::Revision;

    const BASE: &str = "0001_baseline";
    const HEAD: &str = "0002_activity_and_comments";

    fn graph() -> RevisionGraph {
        let rev = |id: &str, down: &[&str]| Revision {
            id: id.into(),
            down: down.iter().map(|s| s.to_string()).collect(),
            file: format!("{id}.py").into(),
        };
        RevisionGraph::from_revisions(vec![rev(BASE, &[]), rev(HEAD, &[BASE])]).unwrap()
    }

    fn state(versions: Option<&[&str]>, legacy: &[&str]) -> DatabaseState {
        DatabaseState {
            versions: versions.map(|v| v.iter().map(|s| s.to_string()).collect()),
            legacy_tables: legacy.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn refusal(decision: Decision) -> String {
        match decision {
            Decision::Refuse { reason } => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn fresh_databases_upgrade_from_nothing() {
        let expected = Decision::Upgrade {
            from: None,
            head: HEAD.into(),
        };
        assert_eq!(decide(&state(None, &[]), &graph(), BASE), expected);
        assert_eq!(decide(&state(Some(&[]), &[]), &graph(), BASE), expected);
    }

    #[test]
    fn pre_alembic_schemas_are_stamped_then_upgraded() {
        assert_eq!(
            decide(&state(None, &["households"]), &graph(), BASE),
            Decision::StampThenUpgrade {
                baseline: BASE.into(),
                legacy_tables: vec!["households".into()],
                head: HEAD.into()
            }
        );
        let reason = refusal(decide(&state(None, &["households"]), &graph(), "0000_nope"));
        assert!(
            reason.contains("baseline revision 0000_nope is not among the scripts"),
            "{reason}"
        );
    }

    #[test]
    fn at_head_and_behind() {
        assert_eq!(
            decide(&state(Some(&[HEAD]), &["households"]), &graph(), BASE),
            Decision::AtHead { head: HEAD.into() }
        );
        assert_eq!(
            decide(&state(Some(&[BASE]), &["households"]), &graph(), BASE),
            Decision::Upgrade {
                from: Some(BASE.into()),
                head: HEAD.into()
            }
        );
    }

    #[test]
    fn states_that_are_refused() {
        let unknown = refusal(decide(&state(Some(&["0003_newer"]), &[]), &graph(), BASE));
        assert!(
            unknown.contains(
                "revision 0003_newer, which these migration scripts do not know (they end at 0002"
            ),
            "{unknown}"
        );
        let several = refusal(decide(&state(Some(&["a", "b"]), &[]), &graph(), BASE));
        assert!(several.contains("2 rows (a, b)"), "{several}");
        let empty = refusal(decide(&state(Some(&[]), &["households"]), &graph(), BASE));
        assert!(
            empty.contains("exists but is empty, beside the existing tables households"),
            "{empty}"
        );
    }

    #[test]
    fn several_heads_in_the_scripts_are_refused() {
        let rev = |id: &str, down: &[&str]| Revision {
            id: id.into(),
            down: down.iter().map(|s| s.to_string()).collect(),
            file: format!("{id}.py").into(),
        };
        let forked = RevisionGraph::from_revisions(vec![
            rev(BASE, &[]),
            rev("a", &[BASE]),
            rev("b", &[BASE]),
        ])
        .unwrap();
        assert!(refusal(decide(&state(None, &[]), &forked, BASE)).contains("2 heads (a, b)"));
    }
}

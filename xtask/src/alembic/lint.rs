//! Squawk's Postgres migration rules over the SQL Alembic will run. Pure:
//! SQL in, findings out, each tied to its revision and statement.
//!
//! The default rule set is Squawk's, minus its style rules (`prefer-*`,
//! `ban-char-field`): the question before a deploy is what locks, rewrites,
//! destroys or breaks the old pods, not how a column should be typed. The
//! timeout rules are off too: the offline SQL never shows the `lock_timeout`
//! an env.py sets on its connection, so they would flag every statement.
//! deploy.toml switches rules off (`disabled_rules`) or on (`enabled_rules`).

use serde::Serialize;
use squawk_linter::{Linter, Rule, Violation};

/// Off unless an environment enables them (see the module's comment).
const OFF_BY_DEFAULT: &[Rule] = &[
    Rule::RequireLockTimeout,
    Rule::RequireStatementTimeout,
    Rule::PreferBigintOverInt,
    Rule::PreferBigintOverSmallint,
    Rule::PreferIdentity,
    Rule::PreferRobustStmts,
    Rule::PreferTextField,
    Rule::PreferTimestampTz,
    Rule::BanCharField,
];

pub use crate::config::rules::RuleChoice;

/// One finding: what a statement risks and the safer form.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub revision: String,
    pub rule: String,
    /// Why it matters during a rolling deploy: a lock, a rewrite, …
    pub impact: &'static str,
    pub statement: String,
    pub why: String,
    pub safer: Option<String>,
}

/// The SQL of one revision, as Alembic renders it offline.
pub struct RevisionSql<'a> {
    pub revision: &'a str,
    pub sql: &'a str,
}

/// Lints the revisions as one script, in order, so that a table created by
/// an earlier revision of the same deploy counts as new (Squawk does not
/// flag changes to a table nobody reads yet).
pub fn lint(revisions: &[RevisionSql], choice: &RuleChoice) -> Vec<Finding> {
    // The revisions' SQL comes without the transaction Alembic wraps the
    // script in; it is put back, so that an `autocommit_block()`'s
    // COMMIT … BEGIN inside reads as what it is.
    let mut script = String::from("BEGIN;\n");
    let mut starts = Vec::new();
    for revision in revisions {
        starts.push((script.len(), revision.revision));
        script.push_str(revision.sql);
        script.push('\n');
    }
    script.push_str("COMMIT;\n");
    let parse = squawk_syntax::SourceFile::parse(&script);
    let mut linter = Linter::with_rules(&choice.enabled, &excluded(choice));
    linter
        .lint(&parse, &script)
        .into_iter()
        .map(|violation| {
            let at = usize::from(violation.text_range.start());
            let revision = starts
                .iter()
                .rev()
                .find(|(start, _)| *start <= at)
                .map_or("", |(_, id)| id);
            finding(revision, &script, violation)
        })
        .collect()
}

fn excluded(choice: &RuleChoice) -> Vec<Rule> {
    OFF_BY_DEFAULT
        .iter()
        .filter(|rule| !choice.enabled.contains(rule))
        .chain(&choice.disabled)
        .copied()
        .collect()
}

fn finding(revision: &str, script: &str, violation: Violation) -> Finding {
    let at = usize::from(violation.text_range.start());
    Finding {
        revision: revision.to_string(),
        rule: violation.code.to_string(),
        impact: impact(violation.code),
        statement: statement_around(script, at),
        why: violation.message,
        safer: match (violation.help, alembic_form(violation.code)) {
            (Some(help), Some(form)) => Some(format!("{}. {form}", help.trim_end_matches('.'))),
            (help, form) => help.or(form.map(str::to_string)),
        },
    }
}

/// How Squawk's safer form is written in an Alembic migration.
fn alembic_form(rule: Rule) -> Option<&'static str> {
    match rule {
        Rule::RequireConcurrentIndexCreation | Rule::BanConcurrentIndexCreationInTransaction => {
            Some(
                "In Alembic: `with op.get_context().autocommit_block(): op.create_index(..., \
             postgresql_concurrently=True)`.",
            )
        }
        Rule::RequireConcurrentIndexDeletion => Some(
            "In Alembic: `with op.get_context().autocommit_block(): op.drop_index(..., \
             postgresql_concurrently=True)`.",
        ),
        Rule::AddingRequiredField | Rule::AddingNotNullableField => Some(
            "In Alembic: add it with `nullable=True` (or a `server_default`), backfill, then \
             `op.alter_column(..., nullable=False)` in a later revision.",
        ),
        Rule::ChangingColumnType => Some(
            "Expand and contract instead: add a column of the new type, backfill it, switch the code, \
             and drop the old column in a later deploy.",
        ),
        Rule::BanDropColumn | Rule::BanDropTable => Some(
            "Drop it in a later deploy, once no running release reads it (and after a backup you \
             have restored once).",
        ),
        Rule::RenamingColumn | Rule::RenamingTable => Some(
            "Add the new name beside the old one, switch the code, then drop the old one in a later \
             deploy.",
        ),
        _ => None,
    }
}

/// What the rule's statement does to a running app, in a few words.
fn impact(rule: Rule) -> &'static str {
    match rule {
        Rule::RequireConcurrentIndexCreation
        | Rule::RequireConcurrentIndexDeletion
        | Rule::RequireConcurrentReindex
        | Rule::RequireConcurrentPartitionDetach
        | Rule::ConstraintMissingNotValid
        | Rule::AddingForeignKeyConstraint
        | Rule::AddingSerialPrimaryKeyField
        | Rule::DisallowedUniqueConstraint
        | Rule::PreferRepack => "takes a lock that blocks the app",
        Rule::ChangingColumnType | Rule::AddingFieldWithDefault => {
            "rewrites the table under a lock"
        }
        Rule::AddingNotNullableField | Rule::AddingRequiredField => {
            "fails on a table with rows, or breaks the old pods' inserts"
        }
        Rule::RenamingColumn | Rule::RenamingTable | Rule::RenamingObject => {
            "breaks the old pods, which still use the old name"
        }
        Rule::BanDropColumn
        | Rule::BanDropTable
        | Rule::BanDropDatabase
        | Rule::BanTruncateCascade => "destroys data the old pods still read",
        Rule::BanConcurrentIndexCreationInTransaction => "fails: Alembic runs it in a transaction",
        _ => "risky while the old pods run",
    }
}

/// The statement that contains byte `at`: from the previous `;` to the next.
fn statement_around(script: &str, at: usize) -> String {
    let start = script[..at].rfind(';').map_or(0, |i| i + 1);
    let end = script[at..].find(';').map_or(script.len(), |i| at + i + 1);
    script[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rules::parse_rule;

    fn rules_of(findings: &[Finding]) -> Vec<(&str, &str)> {
        findings
            .iter()
            .map(|f| (f.revision.as_str(), f.rule.as_str()))
            .collect()
    }

    const RISKY: &str = "
        ALTER TABLE chores ADD COLUMN points INTEGER NOT NULL;\n\n\
        CREATE INDEX ix_chores_points ON chores (points);\n\n\
        UPDATE alembic_version SET version_num='b' WHERE alembic_version.version_num = 'a';";

    #[test]
    fn a_not_null_column_and_a_blocking_index_are_found_in_their_statements() {
        let findings = lint(
            &[RevisionSql {
                revision: "b",
                sql: RISKY,
            }],
            &RuleChoice::default(),
        );
        assert_eq!(
            rules_of(&findings),
            [
                ("b", "adding-required-field"),
                ("b", "require-concurrent-index-creation")
            ],
            "{findings:#?}"
        );
        assert_eq!(
            findings[0].statement,
            "ALTER TABLE chores ADD COLUMN points INTEGER NOT NULL;"
        );
        assert_eq!(
            findings[1].statement,
            "CREATE INDEX ix_chores_points ON chores (points);"
        );
        let safer = findings[1].safer.as_deref().unwrap();
        assert!(
            safer.contains("concurrently") && safer.contains("autocommit_block"),
            "{safer}"
        );
        assert_eq!(findings[1].impact, "takes a lock that blocks the app");
    }

    #[test]
    fn tables_created_earlier_in_the_same_deploy_are_new_and_style_rules_are_off() {
        let create =
            "-- Running upgrade  -> a\n\nCREATE TABLE chores (\n    id SERIAL NOT NULL, \n    \
                      title VARCHAR(200) NOT NULL, \n    PRIMARY KEY (id)\n);\n";
        let index = "-- Running upgrade a -> b\n\nCREATE INDEX ix_title ON chores (title);\n";
        let revisions = [
            RevisionSql {
                revision: "a",
                sql: create,
            },
            RevisionSql {
                revision: "b",
                sql: index,
            },
        ];
        assert_eq!(lint(&revisions, &RuleChoice::default()), []);
        // Alone, the index is on an existing table.
        assert_eq!(
            rules_of(&lint(&revisions[1..], &RuleChoice::default())),
            [("b", "require-concurrent-index-creation")]
        );
        // A style rule switched on finds the SERIAL and the VARCHAR.
        let style = RuleChoice {
            enabled: vec![Rule::PreferTextField],
            ..RuleChoice::default()
        };
        assert_eq!(
            rules_of(&lint(&revisions, &style)),
            [("a", "prefer-text-field")]
        );
    }

    #[test]
    fn an_index_built_concurrently_outside_the_transaction_is_the_safe_form() {
        let one = |sql: &str| {
            lint(
                &[RevisionSql { revision: "b", sql }],
                &RuleChoice::default(),
            )
        };
        // What Alembic prints for `with op.get_context().autocommit_block():`.
        let outside =
            "ALTER TABLE chores ADD COLUMN points INTEGER DEFAULT '1' NOT NULL;\n\nCOMMIT;\n\n\
                       CREATE INDEX CONCURRENTLY ix_chores_points ON chores (points);\n\nBEGIN;\n\n\
                       UPDATE alembic_version SET version_num='b';";
        assert_eq!(one(outside), []);
        let inside = "CREATE INDEX CONCURRENTLY ix_chores_points ON chores (points);";
        assert_eq!(
            rules_of(&one(inside)),
            [("b", "ban-concurrent-index-creation-in-transaction")]
        );
    }

    #[test]
    fn a_disabled_rule_finds_nothing() {
        let choice = RuleChoice {
            disabled: vec![
                parse_rule("adding-required-field").unwrap(),
                parse_rule("require-concurrent-index-creation").unwrap(),
            ],
            ..RuleChoice::default()
        };
        let findings = lint(
            &[RevisionSql {
                revision: "b",
                sql: RISKY,
            }],
            &choice,
        );
        assert_eq!(findings, []);
        assert!(parse_rule("no-such-rule")
            .unwrap_err()
            .contains("no-such-rule"));
    }
}

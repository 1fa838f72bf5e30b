//! The Squawk rules an environment switches off or on, by Squawk's names,
//! as deploy.toml gives them (checked here; applied by `alembic::lint`).

use squawk_linter::Rule;

/// The rules an environment changes, by Squawk's names (validated in config).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleChoice {
    pub disabled: Vec<Rule>,
    pub enabled: Vec<Rule>,
}

/// A rule's name as Squawk spells it, checked.
pub fn parse_rule(name: &str) -> Result<Rule, String> {
    name.parse::<Rule>().map_err(|_| {
        format!(
            "unknown Squawk rule {name:?} (names as in https://squawkhq.com/docs/rules, e.g. \
             require-concurrent-index-creation)"
        )
    })
}

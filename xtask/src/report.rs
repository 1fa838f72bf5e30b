//! Every `--json` output: one document on stdout, with the
//! `schema_version` of its shape first. A script reads the version before
//! anything else; a change that removes or renames a key raises it.

use serde::Serialize;

/// The shape of every command's JSON; raised when a key goes or changes.
pub const SCHEMA_VERSION: u32 = 1;

/// A report with its schema version beside its own keys.
#[derive(Serialize)]
struct Versioned<'a, T: Serialize> {
    schema_version: u32,
    #[serde(flatten)]
    report: &'a T,
}

/// The JSON document of `report` (an object: its keys beside
/// `schema_version`).
pub fn to_json<T: Serialize>(report: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&Versioned {
        schema_version: SCHEMA_VERSION,
        report,
    })
}

/// Prints `report` as the command's JSON document.
pub fn print_json<T: Serialize>(report: &T) -> anyhow::Result<()> {
    println!("{}", to_json(report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Example {
        environment: &'static str,
        passed: bool,
    }

    #[test]
    fn the_schema_version_comes_first_beside_the_report_s_keys() {
        let text = to_json(&Example {
            environment: "colony-dev",
            passed: true,
        })
        .unwrap();
        assert!(text.starts_with("{\n  \"schema_version\": 1,"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["environment"], "colony-dev");
        assert_eq!(value["passed"], true);
    }
}

//! What each exit code of `run-migrations` means, for whoever reads a
//! crash-looping init container's status (xtask's failure explanation).

/// The meaning of a `run-migrations` exit code, if it is one of its own.
pub fn meaning(code: i64) -> Option<&'static str> {
    Some(match code {
        0 => "migrations complete",
        1 => "a migration failed (Alembic's output above says which and why)",
        2 => "bad input (flags, DATABASE_URL or the Alembic project); the database was not touched",
        3 => "the database never answered within --wait-timeout (is it running and reachable from the pod?)",
        4 => "another pod held the migration lock longer than --lock-timeout",
        5 => "a database state that needs a person (a revision these scripts do not know, several heads, or an empty alembic_version beside tables)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_code_of_the_runner_has_a_meaning() {
        for code in 0..=5 {
            assert!(super::meaning(code).is_some(), "{code}");
        }
        assert_eq!(super::meaning(137), None);
    }
}

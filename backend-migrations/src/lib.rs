//! Colony's database migration support.
//!
//! Dependency-free, usable by xtask without a database stack:
//! - `revisions`: the Alembic revision graph, read from `versions/` as text;
//! - `alembic_ini`: finding the Alembic project as `alembic` does;
//! - `decide`: what to do for a given database state (pure);
//! - `redact`: masking passwords in URLs and libpq settings;
//! - `exit_codes`: what each exit code of `run-migrations` means.
//!
//! With the `runner` feature (default): the `run-migrations` program that the
//! chart's init container runs (DESIGN.md §4): `db` (connect, lock, inspect,
//! stamp), `alembic` (the child process) and `runner` (the sequence).

pub mod alembic_ini;
pub mod decide;
pub mod exit_codes;
pub mod redact;
pub mod revisions;

#[cfg(feature = "runner")]
pub mod alembic;
#[cfg(feature = "runner")]
pub mod db;
#[cfg(feature = "runner")]
pub mod runner;

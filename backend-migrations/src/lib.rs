//! Colony's database migration support.
//!
//! `revisions` reads the Alembic revision graph from a `versions/` directory
//! without Python; `xtask` uses it to know the expected head and to validate
//! rollback targets without a cluster. The `run-migrations` runner that the
//! chart's init container runs is built on top of it (see DESIGN.md §4).

pub mod revisions;

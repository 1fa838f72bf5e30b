//! Everything about Alembic: the checkout's revision graph, the database's
//! revision as a pod reports it, and the SQL the pending revisions will run
//! (rendered offline, then linted).

pub mod database;
pub mod lint;
pub mod preview;
pub mod versions;

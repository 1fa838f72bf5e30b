//! The database the release runs on, as the deploying machine reaches it:
//! its backup (through the chart's database pod, by scripts/backup-db.sh).

pub mod backup;
pub mod local;
pub mod observe;
pub mod rehearsal;
pub mod scratch;

//! The commands users run, one module each, with a `run` entry point that
//! parses nothing (clap did, in `cli.rs`): it gathers facts, decides (the
//! pure deciders live in `plan/`), prints, then executes. `deploy` and
//! `rollback` reuse `verify` and `backup`.

pub mod backup;
pub mod build_push;
pub mod deploy;
pub mod doctor;
pub mod hook;
pub mod lock;
pub mod locking;
pub mod migrations;
pub mod plan_file;
pub mod promote;
pub mod rehearse;
pub mod rollback;
pub mod status;
pub mod verify;
pub mod warmup;

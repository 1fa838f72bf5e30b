//! The xtask's end-to-end tests, in one binary (one link, one set of shared
//! helpers): the real `xtask` against the test bed's Docker, registries,
//! PostgreSQL, Alembic and helm, with the simulated cluster in front.
//! One module per area.

mod common;

mod buildkit;
mod chart;
mod cluster;
mod config_errors;
mod deploy;
mod doctor;
mod dry_run;
mod fast_push;
mod images;
mod lock;
mod pods;
mod push_from_build;
mod registry_faults;
mod rehearsal;
mod reports;
mod shapes;

//! Tests of the store layer as a whole, by subject: operations with their exact errors,
//! eager GC, mount-time repair of interrupted changes, a model-based property test, a
//! concurrency test and other writers. Every test builds its store by hand in a temporary
//! directory and checks the result on disk with an independent walker (see [`fixture`]).

pub(crate) mod fixture;

mod concurrency;
mod deferred;
mod faults;
mod gc;
mod hypeman;
mod index_scan;
mod legacy;
mod model;
mod moves;
mod open;
mod promote;
mod query;
mod recover;
mod repo_dirs;
mod snapshot;
mod tags;
mod unlocked_delete;
mod watch;

//! Benchmarks of `nodedb-wal` beside the systems and disk limits it should be judged against.
//!
//! The `compare` binary runs every system in one process, one after another, on the same disk,
//! and prints one JSON object per system and a final line of ratios. Absolute numbers on a
//! shared virtual disk drift by tens of percent from run to run; ratios within one run are what
//! to compare. A benchmark measures and prints; it never asserts.

pub mod args;
pub mod driver;
pub mod hist;
pub mod json;
pub mod os;
pub mod pagecache;
pub mod report;
pub mod systems;

pub use args::Args;
pub use driver::{Params, Timed, run_for};
pub use hist::Histogram;
pub use json::Json;
pub use report::Report;

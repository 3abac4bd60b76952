//! Adversarial concurrency: every wait on the log ends (durable, or the poison error), never
//! hangs and never keeps a task's waker once its future is gone; readers and tails running
//! beside rolls and truncations hand out records in order with dense LSNs or a typed error;
//! a panic in a caller's closure leaves the log usable.
//!
//! Every scenario runs under a watchdog that fails the test if it does not finish (a hang),
//! never on how long it took. `NODEDB_WAL_RACE_ROUNDS` widens the seeded sweeps.

// The scenarios live beside this file, one module per concern, all in this one test
// binary (each binary costs CI a link); `support` holds the watchdog, the executor and the checks.
mod every_reader;
mod panics;
mod poison;
mod readers;
mod support;
mod waits;

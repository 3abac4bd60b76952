//! The warnings the library logs through `tracing`, caught on the calling thread: for tests of
//! what an operator is told when the log goes on as asked but perhaps not as meant.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Runs `f` and returns what it returned with the message of every warning or error logged on
/// this thread meanwhile (events on other threads, the flusher's, are not seen).
pub fn warnings_during<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = tracing::subscriber::with_default(Warnings(Arc::clone(&seen)), f);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (out, seen)
}

/// Catches every warning or error logged from now on, on any thread (the flusher's too), for
/// the rest of the process: for a child process that runs a single test. The messages gather
/// in the vector returned.
pub fn catch_every_warning() -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(Warnings(Arc::clone(&seen))).expect("the process's first subscriber");
    seen
}

struct Warnings(Arc<Mutex<Vec<String>>>);

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap().push(message.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

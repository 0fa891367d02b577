//! Progress for long work: one line per step, its name while it runs, its time when done.

use std::io::Write;
use std::time::Instant;

/// Numbered steps printed to stderr.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
}

impl Progress {
    /// A run of `total` steps.
    pub fn new(total: usize) -> Progress {
        Progress { total, done: 0 }
    }

    /// Runs one step, showing what it does and how long it took.
    pub fn step<T>(&mut self, what: &str, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.done += 1;
        eprint!("  [{}/{}] {what} ... ", self.done, self.total);
        let _ = std::io::stderr().flush();
        let started = Instant::now();
        let outcome = work();
        match &outcome {
            Ok(_) => eprintln!("{:.1} s", started.elapsed().as_secs_f64()),
            Err(_) => eprintln!("failed"),
        }
        outcome
    }
}

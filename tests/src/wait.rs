//! Waiting for a condition, as tests and the lab do for agents, routes and pods.

use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `check` every 100 ms until it holds; an error naming `what` when `within` passes.
pub fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("waited {within:?} for {what}")
}

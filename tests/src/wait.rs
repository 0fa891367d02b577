//! Waiting for a condition, as tests and the lab do for agents, routes and pods.

use std::time::{Duration, Instant};

use anyhow::bail;

/// How many times longer than here anything takes inside the test VM, whose CPU qemu
/// emulates (TCG) beside whatever else the host runs.
const VM_SLOWDOWN: u32 = 4;

/// How long to wait for what takes up to `within` here: longer inside the test VM.
pub fn patience(within: Duration) -> Duration {
    if crate::vm::inside() { within * VM_SLOWDOWN } else { within }
}

/// Polls `check` every 100 ms until it holds; an error naming `what` when [`patience`] of
/// `within` passes.
pub fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let within = patience(within);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("waited {within:?} for {what}")
}

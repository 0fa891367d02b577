//! IPAM garbage collection, a pass every interval while leading: an address whose Pod is gone
//! from the Kubernetes API (or whose node is gone) goes back to its pool by the rules of
//! `brindlectl ipam gc --help` (older than IPAMConfiguration's `leakGracePeriod`, seen leaked by
//! an earlier pass that long before, still held by the same handle); a Pod that exists never
//! loses its address.

use std::time::Duration;

use brindle_datastore::ipam::{Ipam, LeakOutcome, NodeOutcome};

/// Runs a pass now and every `interval`, for ever; a failed pass is logged and the next one
/// tries again.
pub async fn run(ipam: Ipam, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        ticks.tick().await;
        match ipam.collect_garbage().await {
            Ok(outcome) => {
                let released = outcome.leaks.iter().filter(|(_, o)| *o == LeakOutcome::Released).count();
                let cleared = outcome.nodes.iter().filter(|(_, o)| !matches!(o, NodeOutcome::Kept(_))).count();
                let deleted = outcome.idle_blocks_deleted.len();
                let waiting = outcome.report.leaked.iter().filter(|l| !l.releasable).count();
                if first || released + cleared + deleted > 0 {
                    tracing::info!(
                        released,
                        node_items_cleared = cleared,
                        idle_blocks_deleted = deleted,
                        leaks_waiting = waiting,
                        "IPAM garbage collection pass"
                    );
                } else {
                    tracing::debug!(leaks_waiting = waiting, "IPAM garbage collection pass: nothing to release");
                }
                first = false;
            }
            Err(e) => tracing::warn!(error = %e, "IPAM garbage collection pass failed; trying again next interval"),
        }
    }
}

//! On the Kubernetes datastore, the Kubernetes Node's `NetworkUnavailable` condition follows the
//! agent, as Calico's does: set False once the dataplane is in sync, and again each time it comes
//! back in sync after a failure; a refused or unanswered write is retried until it lands.

use std::time::Duration;

use brindle_datastore::store::KubernetesStore;
use tokio::sync::watch;

/// The longest pause between two attempts at the condition.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs until the readiness it follows has no sender left.
pub async fn keep_network_available(store: KubernetesStore, node: String, mut ready: watch::Receiver<bool>) {
    loop {
        if ready.wait_for(|ready| *ready).await.is_err() {
            return;
        }
        let mut pause = Duration::from_secs(1);
        loop {
            match store.mark_network_available(&node).await {
                Ok(()) => {
                    tracing::info!(%node, "Kubernetes Node condition NetworkUnavailable set to False");
                    break;
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, retry_in = ?pause, "cannot clear NetworkUnavailable");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
        if ready.wait_for(|ready| !*ready).await.is_err() {
            return;
        }
    }
}

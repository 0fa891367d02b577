//! Leader election on a Kubernetes Lease: of all the replicas, one works; when it stops
//! renewing (killed, partitioned), another takes the lease once it expires.

use std::time::Duration;

use anyhow::Context;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The shortest lease: the holder renews a third of it before it runs out, in whole seconds.
pub const MIN_LEASE: Duration = Duration::from_secs(3);

/// Where the lease is and who stands for it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's name in the Lease's `holderIdentity`.
    pub identity: String,
    /// How long a lease lasts unrenewed: the longest the others wait after the leader dies.
    pub duration: Duration,
}

/// A replica standing for the lease.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    manager: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Leadership {
    /// Starts standing for the lease (creating it if it does not exist).
    pub async fn stand(client: kube::Client, candidate: &Candidate) -> anyhow::Result<Leadership> {
        anyhow::ensure!(
            candidate.duration >= MIN_LEASE,
            "--lease-duration {:?} is shorter than {MIN_LEASE:?}",
            candidate.duration
        );
        let duration = candidate.duration.as_secs();
        let params = LeaseParams::new(candidate.identity.clone(), duration, (duration / 3).max(1));
        let manager = LeaseManagerBuilder::new(client, candidate.name.clone())
            .with_namespace(candidate.namespace.clone())
            .with_parameters(params)
            .build()
            .await
            .with_context(|| format!("the Lease {}/{}", candidate.namespace, candidate.name))?;
        let (leading, manager) = manager.watch().await;
        Ok(Leadership { leading, manager })
    }

    /// Waits until this replica holds the lease.
    pub async fn won(&mut self) -> anyhow::Result<()> {
        self.leading.wait_for(|leading| *leading).await.context("the lease manager stopped")?;
        Ok(())
    }

    /// Waits until this replica no longer holds the lease (or can no longer tell).
    pub async fn lost(&mut self) {
        let _ = self.leading.wait_for(|leading| !*leading).await;
    }

    /// Gives the lease up, so that another replica takes it at once.
    pub async fn resign(self) {
        drop(self.leading);
        match self.manager.await {
            Ok(Ok(_)) => tracing::info!("gave the lease up"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not give the lease up; it expires on its own"),
            Err(e) => tracing::warn!(error = %e, "the lease manager failed"),
        }
    }
}

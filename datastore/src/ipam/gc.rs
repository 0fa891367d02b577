//! Garbage collection over the datastore. A pass reads the blocks, nodes, pools, workload
//! endpoints, the grace period and the record the previous pass left; judges them (see
//! [`check`](super::check) for the rules); and, when it acts, releases what the judgement allows
//! and records what it saw for the next pass.
//!
//! Acting re-checks everything it is about to free against a fresh read: an address is freed
//! only if its holder is still missing and, by compare-and-swap on its block, the same handle
//! still holds it; a gone node's blocks lose their owner only if the node is still missing.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::Ipam;
use super::check::{self, CheckReport, GcRecord, GoneNode, Inputs, Leak, missing_holder};
use crate::keys;
use crate::resource::{IpPool, IpamConfiguration, Node, WorkloadEndpoint};
use crate::store::Revision;
use crate::{Error, Result};

/// What happened to one address a pass or a report wanted to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeakOutcome {
    /// Released.
    Released,
    /// Left alone, and why: its holder is back, or the address was released or changed hands
    /// since it was judged.
    Kept(String),
}

/// What happened to a gone node's blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOutcome {
    /// The block was empty and is deleted.
    Deleted,
    /// The block keeps its addresses in use and has no owner now: any node may use the rest.
    Disowned,
    /// Left alone, and why.
    Kept(String),
}

/// What an acting pass did.
#[derive(Debug, Clone, Default)]
pub struct GcOutcome {
    /// The judgement the pass acted on.
    pub report: CheckReport,
    /// Each releasable leak and what became of it.
    pub leaks: Vec<(Leak, LeakOutcome)>,
    /// Each block of a releasable gone node and what became of it.
    pub blocks: Vec<(IpNetwork, String, BlockOutcome)>,
}

impl Ipam {
    /// Judges the blocks against the record of the last acting pass, without changing
    /// anything: what is leaked, and when each leak may be released.
    pub async fn check(&self) -> Result<CheckReport> {
        let (record, _) = self.gc_record().await?;
        self.judge(&record).await
    }

    /// One garbage-collection pass: releases what may be released now, takes the blocks of
    /// nodes that have been gone for the grace period, and records the rest for the next pass.
    pub async fn collect_garbage(&self) -> Result<GcOutcome> {
        let (previous, revision) = self.gc_record().await?;
        let report = self.judge(&previous).await?;
        let releasable: Vec<Leak> = report.leaked.iter().filter(|l| l.releasable).cloned().collect();
        let leaks = self.release_leaks(&releasable).await?;
        let mut blocks = Vec::new();
        for gone in report.gone_nodes.iter().filter(|n| n.releasable) {
            blocks.extend(self.take_blocks(gone).await?.into_iter().map(|(cidr, o)| (cidr, gone.node.clone(), o)));
        }

        // The next pass needs only what is still there.
        let mut record = report.record();
        let released: HashSet<(IpAddr, &str)> =
            leaks.iter().filter(|(_, o)| *o == LeakOutcome::Released).map(|(l, _)| (l.ip, l.handle.as_str())).collect();
        record.leaks.retain(|s| !released.contains(&(s.ip, s.handle.as_str())));
        for (_, node, outcome) in &blocks {
            if !matches!(outcome, BlockOutcome::Kept(_)) {
                record.gone_nodes.remove(node);
            }
        }
        if record != previous {
            self.store_gc_record(&record, revision).await?;
        }
        Ok(GcOutcome { report, leaks, blocks })
    }

    /// Releases leaks judged releasable (by a pass, or in a report an operator kept), each
    /// only if its holder is still missing and the same handle still holds it.
    pub async fn release_leaks(&self, leaks: &[Leak]) -> Result<Vec<(Leak, LeakOutcome)>> {
        if leaks.is_empty() {
            return Ok(Vec::new());
        }
        let (nodes, endpoints) = tokio::try_join!(self.client.list::<Node>(), self.client.list::<WorkloadEndpoint>())?;
        let node_names: HashSet<&str> = nodes.0.iter().map(|n| n.metadata.name.as_str()).collect();
        let containers: HashSet<&str> = endpoints.0.iter().map(|e| e.spec.container_id.as_str()).collect();
        let mut outcomes = Vec::with_capacity(leaks.len());
        for leak in leaks {
            let outcome = if missing_holder(leak.kind, &leak.handle, &leak.node, &containers, &node_names).is_none() {
                LeakOutcome::Kept("its holder exists again".into())
            } else if self.release_handle_ips(&leak.handle, &[leak.ip]).await?.is_empty() {
                LeakOutcome::Kept("released or taken by another handle since it was judged".into())
            } else {
                tracing::info!(ip = %leak.ip, handle = %leak.handle, node = %leak.node, reason = %leak.reason, "released a leaked address");
                LeakOutcome::Released
            };
            outcomes.push((leak.clone(), outcome));
        }
        Ok(outcomes)
    }

    /// Takes a gone node's blocks, if the node is still missing: empty ones are deleted, the
    /// others lose their owner.
    async fn take_blocks(&self, gone: &GoneNode) -> Result<Vec<(IpNetwork, BlockOutcome)>> {
        if self.client.find::<Node>(None, &gone.node).await?.is_some() {
            let kept = BlockOutcome::Kept(format!("node \"{}\" exists again", gone.node));
            return Ok(gone.blocks.iter().map(|cidr| (*cidr, kept.clone())).collect());
        }
        let mut outcomes = Vec::with_capacity(gone.blocks.len());
        for &cidr in &gone.blocks {
            let taken = self
                .edit_block(cidr, |b, _| {
                    if b.owner.as_deref() != Some(gone.node.as_str()) {
                        return None;
                    }
                    b.owner = None;
                    Some(if b.is_empty() { BlockOutcome::Deleted } else { BlockOutcome::Disowned })
                })
                .await?;
            let outcome = taken.unwrap_or_else(|| BlockOutcome::Kept("it has another owner or is gone".into()));
            tracing::info!(block = %cidr, node = %gone.node, ?outcome, "took a block of a node that is gone");
            outcomes.push((cidr, outcome));
        }
        if let Some(owned) = self.cache().owned.as_mut() {
            owned.remove(&gone.node);
        }
        Ok(outcomes)
    }

    /// Reads everything a judgement needs and judges it against `record`.
    async fn judge(&self, record: &GcRecord) -> Result<CheckReport> {
        let blocks = self.blocks().await?;
        let (nodes, pools, endpoints, config) = tokio::try_join!(
            self.client.list::<Node>(),
            self.client.list::<IpPool>(),
            self.client.list::<WorkloadEndpoint>(),
            self.client.find::<IpamConfiguration>(None, "default"),
        )?;
        let grace = config.map(|c| c.spec).unwrap_or_default().leak_grace_period;
        let inputs = Inputs { blocks: &blocks, nodes: &nodes.0, pools: &pools.0, endpoints: &endpoints.0 };
        Ok(check::check(inputs, record, (self.clock)(), u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)))
    }

    /// The record the last acting pass left, with its revision (`None`: no pass has acted).
    async fn gc_record(&self) -> Result<(GcRecord, Option<Revision>)> {
        match self.client.store().get(keys::IPAM_GC_RECORD).await {
            Ok(kv) => {
                let record = serde_json::from_slice(&kv.value)
                    .map_err(|e| Error::Invalid(format!("stored garbage-collection record at {}: {e}", kv.key)))?;
                Ok((record, Some(kv.revision)))
            }
            Err(Error::NotFound(_)) => Ok((GcRecord::default(), None)),
            Err(e) => Err(e),
        }
    }

    /// Stores the record by compare-and-swap. A pass that ran at the same time and stored
    /// first wins; this pass's releases stand, and its sightings are made again next time.
    async fn store_gc_record(&self, record: &GcRecord, revision: Option<Revision>) -> Result<()> {
        let value = serde_json::to_vec(record).map_err(|e| Error::Invalid(format!("cannot encode record: {e}")))?;
        let store = self.client.store();
        let written = match revision {
            Some(revision) => store.update(keys::IPAM_GC_RECORD, &value, revision).await.map(drop),
            None => store.create(keys::IPAM_GC_RECORD, &value).await.map(drop),
        };
        match written {
            Err(Error::Conflict { .. } | Error::AlreadyExists(_) | Error::NotFound(_)) => {
                tracing::warn!("another garbage-collection pass stored its record first; keeping theirs");
                Ok(())
            }
            other => other,
        }
    }
}

//! Garbage collection over the datastore. A pass reads the blocks, nodes, pools, workload
//! endpoints, the IPAM settings and the record the previous pass left; judges them (see
//! [`check`](super::check) for the rules); and, when it acts, releases what the judgement allows
//! and records what it saw for the next pass.
//!
//! Acting re-checks everything it is about to free against a fresh read: an address is freed
//! only if its holder is still missing and, by compare-and-swap on its block, the same handle
//! still holds it; a gone node's endpoints and blocks are taken only if the node is still
//! missing.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::Ipam;
use super::check::{self, CheckReport, GcRecord, GoneNode, Holders, Inputs, Leak, PodKeys};
use crate::keys;
use crate::resource::{IpPool, IpamConfiguration, Node, WorkloadEndpoint};
use crate::store::Revision;
use crate::{Error, Result};

/// How far behind the last pass's clock a pass may be before it refuses to act.
const CLOCK_TOLERANCE_MS: u64 = 60_000;

/// What happened to one address a pass or a report wanted to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeakOutcome {
    /// Released.
    Released,
    /// Left alone, and why: its holder is back, or the address was released or changed hands
    /// since it was judged.
    Kept(String),
}

/// What happened to something of a gone node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Its endpoint was deleted.
    EndpointDeleted(String),
    /// Its block was empty and at rest, and is deleted.
    BlockDeleted(IpNetwork),
    /// Its block has no owner now: any node may claim it (it is deleted once empty and past
    /// the release cooldown).
    BlockDisowned(IpNetwork),
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
    /// Each releasable gone node and what became of its endpoints and blocks.
    pub nodes: Vec<(String, NodeOutcome)>,
    /// Blocks no node owned, empty and at rest, deleted.
    pub idle_blocks_deleted: Vec<IpNetwork>,
}

impl Ipam {
    /// Judges the blocks against the record of the last acting pass, without changing
    /// anything: what is leaked, and when each leak may be released.
    pub async fn check(&self) -> Result<CheckReport> {
        let (record, _) = self.gc_record().await?;
        Ok(self.judge(&record).await?.0)
    }

    /// One garbage-collection pass: releases what may be released now, clears nodes that have
    /// been gone for the grace period, deletes idle blocks no node owns, and records the rest
    /// for the next pass.
    pub async fn collect_garbage(&self) -> Result<GcOutcome> {
        let (previous, revision) = self.gc_record().await?;
        let (report, cooldown_ms) = self.judge(&previous).await?;
        if report.at_ms.saturating_add(CLOCK_TOLERANCE_MS) < previous.at_ms {
            return Err(Error::Invalid(format!(
                "this machine's clock is {} s behind the last garbage-collection pass's; nothing was changed \
                 (set the clock right, e.g. with NTP)",
                (previous.at_ms - report.at_ms) / 1000
            )));
        }
        let releasable: Vec<Leak> = report.leaked.iter().filter(|l| l.releasable).cloned().collect();
        let leaks = self.release_leaks(&releasable).await?;
        let mut nodes = Vec::new();
        for gone in report.gone_nodes.iter().filter(|n| n.releasable) {
            nodes.extend(self.clear_node(gone).await?.into_iter().map(|o| (gone.node.clone(), o)));
        }
        let idle_blocks_deleted = self.delete_idle_blocks(cooldown_ms).await?;

        // The next pass needs only what is still there.
        let mut record = report.record();
        let released: HashSet<(IpAddr, &str)> = leaks
            .iter()
            .filter(|(_, o)| *o == LeakOutcome::Released)
            .map(|(l, _)| (l.ip, l.holder.handle.as_str()))
            .collect();
        record.leaks.retain(|s| !released.contains(&(s.ip, s.handle.as_str())));
        for (node, outcome) in &nodes {
            if !matches!(outcome, NodeOutcome::Kept(_)) {
                record.gone_nodes.remove(node);
            }
        }
        if !record.same_sightings(&previous) {
            self.store_gc_record(&record, revision).await?;
        }
        Ok(GcOutcome { report, leaks, nodes, idle_blocks_deleted })
    }

    /// Releases leaks judged releasable (by a pass, or in a report an operator kept), each
    /// only if its holder is still missing and the same handle still holds it.
    pub async fn release_leaks(&self, leaks: &[Leak]) -> Result<Vec<(Leak, LeakOutcome)>> {
        if leaks.is_empty() {
            return Ok(Vec::new());
        }
        let (nodes, endpoints, pods) =
            tokio::try_join!(self.client.list::<Node>(), self.client.list::<WorkloadEndpoint>(), self.pods())?;
        let holders = Holders::new(&nodes.0, &endpoints.0, pods.as_ref());
        let mut outcomes = Vec::with_capacity(leaks.len());
        for leak in leaks {
            let holder = &leak.holder;
            let outcome = if holders.missing(holder).is_none() {
                LeakOutcome::Kept("its holder exists again".into())
            } else if self.release_handle_ips(&holder.handle, &[leak.ip]).await?.is_empty() {
                LeakOutcome::Kept("released or taken by another handle since it was judged".into())
            } else {
                tracing::info!(ip = %leak.ip, handle = %holder.handle, node = %holder.node, reason = %leak.reason, "released a leaked address");
                LeakOutcome::Released
            };
            outcomes.push((leak.clone(), outcome));
        }
        Ok(outcomes)
    }

    /// Clears a gone node, if it is still missing: deletes its endpoints (each only if it is
    /// still on that node), then takes its blocks (they lose their owner; empty ones at rest
    /// are deleted).
    async fn clear_node(&self, gone: &GoneNode) -> Result<Vec<NodeOutcome>> {
        if self.client.find::<Node>(None, &gone.node).await?.is_some() {
            return Ok(vec![NodeOutcome::Kept(format!("node \"{}\" exists again", gone.node))]);
        }
        let mut outcomes = Vec::new();
        for path in &gone.endpoints {
            let (namespace, name) = path.split_once('/').unwrap_or(("", path));
            let namespace = Some(namespace).filter(|n| !n.is_empty());
            let Some(endpoint) = self.client.find::<WorkloadEndpoint>(namespace, name).await? else { continue };
            if endpoint.spec.node != gone.node {
                continue;
            }
            match self.client.delete::<WorkloadEndpoint>(namespace, name, endpoint.revision()).await {
                Ok(()) | Err(Error::NotFound(_)) => outcomes.push(NodeOutcome::EndpointDeleted(path.clone())),
                Err(Error::Conflict { .. }) => {
                    outcomes.push(NodeOutcome::Kept(format!("endpoint {path} changed meanwhile")))
                }
                Err(e) => return Err(e),
            }
        }
        for &cidr in &gone.blocks {
            let taken = self
                .edit_block(cidr, |b, _| (b.owner.as_deref() == Some(gone.node.as_str())).then(|| b.owner = None))
                .await?;
            let outcome = match (taken, self.cache().blocks.contains_key(&cidr)) {
                (None, _) => NodeOutcome::Kept(format!("block {cidr} has another owner or is gone")),
                (Some(()), true) => NodeOutcome::BlockDisowned(cidr),
                (Some(()), false) => NodeOutcome::BlockDeleted(cidr),
            };
            outcomes.push(outcome);
        }
        self.cache().owned.remove(&gone.node);
        for outcome in &outcomes {
            tracing::info!(node = %gone.node, ?outcome, "cleared what a gone node left");
        }
        Ok(outcomes)
    }

    /// Deletes the blocks no node owns that hold nothing and rest no address.
    async fn delete_idle_blocks(&self, cooldown_ms: u64) -> Result<Vec<IpNetwork>> {
        let idle = check::idle_unowned(&self.blocks().await?, (self.clock)(), cooldown_ms);
        let mut deleted = Vec::new();
        for cidr in idle {
            let edited = self.edit_block(cidr, |b, _| (b.owner.is_none() && b.is_empty()).then_some(())).await?;
            if edited.is_some() && !self.cache().blocks.contains_key(&cidr) {
                deleted.push(cidr);
            }
        }
        Ok(deleted)
    }

    /// Reads everything a judgement needs and judges it against `record`. Returns the report
    /// and the release cooldown.
    async fn judge(&self, record: &GcRecord) -> Result<(CheckReport, u64)> {
        let blocks = self.blocks().await?;
        let (nodes, pools, endpoints, config, pods) = tokio::try_join!(
            self.client.list::<Node>(),
            self.client.list::<IpPool>(),
            self.client.list::<WorkloadEndpoint>(),
            self.client.find::<IpamConfiguration>(None, "default"),
            self.pods(),
        )?;
        let config = config.map(|c| c.spec).unwrap_or_default();
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let inputs =
            Inputs { blocks: &blocks, nodes: &nodes.0, pools: &pools.0, endpoints: &endpoints.0, pods: pods.as_ref() };
        let report = check::check(inputs, record, (self.clock)(), millis(config.leak_grace_period));
        Ok((report, millis(config.release_cooldown)))
    }

    /// The Pods of the Kubernetes API, when this IPAM consults it.
    async fn pods(&self) -> Result<Option<PodKeys>> {
        match &self.kubernetes {
            Some(kubernetes) => Ok(Some(kubernetes.pod_keys().await?)),
            None => Ok(None),
        }
    }

    /// The record the last acting pass left, with its revision (`None`: no pass has acted). A
    /// record that cannot be read is reported and replaced: losing it only delays releases.
    async fn gc_record(&self) -> Result<(GcRecord, Option<Revision>)> {
        match self.client.store().get(keys::IPAM_GC_RECORD).await {
            Ok(kv) => match serde_json::from_slice(&kv.value) {
                Ok(record) => Ok((record, Some(kv.revision))),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "the garbage-collection record is unreadable; starting afresh");
                    Ok((GcRecord::default(), Some(kv.revision)))
                }
            },
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

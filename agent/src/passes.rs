//! The agent's loop: it waits for the datastore's cluster, BGP's learned-route changes, the
//! resync tick, a status request or a signal, and runs the pass each calls for: a full one
//! (the calculation, the BGP plan carried out, every driver), or, after a change BGP alone
//! made, its prefixes recalculated and programmed alone.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnetwork::IpNetwork;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::bgp::{Bgp, LearnedFeed};
use crate::bird_daemon;
use crate::calc::{self, Cluster, Learned, Me};
use crate::dataplane::{Applied, Dataplane};
use crate::logging::Logging;
use crate::startup;
use crate::status::{Metrics, StatusRequest};
use crate::syncer::Published;

/// Where inter-node routes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BgpBackend {
    /// The datastore alone.
    None,
    /// The embedded BGP speaker.
    Embedded,
    /// BIRD 2, run by the agent with a configuration rendered from the same plan.
    Bird,
}

/// What the passes work with.
pub struct Passes<'a> {
    /// This node.
    pub me: &'a Me,
    /// The only writer to the kernel.
    pub dataplane: &'a Dataplane,
    /// Health, readiness and metrics.
    pub metrics: &'a Metrics,
    /// Where the MTU file and BIRD's files go.
    pub state_dir: &'a Path,
    /// Where routes between nodes come from.
    pub backend: BgpBackend,
    /// The BGP plan's settings from the command line.
    pub bgp_settings: calc::bgp::Settings,
    /// How often a full pass checks everything against the kernel.
    pub resync_every: Duration,
}

impl Passes<'_> {
    /// A family's WireGuard for the status socket: its device as the kernel has it, that it
    /// waits for this node's key to be published, or null when it is off.
    fn wireguard_status(&self, desired: Option<&calc::Desired>, ipv6: bool) -> serde_json::Value {
        let family = usize::from(ipv6);
        match desired.and_then(|d| d.wireguard[family].as_ref()) {
            Some(device) => self.dataplane.wireguard_report(device),
            None if self.me.wireguard[family].is_some() => {
                serde_json::json!({ "waiting": "for this node's public key to be published on its Node" })
            }
            None => serde_json::Value::Null,
        }
    }

    /// Runs passes until SIGTERM or SIGINT (then BGP peers are told, the dataplane stays):
    /// on every cluster `rx` publishes, every change of the local Services, every BGP change
    /// and every resync (after `on_resync`), answering `status` requests between them.
    pub async fn run(
        &self,
        mut rx: watch::Receiver<Published>,
        mut local_services: watch::Receiver<Vec<calc::services::LocalService>>,
        mut status: mpsc::Receiver<StatusRequest>,
        logging: &mut Logging,
        on_resync: impl Fn(),
    ) -> anyhow::Result<()> {
        let mut resync = tokio::time::interval(self.resync_every);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut bgp: Option<(Bgp, Arc<LearnedFeed>)> = None;
        // BGP's best routes as the agent holds them (BIRD installs the routes it learns itself:
        // the agent leaves them to it, as if converged on nothing).
        let mut learned = Learned { converged: self.backend == BgpBackend::Bird, ..Learned::default() };
        let mut bird: Option<bird_daemon::BirdProcess> = None;
        let mut last_bgp_problems = Vec::new();
        let mut agent =
            Agent { passes: self, problems: Vec::new(), mtu: None, desired: None, policy: Default::default() };

        loop {
            let learned_changed = async {
                match &bgp {
                    Some((_, feed)) => feed.changed().await,
                    None => std::future::pending().await,
                }
            };
            let (full, bgp_only) = tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() { anyhow::bail!("the datastore syncer stopped") }
                    (false, false)
                }
                () = learned_changed => (false, true),
                Ok(()) = local_services.changed() => (false, false),
                Some(reply) = status.recv() => {
                    let peers = match &bgp {
                        Some((speaker, _)) => speaker.report().await.ok(),
                        None => None,
                    };
                    let datastore = self.metrics.datastore_problem();
                    let report = serde_json::json!({
                        "node": self.me.name,
                        "ready": self.metrics.is_ready(),
                        "notReady": self.metrics.not_ready_reason(),
                        "problems": datastore.iter().chain(&agent.problems).chain(&last_bgp_problems).collect::<Vec<_>>(),
                        "bgp": peers.map(|peers| serde_json::json!({ "peers": peers })),
                        "wireguard": self.wireguard_status(agent.desired.as_ref(), false),
                        "wireguardV6": self.wireguard_status(agent.desired.as_ref(), true),
                    });
                    let _ = reply.send(report.to_string());
                    continue;
                }
                _ = resync.tick() => {
                    on_resync();
                    (true, false)
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            };
            let relearned = bgp.as_ref().and_then(|(_, feed)| learned.take_in(feed.take()));
            tracing::debug!(full, bgp_only, relearned = ?relearned.as_ref().map(BTreeSet::len), "pass");
            // Only BGP changed, and only some prefixes: recalculate and program those alone.
            // (The cluster is cloned out first: a borrow of `rx` held across an await would stop
            // the syncer's next send, on this same thread.)
            let unchanged_cluster = if rx.has_changed().unwrap_or(true) { None } else { rx.borrow().clone() };
            if bgp_only
                && let (Some(prefixes), Some(cluster)) = (relearned, unchanged_cluster)
                && agent.desired.is_some()
            {
                if !prefixes.is_empty() {
                    let bgp_ok = match &bgp {
                        Some((speaker, _)) => bgp_established(speaker).await,
                        None => true,
                    };
                    agent.relearn(&cluster, &learned, &prefixes, bgp_ok).await;
                }
                continue;
            }
            // Nothing touches the kernel before the first complete sync.
            let Some(cluster) = rx.borrow_and_update().clone() else { continue };
            logging.set_bgp(cluster.bgp.log_severity_screen);
            if self.backend == BgpBackend::Embedded && bgp.is_none() {
                bgp = Some(Bgp::start(self.me, &cluster).await.context("starting the BGP speaker")?);
            }
            // The BGP plan, one per pass, for whichever backend carries it out.
            let local = local_services.borrow_and_update().clone();
            let plan = calc::bgp::plan(self.me, &cluster, &self.bgp_settings, &local);
            if plan.problems != last_bgp_problems {
                for problem in &plan.problems {
                    tracing::warn!(%problem, "BGP peering problem");
                }
                last_bgp_problems.clone_from(&plan.problems);
            }
            if self.backend == BgpBackend::Bird
                && let Err(e) = bird_daemon::render_and_run(self.me, &cluster, &plan, self.state_dir, &mut bird)
            {
                self.metrics.error("bgp");
                tracing::warn!(error = %format!("{e:#}"), "BIRD configuration not updated");
            }
            if let Some((speaker, _)) = bgp.as_mut()
                && let Err(e) = speaker.apply(plan).await
            {
                self.metrics.error("bgp");
                tracing::warn!(error = %e, "could not update the BGP speaker");
            }
            // With BGP, ready needs a session up (or no peer to have one with).
            let bgp_ok = match &bgp {
                Some((speaker, _)) => bgp_established(speaker).await,
                None => true,
            };
            let learned = (self.backend != BgpBackend::None).then_some(&learned);
            agent.pass(&cluster, learned, bgp_ok, full).await;
        }
        if let Some((speaker, _)) = &bgp {
            speaker.shutdown().await;
        }
        drop(bird);
        tracing::warn!("stopping; the dataplane stays in place");
        Ok(())
    }
}

/// Whether the speaker has a session up (or no peer to have one with).
async fn bgp_established(speaker: &Bgp) -> bool {
    speaker.report().await.is_ok_and(|p| p.is_empty() || p.iter().any(|p| p.state == "Established"))
}

/// What the passes left for the next.
struct Agent<'a> {
    passes: &'a Passes<'a>,
    /// The problems last logged (reported on the status socket).
    problems: Vec<String>,
    /// The pod MTU last published.
    mtu: Option<u32>,
    /// The last desired state, for passes that recalculate BGP's prefixes alone.
    desired: Option<calc::Desired>,
    /// What the last pass compiled of policy, reused by the next.
    policy: crate::policy::Memo,
}

impl Agent<'_> {
    /// Computes the desired state from `cluster` and applies it.
    async fn pass(&mut self, cluster: &Cluster, learned: Option<&Learned>, bgp_ok: bool, full: bool) {
        let started = Instant::now();
        let desired = calc::desired_with(self.passes.me, cluster, learned, &mut self.policy);
        if let Some(learned) = learned {
            self.passes.metrics.bgp_routes(learned.routes.len());
        }
        let mtu = desired.pod_mtu;
        if self.mtu != Some(mtu) {
            match startup::publish(&self.passes.state_dir.join("mtu"), &mtu.to_string()) {
                Ok(_) => self.mtu = Some(mtu),
                Err(e) => tracing::warn!(error = %e, "could not publish the pod MTU"),
            }
        }
        let applied = self.passes.dataplane.apply(&desired, full).await;
        self.settle(desired, &applied, bgp_ok, full, started);
    }

    /// Recalculates and programs the routes of `prefixes` alone, after BGP changed only them.
    async fn relearn(&mut self, cluster: &Cluster, learned: &Learned, prefixes: &BTreeSet<IpNetwork>, bgp_ok: bool) {
        let Some(mut desired) = self.desired.take() else { return };
        let started = Instant::now();
        desired.relearn(self.passes.me, cluster, learned, prefixes);
        self.passes.metrics.bgp_routes(learned.routes.len());
        let applied = self.passes.dataplane.apply_routes(&desired, prefixes).await;
        self.settle(desired, &applied, bgp_ok, false, started);
    }

    /// Logs new problems, counts and reports what a pass did, and keeps its desired state.
    fn settle(&mut self, desired: calc::Desired, applied: &Applied, bgp_ok: bool, full: bool, started: Instant) {
        let problems = desired.all_problems();
        if problems != self.problems {
            for problem in &problems {
                tracing::warn!(%problem, "cannot program");
            }
            self.problems = problems;
        }
        for (driver, _) in &applied.failures {
            self.passes.metrics.error(driver);
        }
        self.passes.metrics.iptables_restore(applied.failures.iter().all(|(d, _)| *d != "iptables"));
        let took = started.elapsed();
        self.passes.metrics.applied(took, desired.routes.len(), applied.changes, full);
        if !full {
            self.passes.metrics.watch_lag(took);
        }
        let ready = if let Some((driver, e)) = applied.failures.first() {
            Err(format!("the {driver} driver failed: {e}"))
        } else if !bgp_ok {
            Err("no BGP session is established".to_owned())
        } else if let Some(first) = desired.unrouted.first() {
            Err(format!(
                "no route to {} block(s) of other nodes ({first}{}); the problems say why",
                desired.unrouted.len(),
                if desired.unrouted.len() > 1 { ", ..." } else { "" }
            ))
        } else {
            Ok(())
        };
        if ready.is_ok() && !self.passes.metrics.dataplane_ready() {
            tracing::warn!(routes = desired.routes.len(), "dataplane in sync");
        }
        self.passes.metrics.set_ready(ready);
        if applied.changes > 0 {
            tracing::info!(changes = applied.changes, full, ?took, "dataplane updated");
        }
        self.desired = Some(desired);
    }
}

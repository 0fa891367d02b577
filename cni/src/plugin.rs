//! The main plugin, `brindle`: a proxy-ARP veth per pod with addresses from brindle-ipam (in
//! process) or any other IPAM plugin (executed).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::annotations;
use crate::config::{BRINDLE_IPAM, BrindleIpam};
use crate::endpoint::EndpointId;
use crate::env::Command;
use crate::error::{Error, Result};
use crate::ipam::{self, Store};
use crate::netns::Netns;
use crate::record::Record;
use crate::skel::Invocation;
use crate::version::Version;
use crate::wiring;
use brindle_kernel::netlink;

/// Where addresses come from.
enum Ipam {
    /// brindle's block IPAM, in this process.
    Brindle(BrindleIpam),
    /// Another plugin, executed.
    Delegate(String),
}

impl Ipam {
    fn of(inv: &Invocation) -> Result<Ipam> {
        let kind = inv.conf.ipam_type()?;
        Ok(if kind == BRINDLE_IPAM { Ipam::Brindle(inv.conf.brindle_ipam()?) } else { Ipam::Delegate(kind.to_owned()) })
    }

    fn name(&self) -> &str {
        match self {
            Ipam::Brindle(_) => BRINDLE_IPAM,
            Ipam::Delegate(plugin) => plugin,
        }
    }
}

/// Handles one call of the main plugin.
pub async fn handle(inv: &Invocation) -> Result<Option<Value>> {
    match inv.request.command {
        Command::Add => add(inv).await.map(Some),
        Command::Del => del(inv).await.map(|()| None),
        Command::Check => check(inv).await.map(|()| None),
        Command::Gc => gc(inv).await.map(|()| None),
        Command::Status => status(inv).await.map(|()| None),
        Command::Version => unreachable!("VERSION is answered before the config is read"),
    }
}

/// The host end's name for this request.
fn host_veth(inv: &Invocation) -> String {
    let pod = &inv.request.pod;
    wiring::host_veth_name(
        pod.namespace.as_deref().unwrap_or("default"),
        pod.name.as_deref().unwrap_or(&inv.request.container_id),
        &inv.request.ifname,
    )
}

fn endpoint_id(inv: &Invocation, node: &str) -> EndpointId {
    let r = &inv.request;
    EndpointId::new(node, r.pod.namespace.as_deref(), r.pod.name.as_deref(), &r.container_id, &r.ifname)
}

async fn add(inv: &Invocation) -> Result<Value> {
    let conf = &inv.conf;
    let request = &inv.request;
    conf.validate_for_attachment()?;
    let ipam = Ipam::of(inv)?;
    let netns = Netns::open(request.netns.as_deref().expect("ADD requires CNI_NETNS"))?;
    let record_dir = conf.record_dir();
    let host = netlink::connect()?;

    // The same container ID again: the same result, if what it describes is still there.
    let earlier = Record::load(&record_dir, &conf.name, &request.container_id, &request.ifname)?;
    if let Some(record) = &earlier
        && netlink::link(&host, &record.host_veth).await?.is_some()
    {
        tracing::info!(container = %request.container_id, "already attached; returning the recorded result");
        return Ok(inv.print(&record.result));
    }

    let node = conf.node_name()?;
    let mtu = conf.pod_mtu()?;
    let store = Store::connect(conf).await?;
    let pod = annotations::view(store.kubernetes.as_ref(), &request.pod).await?;
    let handle = ipam::handle(&conf.name, &request.container_id);
    // A record whose veth is gone (the sandbox's namespace was destroyed under it): its
    // addresses are given back before new ones are taken, so the handle never holds both.
    if let (Some(record), Ipam::Brindle(_)) = (&earlier, &ipam) {
        store.release(&handle, &record.result.addresses()).await?;
        Record::remove(&record_dir, &conf.name, &request.container_id, &request.ifname)?;
    }
    let mut undo = Undo::default();
    let outcome = async {
        let addresses = match &ipam {
            Ipam::Brindle(settings) => {
                store.add(conf, settings, ipam::holder(conf, request, &node), &pod.addresses).await?
            }
            Ipam::Delegate(plugin) => {
                if !pod.addresses.is_empty() {
                    tracing::warn!(%plugin, "the Pod's IPAM annotations are for brindle-ipam; ignored");
                }
                ipam::delegate(plugin, Command::Add, request, &inv.stdin)?.unwrap_or_default()
            }
        };
        let ips = addresses.addresses();
        undo.addresses = Some(ips.clone());
        if ips.is_empty() {
            return Err(Error::Internal(format!("IPAM plugin {} returned no address", ipam.name())));
        }
        let plan = wiring::Plan {
            host_veth: host_veth(inv),
            container_id: request.container_id.clone(),
            ifname: request.ifname.clone(),
            mtu,
            addresses: ips,
        };
        let pod_mac = wiring::attach(&host, &netns, &plan).await?;
        undo.host_veth = Some(plan.host_veth.clone());
        let mut result = plan.result(&pod_mac, &netns);
        result.dns = addresses.dns;

        let endpoint = endpoint_id(inv, &node);
        let networks = plan.addresses.iter().map(|&ip| wiring::host_prefix(ip)).collect();
        endpoint.write(&store.client, &node, &plan.host_veth, &pod_mac, networks, pod.facts).await?;
        undo.endpoint = Some(endpoint.clone());

        let record = Record {
            network: conf.name.clone(),
            container_id: request.container_id.clone(),
            ifname: request.ifname.clone(),
            netns: netns.path().display().to_string(),
            pod_namespace: request.pod.namespace.clone(),
            pod_name: request.pod.name.clone(),
            node: node.clone(),
            host_veth: plan.host_veth.clone(),
            mtu,
            ipam: ipam.name().to_owned(),
            handle: handle.clone(),
            workload_endpoint: Some(endpoint.path()),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
            result: result.clone(),
        };
        record.save(&record_dir)?;
        Ok(result)
    }
    .await;
    match outcome {
        Ok(result) => Ok(inv.print(&result)),
        Err(e) => {
            undo.run(inv, &ipam, &store, &host, &handle).await;
            Err(e)
        }
    }
}

/// What a failed ADD has to take back, newest first.
#[derive(Default)]
struct Undo {
    addresses: Option<Vec<IpAddr>>,
    host_veth: Option<String>,
    endpoint: Option<EndpointId>,
}

impl Undo {
    async fn run(self, inv: &Invocation, ipam: &Ipam, store: &Store, host: &rtnetlink::Handle, handle: &str) {
        if let Some(endpoint) = &self.endpoint
            && let Err(e) = endpoint.delete(&store.client).await
        {
            tracing::warn!(error = %e, "rollback: could not delete the endpoint");
        }
        if let Some(veth) = &self.host_veth
            && let Err(e) = wiring::detach(host, veth, &inv.request.container_id, false).await
        {
            tracing::warn!(error = %e, "rollback: could not delete the veth");
        }
        let released = match ipam {
            Ipam::Brindle(_) => store.release(handle, self.addresses.as_deref().unwrap_or_default()).await.map(drop),
            // The delegate may have allocated even if it then failed: always give it its DEL.
            Ipam::Delegate(plugin) => ipam::delegate(plugin, Command::Del, &inv.request, &inv.stdin).map(drop),
        };
        if let Err(e) = released {
            tracing::warn!(error = %e, %handle, "rollback: could not release the addresses");
        }
    }
}

async fn del(inv: &Invocation) -> Result<()> {
    let conf = &inv.conf;
    let request = &inv.request;
    conf.validate_for_attachment()?;
    let ipam = Ipam::of(inv)?;
    let record_dir = conf.record_dir();
    let record = Record::load(&record_dir, &conf.name, &request.container_id, &request.ifname)?;
    let veth = record.as_ref().map_or_else(|| host_veth(inv), |r| r.host_veth.clone());
    // A host end of this name made for a newer sandbox of the pod is not ours to remove.
    let claimed = claimed_by_another(&record_dir, &conf.name, &request.container_id, &veth)?;
    // Deleting a veth blocks in the kernel for a while (it waits for the network stack to
    // let go of it); the datastore work runs meanwhile.
    let container = request.container_id.clone();
    let kernel = std::thread::spawn(move || wiring::detach_blocking(&veth, &container, claimed));
    let node = match &record {
        Some(r) => r.node.clone(),
        None => conf.node_name()?,
    };
    let handle = ipam::handle(&conf.name, &request.container_id);
    let datastore = async {
        match &ipam {
            Ipam::Brindle(_) => {
                let store = Store::connect(conf).await?;
                let known: Vec<IpAddr> = match (&record, conf.prev_result()?) {
                    (Some(r), _) => r.result.addresses(),
                    (None, Some(prev)) => prev.addresses(),
                    (None, None) => Vec::new(),
                };
                store.release(&handle, &known).await?;
                endpoint_id(inv, &node).delete(&store.client).await
            }
            Ipam::Delegate(plugin) => {
                ipam::delegate(plugin, Command::Del, request, &inv.stdin)?;
                let store = Store::connect(conf).await?;
                endpoint_id(inv, &node).delete(&store.client).await
            }
        }
    }
    .await;
    kernel.join().unwrap_or_else(|_| Err(Error::Internal("the thread deleting the veth panicked".into())))?;
    datastore?;
    Record::remove(&record_dir, &conf.name, &request.container_id, &request.ifname)
}

/// Whether another container's record claims this host veth.
fn claimed_by_another(record_dir: &std::path::Path, network: &str, container_id: &str, veth: &str) -> Result<bool> {
    Ok(Record::list(record_dir, network)?.iter().any(|r| r.host_veth == veth && r.container_id != container_id))
}

async fn check(inv: &Invocation) -> Result<()> {
    inv.require(Version::CHECK, "CHECK")?;
    let conf = &inv.conf;
    let request = &inv.request;
    conf.validate_for_attachment()?;
    let ipam = Ipam::of(inv)?;
    let prev = conf.prev_result()?.ok_or_else(|| Error::InvalidConfig("CHECK needs prevResult".into()))?;
    let netns = Netns::open(request.netns.as_deref().expect("CHECK requires CNI_NETNS"))?;
    let host = netlink::connect()?;
    let veth = prev.interfaces.iter().find(|i| i.sandbox.is_empty()).map_or_else(|| host_veth(inv), |i| i.name.clone());
    let mut problems = wiring::check(&host, &netns, &veth, &request.ifname, &prev).await?;
    match &ipam {
        Ipam::Brindle(_) => {
            let store = Store::connect(conf).await?;
            let ips: Vec<IpAddr> = prev.addresses();
            problems.extend(store.check(&ipam::handle(&conf.name, &request.container_id), &ips).await?);
        }
        Ipam::Delegate(plugin) => {
            ipam::delegate(plugin, Command::Check, request, &inv.stdin)?;
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckFailed(format!("container {}: {}", request.container_id, problems.join("; "))))
    }
}

async fn gc(inv: &Invocation) -> Result<()> {
    inv.require(Version::GC, "GC")?;
    let conf = &inv.conf;
    conf.validate_for_attachment()?;
    let ipam = Ipam::of(inv)?;
    let valid = conf.gc_attachments();
    let record_dir = conf.record_dir();
    let host = netlink::connect()?;
    let store = Store::connect(conf).await?;
    let is_valid = |r: &Record| {
        valid.iter().any(|a| a.container_id == r.container_id && (a.ifname.is_empty() || a.ifname == r.ifname))
    };
    for record in Record::list(&record_dir, &conf.name)?.into_iter().filter(|r| !is_valid(r)) {
        tracing::info!(container = %record.container_id, veth = %record.host_veth, "garbage-collecting an attachment");
        let claimed = claimed_by_another(&record_dir, &conf.name, &record.container_id, &record.host_veth)?;
        wiring::detach(&host, &record.host_veth, &record.container_id, claimed).await?;
        let endpoint = EndpointId::new(
            &record.node,
            record.pod_namespace.as_deref(),
            record.pod_name.as_deref(),
            &record.container_id,
            &record.ifname,
        );
        endpoint.delete(&store.client).await?;
        if let Ipam::Brindle(_) = ipam {
            store.release(&record.handle, &record.result.addresses()).await?;
        }
        Record::remove(&record_dir, &record.network, &record.container_id, &record.ifname)?;
    }
    match &ipam {
        Ipam::Brindle(_) => {
            store.gc(&conf.name, &conf.node_name()?, &valid).await?;
        }
        Ipam::Delegate(plugin) => {
            ipam::delegate(plugin, Command::Gc, &inv.request, &inv.stdin)?;
        }
    }
    Ok(())
}

async fn status(inv: &Invocation) -> Result<()> {
    inv.require(Version::GC, "STATUS")?;
    match Ipam::of(inv)? {
        Ipam::Brindle(settings) => {
            let store = Store::connect(&inv.conf).await.map_err(|e| Error::NotAvailable(e.to_string()))?;
            store.status(&settings, &inv.conf.node_name()?).await
        }
        Ipam::Delegate(plugin) => ipam::delegate(&plugin, Command::Status, &inv.request, &inv.stdin).map(drop),
    }
}

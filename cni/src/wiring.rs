//! The pod's interface, as DESIGN.md's "Pod wiring" prescribes: a veth whose host end
//! answers ARP for everything (proxy_arp, MAC ee:ee:ee:ee:ee:ee) and whose pod end routes all
//! traffic through the link-local gateway 169.254.1.1 (IPv6: the host end's link-local
//! address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::result::{CniResult, Interface, IpConfig, Route};
use brindle_kernel::netlink;

/// The host end's MAC address.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The IPv4 gateway pods see.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway pods see: the host end's EUI-64 link-local address.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// The host end's name: `brin` and 11 hex digits of sha1("<namespace>.<pod>") (the interface
/// name joins in for interfaces other than eth0, so a pod can have several).
pub fn host_veth_name(namespace: &str, pod: &str, ifname: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(namespace.as_bytes());
    hasher.update(b".");
    hasher.update(pod.as_bytes());
    if ifname != "eth0" {
        hasher.update(b".");
        hasher.update(ifname.as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{}", brindle_kernel::names::WORKLOAD_PREFIX, &hex[..11])
}

/// The mark a host veth carries as its alias: the container it was made for. DEL and GC
/// remove a host veth only when it carries their container's mark, so a late DEL of an old
/// sandbox never removes the interface of the pod's new one (both get the same name).
pub fn owner_mark(container_id: &str) -> String {
    // IFALIASZ is 256 bytes with the NUL; an ID that long is shortened to a digest.
    if container_id.len() <= 200 {
        format!("brindle:{container_id}")
    } else {
        let digest: String = Sha1::digest(container_id.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        format!("brindle:sha1:{digest}")
    }
}

/// The owner mark on a link, if it has one.
fn mark_of(link: &rtnetlink::packet_route::link::LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        rtnetlink::packet_route::link::LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
        _ => None,
    })
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The host end's name.
    pub host_veth: String,
    /// The container it is for (its mark, see [`owner_mark`]).
    pub container_id: String,
    /// The pod end's name (`CNI_IFNAME`).
    pub ifname: String,
    /// Both ends' MTU.
    pub mtu: u32,
    /// The pod's addresses.
    pub addresses: Vec<IpAddr>,
}

impl Plan {
    /// The routes inside the pod, as the result reports them.
    pub fn pod_routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        if self.addresses.iter().any(IpAddr::is_ipv4) {
            routes.push(Route { dst: "0.0.0.0/0".parse().expect("literal"), gw: Some(GATEWAY_V4.into()) });
        }
        if self.addresses.iter().any(IpAddr::is_ipv6) {
            routes.push(Route { dst: "::/0".parse().expect("literal"), gw: Some(GATEWAY_V6.into()) });
        }
        routes
    }

    /// The result of a successful attach.
    pub fn result(&self, pod_mac: &str, netns: &Netns) -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: self.host_veth.clone(),
                    mac: brindle_kernel::format_mac(&HOST_MAC),
                    sandbox: String::new(),
                },
                Interface {
                    name: self.ifname.clone(),
                    mac: pod_mac.to_owned(),
                    sandbox: netns.path().display().to_string(),
                },
            ],
            ips: self
                .addresses
                .iter()
                .map(|&ip| IpConfig { address: host_prefix(ip), gateway: None, interface: Some(1) })
                .collect(),
            routes: self.pod_routes(),
            dns: Default::default(),
        }
    }
}

/// `ip/32` or `ip/128`.
pub fn host_prefix(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("a host prefix is always valid")
}

/// Builds the veth pair and everything on both ends. Returns the pod end's MAC. On failure
/// the pair is gone again (deleting the host end deletes both).
pub async fn attach(host: &Handle, netns: &Netns, plan: &Plan) -> Result<String> {
    // A host end of the same name belongs to an earlier sandbox of this pod whose DEL never
    // came: it is replaced.
    if netlink::delete_link(host, &plan.host_veth).await? {
        tracing::info!(veth = %plan.host_veth, "removed a stale host veth of an earlier sandbox");
    }
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(plan.ifname.clone())
        .mtu(plan.mtu)
        .setns_by_fd(netns.file().as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(plan.host_veth.clone())
        .mtu(plan.mtu)
        .address(HOST_MAC.to_vec())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link().add(veth).execute().await.map_err(|e| {
        if netlink::is_existing(&e) {
            Error::Internal(format!(
                "creating veth {} with peer {} in {}: an interface {} already exists in the container",
                plan.host_veth,
                plan.ifname,
                netns.path().display(),
                plan.ifname
            ))
        } else {
            Error::Internal(format!("creating veth {}: {e}", plan.host_veth))
        }
    })?;
    let finished = finish_attach(host, netns, plan).await;
    if finished.is_err()
        && let Err(e) = netlink::delete_link(host, &plan.host_veth).await
    {
        tracing::warn!(error = %e, veth = %plan.host_veth, "could not remove the half-built veth");
    }
    finished
}

async fn finish_attach(host: &Handle, netns: &Netns, plan: &Plan) -> Result<String> {
    let has_v4 = plan.addresses.iter().any(IpAddr::is_ipv4);
    let has_v6 = plan.addresses.iter().any(IpAddr::is_ipv6);
    let veth = &plan.host_veth;
    // Before the link is up, whatever the pod's families: the pod is untrusted. Its router
    // advertisements must never configure the host (no default route, no address from them),
    // and its packets must come from its own addresses (strict reverse-path filtering: a
    // source routed anywhere but back through this veth is dropped).
    if std::path::Path::new(&format!("/proc/sys/net/ipv6/conf/{veth}")).exists() {
        netlink::sysctl(&format!("net/ipv6/conf/{veth}/accept_ra"), "0")?;
        netlink::sysctl(&format!("net/ipv6/conf/{veth}/autoconf"), "0")?;
    }
    netlink::sysctl(&format!("net/ipv4/conf/{veth}/rp_filter"), "1")?;
    if has_v4 {
        // Answer ARP for every address at once (proxy_delay 0; the default delays replies by
        // up to 0.8 s).
        netlink::sysctl(&format!("net/ipv4/conf/{veth}/proxy_arp"), "1")?;
        netlink::sysctl(&format!("net/ipv4/neigh/{veth}/proxy_delay"), "0")?;
        netlink::sysctl(&format!("net/ipv4/conf/{veth}/forwarding"), "1")?;
    }
    if has_v6 {
        // The link-local gateway must answer at once: no duplicate address detection.
        netlink::sysctl(&format!("net/ipv6/conf/{veth}/disable_ipv6"), "0")?;
        netlink::sysctl(&format!("net/ipv6/conf/{veth}/accept_dad"), "0")?;
        netlink::sysctl(&format!("net/ipv6/conf/{veth}/forwarding"), "1")?;
    }
    let index = netlink::link(host, veth)
        .await?
        .ok_or_else(|| Error::Internal(format!("veth {veth} vanished right after it was made")))?
        .header
        .index;
    // The mark goes on with the link up: the kernel takes an alias only on a change, not on
    // creation.
    host.link()
        .set(LinkUnspec::new_with_index(index).alias(owner_mark(&plan.container_id)).up().build())
        .execute()
        .await
        .map_err(|e| Error::Internal(format!("marking {veth} and setting it up: {e}")))?;

    let pod_mac = netns.run(async || configure_pod(plan).await)?;

    for &ip in &plan.addresses {
        netlink::replace_route(host, host_prefix(ip), None, index).await?;
    }
    Ok(pod_mac)
}

/// Inside the pod: addresses, the gateway route and the default routes.
async fn configure_pod(plan: &Plan) -> Result<String> {
    let pod = netlink::connect()?;
    let name = &plan.ifname;
    let has_v6 = plan.addresses.iter().any(IpAddr::is_ipv6);
    if has_v6 {
        netlink::sysctl("net/ipv6/conf/all/disable_ipv6", "0")?;
        netlink::sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0")?;
        netlink::sysctl(&format!("net/ipv6/conf/{name}/accept_dad"), "0")?;
    }
    let link = netlink::link(&pod, name)
        .await?
        .ok_or_else(|| Error::Internal(format!("{name} did not appear in the container's namespace")))?;
    let index = link.header.index;
    for &ip in &plan.addresses {
        let prefix = host_prefix(ip);
        pod.address()
            .add(index, ip, prefix.prefix())
            .execute()
            .await
            .map_err(|e| Error::Internal(format!("adding {prefix} to {name} in the container: {e}")))?;
    }
    pod.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| Error::Internal(format!("setting {name} up in the container: {e}")))?;
    if plan.addresses.iter().any(IpAddr::is_ipv4) {
        netlink::replace_route(&pod, host_prefix(GATEWAY_V4.into()), None, index).await?;
    }
    for route in plan.pod_routes() {
        netlink::replace_route(&pod, route.dst, route.gw, index).await?;
    }
    Ok(netlink::mac_of(&link))
}

/// Removes the host end (and with it the pod end and the host routes) if it belongs to
/// `container_id`: it carries that container's mark, or, for a veth made before brindle marked
/// them, no other container's record claims it (`claimed_by_another`). Returns whether it
/// removed it.
pub async fn detach(host: &Handle, host_veth: &str, container_id: &str, claimed_by_another: bool) -> Result<bool> {
    let Some(link) = netlink::link(host, host_veth).await? else { return Ok(false) };
    let ours = match mark_of(&link) {
        Some(mark) => mark == owner_mark(container_id),
        None => !claimed_by_another,
    };
    if !ours {
        tracing::info!(veth = %host_veth, container = %container_id, "the host veth belongs to another sandbox; left alone");
        return Ok(false);
    }
    Ok(netlink::delete_link(host, host_veth).await?)
}

/// [`detach`] on the calling thread, with its own runtime and netlink socket (for a thread
/// of its own, so the caller can do other work while the kernel tears the veth down).
pub fn detach_blocking(host_veth: &str, container_id: &str, claimed_by_another: bool) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting a runtime: {e}")))?;
    runtime.block_on(async { detach(&netlink::connect()?, host_veth, container_id, claimed_by_another).await })
}

/// Compares the kernel with a previous result; returns every difference found.
pub async fn check(
    host: &Handle,
    netns: &Netns,
    host_veth: &str,
    ifname: &str,
    prev: &CniResult,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let expected = prev.addresses();
    match netlink::link(host, host_veth).await? {
        None => problems.push(format!("host veth {host_veth} is missing")),
        Some(link) => {
            if link.header.flags.contains(rtnetlink::packet_route::link::LinkFlags::Up) {
                let mut all = netlink::routes(host, false).await?;
                all.extend(netlink::routes(host, true).await?);
                let all: Vec<_> = all.iter().filter_map(netlink::route_of).collect();
                for &ip in &expected {
                    let found = all.iter().any(|r| r.dst == host_prefix(ip) && r.oif == Some(link.header.index));
                    if !found {
                        problems.push(format!("host route {} dev {host_veth} is missing", host_prefix(ip)));
                    }
                }
            } else {
                problems.push(format!("host veth {host_veth} is down"));
            }
        }
    }
    let inside = netns.run(async || check_pod(ifname, &expected, prev).await)?;
    problems.extend(inside);
    Ok(problems)
}

async fn check_pod(ifname: &str, expected: &[IpAddr], prev: &CniResult) -> Result<Vec<String>> {
    let pod = netlink::connect()?;
    let mut problems = Vec::new();
    let Some(link) = netlink::link(&pod, ifname).await? else {
        return Ok(vec![format!("{ifname} is missing in the container")]);
    };
    let index = link.header.index;
    if let Some(want) = prev.interfaces.iter().find(|i| i.name == ifname).map(|i| i.mac.as_str())
        && !want.is_empty()
    {
        let have = netlink::mac_of(&link);
        if have != want {
            problems.push(format!("{ifname} has MAC {have}, the result says {want}"));
        }
    }
    let addresses: Vec<IpAddr> = pod
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| Error::Internal(format!("listing addresses of {ifname}: {e}")))?
        .into_iter()
        .flat_map(|m| m.attributes)
        .filter_map(|a| match a {
            AddressAttribute::Address(ip) => Some(ip),
            _ => None,
        })
        .collect();
    for ip in expected {
        if !addresses.contains(ip) {
            problems.push(format!("{ifname} in the container lacks address {ip}"));
        }
    }
    let mut routes = netlink::routes(&pod, false).await?;
    routes.extend(netlink::routes(&pod, true).await?);
    let routes: Vec<_> = routes.iter().filter_map(netlink::route_of).collect();
    for want in &prev.routes {
        let found = routes.iter().any(|r| {
            r.dst.prefix() == want.dst.prefix()
                && (want.dst.prefix() == 0 || r.dst.ip() == want.dst.ip())
                && r.gateway == want.gw
        });
        if !found {
            let via = want.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            problems.push(format!("route {}{via} is missing in the container", want.dst));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_and_fit() {
        let a = host_veth_name("default", "web-0", "eth0");
        assert_eq!(a, host_veth_name("default", "web-0", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("brin"));
        assert_ne!(a, host_veth_name("default", "web-1", "eth0"));
        assert_ne!(a, host_veth_name("default", "web-0", "net1"));
        // sha1("default.web-0") starts with these digits.
        let digest = Sha1::digest(b"default.web-0");
        assert_eq!(&a[4..6], format!("{:02x}", digest[0]));
    }

    #[test]
    fn the_v6_gateway_is_the_eui64_address_of_the_host_mac() {
        let mut eui = [0xee, 0xee, 0xee, 0xff, 0xfe, 0xee, 0xee, 0xee];
        eui[0] ^= 0x02;
        let segments = GATEWAY_V6.segments();
        assert_eq!(segments[4], u16::from_be_bytes([eui[0], eui[1]]));
        assert_eq!(segments[7], u16::from_be_bytes([eui[6], eui[7]]));
    }
}

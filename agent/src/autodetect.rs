//! Which address is this node's: detected deterministically, with the reason logged and
//! stored. Methods as Calico names them: `first-found`, `interface=NAME[,NAME...]` (a
//! trailing `*` matches a prefix), `cidr=CIDR[,CIDR...]`, `can-reach=ADDRESS`.

use std::net::{IpAddr, UdpSocket};
use std::str::FromStr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

/// Interfaces `first-found` never picks: loopback, pods, tunnels, other CNIs' bridges.
const SKIPPED: &[&str] =
    &["lo", "brin", "vxlan", "tunl", "docker", "cni", "flannel", "cali", "veth", "kube-ipvs", "virbr"];

/// How to choose the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// The first global address on the first interface (by index) that is up and not skipped.
    FirstFound,
    /// The first address on an interface matching one of these names.
    Interface(Vec<String>),
    /// The first address inside one of these ranges.
    Cidr(Vec<IpNetwork>),
    /// The address the kernel would use to reach this one.
    CanReach(IpAddr),
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let list =
            |v: &str| v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect::<Vec<_>>();
        match s.split_once('=') {
            None if s == "first-found" => Ok(Method::FirstFound),
            Some(("interface", v)) if !list(v).is_empty() => Ok(Method::Interface(list(v))),
            Some(("cidr", v)) => list(v)
                .iter()
                .map(|c| c.parse().map_err(|e| format!("cidr={c}: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Method::Cidr),
            Some(("can-reach", v)) => v.parse().map(Method::CanReach).map_err(|e| format!("can-reach={v}: {e}")),
            _ => Err(format!(
                "unknown address detection method \"{s}\" (first-found, interface=NAME, cidr=CIDR, can-reach=ADDRESS)"
            )),
        }
    }
}

/// The chosen address and why.
#[derive(Debug, Clone)]
pub struct Detected {
    /// The address with its subnet's prefix length.
    pub address: IpNetwork,
    /// The interface that holds it.
    pub interface: String,
    /// That interface's MTU.
    pub mtu: u32,
    /// Why this one, in words.
    pub reason: String,
}

struct Candidate {
    index: u32,
    name: String,
    up: bool,
    mtu: u32,
    addresses: Vec<IpNetwork>,
}

async fn candidates(handle: &Handle, v6: bool) -> anyhow::Result<Vec<Candidate>> {
    let links: Vec<_> = handle.link().get().execute().try_collect().await?;
    let addresses: Vec<_> = handle.address().get().execute().try_collect().await?;
    let mut out: Vec<Candidate> = links
        .iter()
        .map(|l| Candidate {
            index: l.header.index,
            name: l
                .attributes
                .iter()
                .find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
                .unwrap_or_default(),
            up: l.header.flags.contains(LinkFlags::Up),
            mtu: l
                .attributes
                .iter()
                .find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None })
                .unwrap_or(1500),
            addresses: addresses
                .iter()
                .filter(|m| {
                    m.header.index == l.header.index
                        && m.header.scope == rtnetlink::packet_route::address::AddressScope::Universe
                })
                .filter_map(|m| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) if ip.is_ipv6() == v6 => {
                            IpNetwork::new(*ip, m.header.prefix_len).ok()
                        }
                        _ => None,
                    })
                })
                .collect(),
        })
        .collect();
    out.sort_by_key(|c| c.index);
    Ok(out)
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Detects the node's address of one family.
pub async fn detect(handle: &Handle, method: &Method, v6: bool) -> anyhow::Result<Detected> {
    let all = candidates(handle, v6).await?;
    let pick = |c: &Candidate, address: IpNetwork, reason: String| Detected {
        address,
        interface: c.name.clone(),
        mtu: c.mtu,
        reason,
    };
    let found = match method {
        Method::FirstFound => {
            all.iter().filter(|c| c.up && !SKIPPED.iter().any(|s| c.name.starts_with(s))).find_map(|c| {
                c.addresses
                    .first()
                    .map(|a| pick(c, *a, format!("first-found: first address on {} (index {})", c.name, c.index)))
            })
        }
        Method::Interface(patterns) => {
            all.iter().filter(|c| patterns.iter().any(|p| name_matches(p, &c.name))).find_map(|c| {
                c.addresses
                    .first()
                    .map(|a| pick(c, *a, format!("interface={}: {} matches", patterns.join(","), c.name)))
            })
        }
        Method::Cidr(ranges) => all.iter().find_map(|c| {
            c.addresses.iter().find_map(|a| {
                ranges
                    .iter()
                    .find(|r| r.contains(a.ip()))
                    .map(|r| pick(c, *a, format!("cidr={r}: {} is inside", a.ip())))
            })
        }),
        Method::CanReach(target) => {
            // Connecting a UDP socket sends nothing; it only asks the kernel for a source.
            let socket = UdpSocket::bind(if v6 { "[::]:0" } else { "0.0.0.0:0" })?;
            socket.connect((*target, 9))?;
            let source = socket.local_addr()?.ip();
            all.iter().find_map(|c| {
                c.addresses
                    .iter()
                    .find(|a| a.ip() == source)
                    .map(|a| pick(c, *a, format!("can-reach={target}: the kernel's source address toward it")))
            })
        }
    };
    found.ok_or_else(|| anyhow::anyhow!("no {} address found by {method:?}", if v6 { "IPv6" } else { "IPv4" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_like_calicos() {
        assert_eq!("first-found".parse(), Ok(Method::FirstFound));
        assert_eq!("interface=eth0,ens*".parse(), Ok(Method::Interface(vec!["eth0".into(), "ens*".into()])));
        assert_eq!("cidr=10.0.0.0/8".parse(), Ok(Method::Cidr(vec!["10.0.0.0/8".parse().unwrap()])));
        assert_eq!("can-reach=8.8.8.8".parse(), Ok(Method::CanReach("8.8.8.8".parse().unwrap())));
        assert!("skip".parse::<Method>().unwrap_err().contains("first-found"));
        assert!("cidr=10.0.0.0/33".parse::<Method>().is_err());
        assert!(name_matches("ens*", "ens3") && !name_matches("ens*", "eth0") && name_matches("eth0", "eth0"));
    }
}

//! Which address is this node's: detected deterministically, with the reason logged and
//! stored. Methods as Calico names them: `first-found`, `interface=NAME[,NAME...]` (a
//! trailing `*` matches a prefix), `cidr=CIDR[,CIDR...]`, `can-reach=ADDRESS`.

use std::net::{IpAddr, UdpSocket};
use std::str::FromStr;

use brindle_kernel::Kernel;
use ipnetwork::IpNetwork;

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
    /// The Kubernetes Node's InternalIP of the family, as kubelet reported it (the Kubernetes
    /// datastore only).
    KubernetesInternalIp,
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let list =
            |v: &str| v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect::<Vec<_>>();
        match s.split_once('=') {
            None if s == "first-found" => Ok(Method::FirstFound),
            None if s == "kubernetes-internal-ip" => Ok(Method::KubernetesInternalIp),
            Some(("interface", v)) if !list(v).is_empty() => Ok(Method::Interface(list(v))),
            Some(("cidr", v)) => list(v)
                .iter()
                .map(|c| c.parse().map_err(|e| format!("cidr={c}: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Method::Cidr),
            Some(("can-reach", v)) => v.parse().map(Method::CanReach).map_err(|e| format!("can-reach={v}: {e}")),
            _ => Err(format!(
                "unknown address detection method \"{s}\" (first-found, interface=NAME, cidr=CIDR, \
                 can-reach=ADDRESS, kubernetes-internal-ip)"
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

/// A global address: not loopback, not link-local (what the kernel scopes `universe`).
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
        IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local(),
    }
}

async fn candidates(kernel: &dyn Kernel, v6: bool) -> anyhow::Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for link in kernel.links().await? {
        let addresses = kernel.addresses(link.index).await?;
        let addresses = addresses.into_iter().filter(|a| a.is_ipv6() == v6 && is_global(a.ip())).collect();
        let mtu = if link.mtu == 0 { 1500 } else { link.mtu };
        out.push(Candidate { index: link.index, name: link.name, up: link.up, mtu, addresses });
    }
    out.sort_by_key(|c| c.index);
    Ok(out)
}

/// The subnets of every interface that is up (its device routes), global addresses only.
pub async fn device_routes(kernel: &dyn Kernel) -> anyhow::Result<Vec<(String, IpNetwork)>> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        for c in candidates(kernel, v6).await?.into_iter().filter(|c| c.up) {
            for address in c.addresses {
                let subnet = IpNetwork::new(address.network(), address.prefix()).expect("a network of the address");
                out.push((c.name.clone(), subnet));
            }
        }
    }
    Ok(out)
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Detects the node's address of one family. `internal_ips` are the Kubernetes Node's InternalIP
/// addresses, which [`Method::KubernetesInternalIp`] looks for on this host's interfaces.
pub async fn detect(
    kernel: &dyn Kernel,
    method: &Method,
    v6: bool,
    internal_ips: &[IpAddr],
) -> anyhow::Result<Detected> {
    let all = candidates(kernel, v6).await?;
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
        Method::KubernetesInternalIp => {
            let wanted: Vec<IpAddr> = internal_ips.iter().copied().filter(|ip| ip.is_ipv6() == v6).collect();
            if wanted.is_empty() {
                anyhow::bail!(
                    "kubernetes-internal-ip: the Kubernetes Node has no {} InternalIP (kubelet's --node-ip sets it)",
                    if v6 { "IPv6" } else { "IPv4" }
                );
            }
            let found = all.iter().find_map(|c| {
                c.addresses.iter().find(|a| wanted.contains(&a.ip())).map(|a| {
                    pick(c, *a, format!("kubernetes-internal-ip: the Node's InternalIP {} is on {}", a.ip(), c.name))
                })
            });
            let on_no_interface = || {
                let list: Vec<String> = wanted.iter().map(ToString::to_string).collect();
                anyhow::anyhow!(
                    "kubernetes-internal-ip: the Node's InternalIP {} is on no interface here",
                    list.join(", ")
                )
            };
            return found.ok_or_else(on_no_interface);
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
        assert_eq!("kubernetes-internal-ip".parse(), Ok(Method::KubernetesInternalIp));
        assert!("skip".parse::<Method>().unwrap_err().contains("first-found"));
        assert!("cidr=10.0.0.0/33".parse::<Method>().is_err());
        assert!(name_matches("ens*", "ens3") && !name_matches("ens*", "eth0") && name_matches("eth0", "eth0"));
    }

    #[test]
    fn first_found_skips_pods_tunnels_and_link_local_addresses() {
        use brindle_kernel::fake::FakeKernel;
        let kernel = FakeKernel::new();
        let lo = kernel.add_link("lo", 65536);
        let pod = kernel.add_link("brin0123456789a", 1500);
        let eth0 = kernel.add_link("eth0", 9000);
        let eth1 = kernel.add_link("eth1", 1500);
        let mut state = kernel.state();
        state.addresses.insert(lo, ["127.0.0.1/8".parse().unwrap()].into());
        state.addresses.insert(pod, ["10.244.0.1/32".parse().unwrap()].into());
        state.addresses.insert(eth0, ["169.254.3.3/16".parse().unwrap(), "10.0.0.5/24".parse().unwrap()].into());
        state.addresses.insert(eth1, ["192.168.9.2/24".parse().unwrap()].into());
        drop(state);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let found = runtime.block_on(detect(&kernel, &Method::FirstFound, false, &[])).unwrap();
        assert_eq!(
            (found.address, found.interface.as_str(), found.mtu),
            ("10.0.0.5/24".parse().unwrap(), "eth0", 9000)
        );
        let by_cidr = runtime.block_on(detect(&kernel, &"cidr=192.168.0.0/16".parse().unwrap(), false, &[])).unwrap();
        assert_eq!(by_cidr.interface, "eth1");
        let error = runtime.block_on(detect(&kernel, &Method::FirstFound, true, &[])).unwrap_err().to_string();
        assert!(error.contains("no IPv6 address"), "{error}");

        // The Node's InternalIP, wherever it is, with its interface's prefix length.
        let internal = ["fd00::9".parse().unwrap(), "192.168.9.2".parse().unwrap()];
        let by_node = runtime.block_on(detect(&kernel, &Method::KubernetesInternalIp, false, &internal)).unwrap();
        assert_eq!((by_node.address, by_node.interface.as_str()), ("192.168.9.2/24".parse().unwrap(), "eth1"));
        let elsewhere = ["192.168.77.1".parse().unwrap()];
        let error = runtime
            .block_on(detect(&kernel, &Method::KubernetesInternalIp, false, &elsewhere))
            .unwrap_err()
            .to_string();
        assert!(error.contains("InternalIP 192.168.77.1 is on no interface here"), "{error}");
        let error =
            runtime.block_on(detect(&kernel, &Method::KubernetesInternalIp, true, &elsewhere)).unwrap_err().to_string();
        assert!(error.contains("has no IPv6 InternalIP"), "{error}");
    }
}

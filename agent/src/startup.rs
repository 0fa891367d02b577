//! Start-up: the node's Node resource (addresses and why, VXLAN MAC and tunnel address), the
//! MTU for pods, and the files the CNI plugin reads.

use std::net::IpAddr;
use std::path::Path;

use brindle_datastore::Client;
use brindle_datastore::ipam::Ipam;
use brindle_datastore::resource::{EncapMode, IpPool, Node, NodeAddress, NodeBgp, Resource};
use sha1::{Digest, Sha1};

use crate::autodetect::Detected;

/// The MAC of a node's VXLAN device of a family: derived from its name (and the family), so
/// it survives restarts and re-creation of the device; locally administered, unicast.
pub fn vxlan_mac(node: &str, ipv6: bool) -> [u8; 6] {
    let digest = if ipv6 { Sha1::digest(format!("{node}/v6").as_bytes()) } else { Sha1::digest(node.as_bytes()) };
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// This node's WireGuard key pair: the private key kept in `file` (made by `wg genkey` when
/// the file is missing: a new key pair; mode 0600, it never leaves the node) and the public
/// key, which is returned.
pub fn wireguard_key(kernel: &dyn brindle_kernel::Kernel, file: &Path) -> anyhow::Result<String> {
    let private = match std::fs::read_to_string(file) {
        Ok(key) => key,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let made = kernel.run("wg", &["genkey"], None)?;
            anyhow::ensure!(made.success, "wg genkey: {}", made.stderr.trim());
            publish(file, &made.stdout)?;
            tracing::warn!(file = %file.display(), "made a new WireGuard key pair");
            made.stdout
        }
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", file.display())),
    };
    let public = kernel.run("wg", &["pubkey"], Some(&private))?;
    anyhow::ensure!(public.success, "wg pubkey of {}: {}", file.display(), public.stderr.trim());
    let key = public.stdout.trim().to_owned();
    anyhow::ensure!(brindle_datastore::resource::is_wireguard_key(&key), "wg pubkey printed {key:?}, not a key");
    Ok(key)
}

/// Creates or updates the Node with what was detected and its WireGuard public keys, IPv4
/// and IPv6 (none for a family while its WireGuard is off, so that no node encrypts to it).
/// Compare-and-swap, retried.
pub async fn register(
    client: &Client,
    name: &str,
    v4: Option<&Detected>,
    v6: Option<&Detected>,
    wireguard_public_keys: [Option<String>; 2],
) -> anyhow::Result<()> {
    for _ in 0..10 {
        let existing = client.find::<Node>(None, name).await?;
        let mut node = existing.clone().unwrap_or_else(|| Resource::new(name, Node::default()));
        let bgp = node.spec.bgp.get_or_insert_with(NodeBgp::default);
        bgp.ipv4_address = v4.map(|d| d.address);
        bgp.ipv6_address = v6.map(|d| d.address);
        node.spec.addresses = [v4, v6]
            .into_iter()
            .flatten()
            .map(|d| NodeAddress { address: d.address.ip(), kind: "InternalIP".into() })
            .collect();
        node.spec.vxlan_tunnel_mac_addr = Some(brindle_kernel::format_mac(&vxlan_mac(name, false)));
        node.spec.vxlan_tunnel_mac_addr_v6 = v6.map(|_| brindle_kernel::format_mac(&vxlan_mac(name, true)));
        [node.spec.wireguard_public_key, node.spec.wireguard_public_key_v6] = wireguard_public_keys.clone();
        // Why these addresses, for whoever wonders later (`brindlectl get node -o yaml`).
        for (key, detected) in [("brindle.io/ipv4-detection", v4), ("brindle.io/ipv6-detection", v6)] {
            match detected {
                Some(d) => node
                    .metadata
                    .annotations
                    .insert(key.into(), format!("{} on {}: {}", d.address, d.interface, d.reason)),
                None => node.metadata.annotations.remove(key),
            };
        }
        if existing.as_ref().is_some_and(|e| e.spec == node.spec && e.metadata.annotations == node.metadata.annotations)
        {
            return Ok(());
        }
        let written = match existing {
            None => client.create(node).await.map(drop),
            Some(_) => client.update(node).await.map(drop),
        };
        match written {
            Ok(()) => {
                tracing::info!(node = name, "registered the node");
                return Ok(());
            }
            Err(brindle_datastore::Error::Conflict { .. } | brindle_datastore::Error::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not register node {name}: too many concurrent changes")
}

/// Gives the node a tunnel address of a family (from IPAM), recorded in its Node: IPv4's
/// serves its VXLAN device and `tunl0`, IPv6's its IPv6 VXLAN device. Returns the address.
pub async fn ensure_tunnel_address(client: &Client, ipam: &Ipam, name: &str, ipv6: bool) -> anyhow::Result<IpAddr> {
    let ip = ipam.tunnel_address(name, ipv6).await?.ip;
    anyhow::ensure!(ip.is_ipv6() == ipv6, "IPAM gave {ip} as a tunnel address of the other family");
    for _ in 0..10 {
        let mut node = client.get::<Node>(None, name).await?;
        if node.spec.vxlan_tunnel_addr(ipv6) == Some(ip)
            && (ipv6 || node.spec.bgp.as_ref().and_then(|b| b.ipv4_ipip_tunnel_addr).map(IpAddr::V4) == Some(ip))
        {
            return Ok(ip);
        }
        match ip {
            IpAddr::V4(v4) => {
                // One tunnel address serves both devices.
                node.spec.bgp.get_or_insert_with(NodeBgp::default).ipv4_ipip_tunnel_addr = Some(v4);
                node.spec.ipv4_vxlan_tunnel_addr = Some(v4);
            }
            IpAddr::V6(v6) => node.spec.ipv6_vxlan_tunnel_addr = Some(v6),
        }
        match client.update(node).await {
            Ok(_) => {
                tracing::info!(%ip, "tunnel address assigned");
                return Ok(ip);
            }
            Err(brindle_datastore::Error::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not record the tunnel address of node {name}")
}

/// Whether this node needs a tunnel address of a family it lacks: a pool of the family
/// encapsulates (IP-in-IP only where the kernel has it), or the family's WireGuard is on (the
/// device's address, the source of the node's own traffic to pods), and its Node records none.
pub fn needs_tunnel_address(cluster: &crate::calc::Cluster, name: &str, tunnels: Tunnelling, ipv6: bool) -> bool {
    let Tunnelling { ipip_supported, wireguard } = tunnels;
    let encapsulates = wireguard[usize::from(ipv6)]
        || cluster.pools.iter().any(|p| {
            !p.spec.disabled
                && p.spec.cidr.is_ipv6() == ipv6
                && (p.spec.vxlan_mode != EncapMode::Never || (ipip_supported && p.spec.ipip_mode != EncapMode::Never))
        });
    let has = cluster.nodes.iter().any(|n| n.metadata.name == name && n.spec.vxlan_tunnel_addr(ipv6).is_some());
    encapsulates && !has
}

/// What this node can tunnel through, besides VXLAN.
#[derive(Debug, Clone, Copy)]
pub struct Tunnelling {
    /// The kernel has IP-in-IP.
    pub ipip_supported: bool,
    /// WireGuard is on, per family (IPv4, IPv6).
    pub wireguard: [bool; 2],
}

/// Keeps this node's tunnel addresses, beside the agent's passes: whenever the cluster needs
/// one of a family ([`needs_tunnel_address`]), it is assigned and recorded on the Node, and
/// the passes read it back from the Node like any other fact. Failures are retried every
/// second.
pub async fn keep_tunnel_address(
    client: Client,
    ipam: Ipam,
    name: String,
    tunnels: Tunnelling,
    mut cluster: tokio::sync::watch::Receiver<crate::syncer::Published>,
    metrics: std::sync::Arc<crate::status::Metrics>,
) {
    loop {
        let needed: Vec<bool> = match cluster.borrow_and_update().as_ref() {
            Some(c) => [false, true].into_iter().filter(|v6| needs_tunnel_address(c, &name, tunnels, *v6)).collect(),
            None => Vec::new(),
        };
        let mut failed = false;
        for ipv6 in needed {
            if let Err(e) = ensure_tunnel_address(&client, &ipam, &name, ipv6).await {
                metrics.error("datastore");
                tracing::warn!(error = %e, ipv6, "no tunnel address yet; trying again in a second");
                failed = true;
            }
        }
        if failed {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        if cluster.changed().await.is_err() {
            return;
        }
    }
}

/// The pools the agents create when a cluster has none, from the environment as Calico's
/// `CALICO_IPV4POOL_*` are read: `BRINDLE_IPV4POOL_CIDR` (and `_VXLAN`, `_IPIP`: `Always`,
/// `CrossSubnet` or `Never`; `_NAT_OUTGOING`: `true` unless `false`), and the same for
/// `BRINDLE_IPV6POOL_`. Errors name the variable.
pub fn default_pools(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<Resource<IpPool>>> {
    let mut pools = Vec::new();
    for (family, name) in [("IPV4", "default-ipv4-ippool"), ("IPV6", "default-ipv6-ippool")] {
        let key = |field: &str| format!("BRINDLE_{family}POOL_{field}");
        let Some(cidr) = var(&key("CIDR")).filter(|c| !c.is_empty()) else { continue };
        let mut pool = IpPool::new(cidr.parse().map_err(|e| anyhow::anyhow!("{}: {cidr:?}: {e}", key("CIDR")))?);
        for (field, mode) in [("VXLAN", &mut pool.vxlan_mode), ("IPIP", &mut pool.ipip_mode)] {
            if let Some(text) = var(&key(field)).filter(|t| !t.is_empty()) {
                *mode = serde_json::from_value(serde_json::Value::String(text.clone()))
                    .map_err(|_| anyhow::anyhow!("{}: {text:?} is not Always, CrossSubnet or Never", key(field)))?;
            }
        }
        pool.nat_outgoing = var(&key("NAT_OUTGOING")).is_none_or(|t| t != "false");
        pools.push(Resource::new(name, pool));
    }
    Ok(pools)
}

/// Creates `pools` if the cluster has no pool at all (the first agent to start does; the
/// others find it there).
pub async fn ensure_default_pools(client: &Client, pools: Vec<Resource<IpPool>>) -> anyhow::Result<()> {
    if pools.is_empty() || !client.list::<IpPool>().await?.0.is_empty() {
        return Ok(());
    }
    for pool in pools {
        let name = pool.metadata.name.clone();
        match client.create(pool).await {
            Ok(created) => tracing::warn!(pool = %name, cidr = %created.spec.cidr, "created the default IP pool"),
            // Another agent was first, or made an overlapping one: either way a pool is there.
            Err(brindle_datastore::Error::AlreadyExists(_) | brindle_datastore::Error::Validation(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The kubeconfig the CNI plugin on the host reaches the API server with: this agent's
/// service account (its current token and CA from `service_account`, the API server from
/// `KUBERNETES_SERVICE_HOST`/`_PORT`). `None` outside a pod.
pub fn cni_kubeconfig(service_account: &Path, var: impl Fn(&str) -> Option<String>) -> Option<String> {
    use base64::Engine;
    let token = std::fs::read_to_string(service_account.join("token")).ok()?;
    let ca = std::fs::read(service_account.join("ca.crt")).ok()?;
    let host = var("KUBERNETES_SERVICE_HOST")?;
    let port = var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    Some(format!(
        "# Written by brindle-node for the brindle CNI plugin; rewritten when its token rotates.\n\
         apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://{host}:{port}\n    \
         certificate-authority-data: {}\nusers:\n- name: brindle\n  user:\n    token: {}\n\
         contexts:\n- name: brindle\n  context: {{cluster: local, user: brindle}}\ncurrent-context: brindle\n",
        base64::engine::general_purpose::STANDARD.encode(ca),
        token.trim()
    ))
}

/// Writes a file atomically (temporary file, fsync, rename), only when its content differs.
pub fn publish(path: &Path, content: &str) -> anyhow::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, content.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| anyhow::anyhow!("writing {}: {}", path.display(), e.error))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_address_is_needed_only_by_an_encapsulating_pool_of_its_family_and_only_once() {
        let mut cluster = crate::fixtures::cluster(true);
        let plain = |ipip_supported| Tunnelling { ipip_supported, wireguard: [false; 2] };
        let needs =
            |c: &crate::calc::Cluster, node: &str, ipip: bool| needs_tunnel_address(c, node, plain(ipip), false);
        let v4_only = Tunnelling { ipip_supported: false, wireguard: [true, false] };
        assert!(needs_tunnel_address(&cluster, "a", v4_only, false));
        assert!(!needs_tunnel_address(&cluster, "a", v4_only, true));
        let v6_too = Tunnelling { ipip_supported: false, wireguard: [true, true] };
        assert!(needs_tunnel_address(&cluster, "a", v6_too, true));
        assert!(!needs(&cluster, "a", true), "the pool does not encapsulate");
        cluster.pools[0].spec.ipip_mode = EncapMode::Always;
        assert!(needs(&cluster, "a", true));
        assert!(!needs(&cluster, "a", false), "no ipip module: no IP-in-IP to carry");
        cluster.pools[0].spec.vxlan_mode = EncapMode::CrossSubnet;
        assert!(needs(&cluster, "a", false));
        assert!(!needs_tunnel_address(&cluster, "a", plain(true), true), "no IPv6 pool encapsulates");
        cluster.nodes[0].spec.ipv4_vxlan_tunnel_addr = Some("10.244.0.0".parse().unwrap());
        assert!(!needs(&cluster, "a", true), "node a has one");
        assert!(needs(&cluster, "b", true));
        let mut v6 = IpPool::new("fd00:244::/56".parse().unwrap());
        v6.vxlan_mode = EncapMode::Always;
        cluster.pools.push(Resource::new("v6", v6));
        assert!(needs_tunnel_address(&cluster, "a", plain(true), true), "an IPv6 VXLAN pool needs an IPv6 address");
        cluster.nodes[0].spec.ipv6_vxlan_tunnel_addr = Some("fd00:244::".parse().unwrap());
        assert!(!needs_tunnel_address(&cluster, "a", plain(true), true));
    }

    #[test]
    fn default_pools_come_from_the_environment_and_errors_name_the_variable() {
        let env = |pairs: &'static [(&str, &str)]| {
            move |k: &str| pairs.iter().find(|(name, _)| *name == k).map(|(_, v)| (*v).to_owned())
        };
        assert!(default_pools(env(&[])).unwrap().is_empty());
        let pools = default_pools(env(&[
            ("BRINDLE_IPV4POOL_CIDR", "10.244.0.0/16"),
            ("BRINDLE_IPV4POOL_VXLAN", "CrossSubnet"),
            ("BRINDLE_IPV6POOL_CIDR", "fd00:244::/56"),
            ("BRINDLE_IPV6POOL_NAT_OUTGOING", "false"),
        ]))
        .unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(
            (pools[0].metadata.name.as_str(), pools[0].spec.vxlan_mode),
            ("default-ipv4-ippool", EncapMode::CrossSubnet)
        );
        assert!(pools[0].spec.nat_outgoing && !pools[1].spec.nat_outgoing);
        let err =
            default_pools(env(&[("BRINDLE_IPV4POOL_CIDR", "10.0.0.0/8"), ("BRINDLE_IPV4POOL_IPIP", "sometimes")]));
        assert!(err.unwrap_err().to_string().contains("BRINDLE_IPV4POOL_IPIP"));
        assert!(default_pools(env(&[("BRINDLE_IPV4POOL_CIDR", "ten")])).unwrap_err().to_string().contains("_CIDR"));
    }

    #[test]
    fn the_cni_kubeconfig_carries_the_service_accounts_token_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "tok-1\n").unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA").unwrap();
        let var = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".to_owned()),
            _ => None,
        };
        let text = cni_kubeconfig(dir.path(), var).unwrap();
        assert!(text.contains("server: https://10.96.0.1:443") && text.contains("token: tok-1\n"), "{text}");
        assert!(text.contains("certificate-authority-data: Q0E="), "{text}");
        assert!(cni_kubeconfig(dir.path(), |_| None).is_none(), "outside a pod");
    }

    #[test]
    fn vxlan_macs_are_stable_unicast_and_local() {
        let mac = vxlan_mac("node-1", false);
        assert_eq!(mac, vxlan_mac("node-1", false));
        assert_ne!(mac, vxlan_mac("node-2", false));
        assert_ne!(mac, vxlan_mac("node-1", true), "each family's device has its own");
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    }
}

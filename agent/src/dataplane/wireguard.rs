//! WireGuard, per family: the device made with rtnetlink, its key, port, mark and peers set
//! with `wg syncconf` (which adds, changes and removes peers to match, leaving live sessions
//! of unchanged peers alone), its tunnel address and MTU with rtnetlink, and the rule that
//! sends every packet without the device's mark to WireGuard's table ahead of the main one
//! (the table's routes are synced by the routes driver). All of it removed when the family's
//! WireGuard is turned off.

use brindle_kernel::{Kernel, Rule, names};
use ipnetwork::IpNetwork;

use crate::calc::WireguardDevice;

/// What [`ensure`] left, for the next pass to diff against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The device's name.
    pub interface: String,
    /// The `wg` configuration it has.
    pub config: String,
}

/// The configuration `wg syncconf` takes for `want`, with this node's private key.
pub fn config(want: &WireguardDevice, private_key: &str) -> String {
    let mut text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {}\nFwMark = {:#x}\n",
        private_key.trim(),
        want.settings.port,
        want.settings.mark
    );
    for peer in &want.peers {
        let allowed: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
        text += &format!("\n[Peer]\nPublicKey = {}\nEndpoint = {}\n", peer.public_key, peer.endpoint);
        if !allowed.is_empty() {
            text += &format!("AllowedIPs = {}\n", allowed.join(", "));
        }
    }
    text
}

/// The rule `want` needs: packets without the device's mark (all but its own encrypted ones)
/// look up its table first.
pub fn rule(want: &WireguardDevice) -> Rule {
    let settings = &want.settings;
    Rule {
        ipv6: settings.ipv6,
        priority: settings.rule_priority,
        mark: settings.mark,
        mask: settings.mark,
        invert: true,
        table: settings.table,
    }
}

/// Makes the device and its rule match `want`: the device created if missing, configured
/// when `last` (what an earlier pass applied, if it still stands) differs, with its address,
/// up; the rule the only one of ours of its family. Returns what it applied and how many
/// things changed.
pub async fn ensure(
    kernel: &dyn Kernel,
    want: &WireguardDevice,
    last: Option<Applied>,
) -> anyhow::Result<(Applied, usize)> {
    let name = want.settings.interface.as_str();
    let file = &want.settings.private_key_file;
    let private_key = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading the WireGuard private key {}: {e}", file.display()))?;
    let find = || async { anyhow::Ok(kernel.links().await?.into_iter().find(|l| l.name == name)) };
    let mut changes = 0;
    let mut last = last.filter(|l| l.interface == name);
    let link = match find().await? {
        Some(link) => link,
        None => {
            kernel.add_wireguard(name).await?;
            changes += 1;
            last = None;
            find().await?.ok_or_else(|| anyhow::anyhow!("{name} vanished right after it was made"))?
        }
    };
    let wanted = config(want, &private_key);
    if last.as_ref().is_none_or(|l| l.config != wanted) {
        let out = kernel.run("wg", &["syncconf", name, "/proc/self/fd/0"], Some(&wanted))?;
        anyhow::ensure!(out.success, "wg syncconf {name}: {}", out.stderr.trim());
        changes += 1;
    }
    if let Some(address) = want.address
        && !kernel.addresses(link.index).await?.iter().any(|a| a.ip() == address)
    {
        kernel.add_address(link.index, IpNetwork::new(address, if address.is_ipv6() { 128 } else { 32 })?).await?;
        changes += 1;
    }
    changes += usize::from(!link.up || link.mtu != want.settings.mtu);
    kernel.set_up(link.index, want.settings.mtu).await?;

    let rule = rule(want);
    let ours: Vec<Rule> = kernel.rules().await?.into_iter().filter(|r| r.ipv6 == rule.ipv6).collect();
    for stale in ours.iter().filter(|r| **r != rule) {
        kernel.delete_rule(stale).await?;
        changes += 1;
    }
    if !ours.contains(&rule) {
        kernel.add_rule(&rule).await?;
        changes += 1;
    }
    Ok((Applied { interface: name.to_owned(), config: wanted }, changes))
}

/// The device as the kernel has it against `want`, for the status socket: its public key and
/// port, and each peer with its node, endpoint, allowed IPs, last handshake (seconds since
/// the epoch, 0 for never) and bytes received and sent, from `wg show <device> dump`.
pub fn report(kernel: &dyn Kernel, want: &WireguardDevice) -> serde_json::Value {
    let name = want.settings.interface.as_str();
    let dump = match kernel.run("wg", &["show", name, "dump"], None) {
        Ok(out) if out.success => out.stdout,
        Ok(out) => return serde_json::json!({ "interface": name, "error": out.stderr.trim() }),
        Err(e) => return serde_json::json!({ "interface": name, "error": e.to_string() }),
    };
    let mut lines = dump.lines().map(|l| l.split('\t').collect::<Vec<_>>());
    let device = lines.next().unwrap_or_default();
    let live: Vec<Vec<&str>> = lines.collect();
    let peers: Vec<serde_json::Value> = want
        .peers
        .iter()
        .map(|peer| {
            let seen = live.iter().find(|f| f.first() == Some(&peer.public_key.as_str()));
            let field = |i: usize| seen.and_then(|f| f.get(i)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            serde_json::json!({
                "node": peer.node,
                "publicKey": peer.public_key,
                "endpoint": peer.endpoint.to_string(),
                "allowedIps": peer.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "configured": seen.is_some(),
                "latestHandshake": field(4),
                "received": field(5),
                "sent": field(6),
            })
        })
        .collect();
    serde_json::json!({
        "interface": name,
        "publicKey": device.get(1).copied().unwrap_or_default(),
        "port": want.settings.port,
        "rule": rule(want).to_string(),
        "peers": peers,
    })
}

/// Removes what a family's WireGuard made (turned off, now or before this agent started): our
/// rules of the family (WireGuard's are the only rules brindle makes), our routes of the
/// family in the tables they name, and the device `name`. Returns how many things went.
pub async fn remove(kernel: &dyn Kernel, name: &str, ipv6: bool) -> anyhow::Result<usize> {
    let mut removed = 0;
    for rule in kernel.rules().await?.into_iter().filter(|r| r.ipv6 == ipv6) {
        kernel.delete_rule(&rule).await?;
        removed += 1;
        if rule.table != names::MAIN_TABLE {
            let ours: Vec<_> = kernel
                .routes(rule.table, Some(names::ROUTE_PROTOCOL))
                .await?
                .into_iter()
                .filter(|r| r.dst.is_ipv6() == ipv6)
                .collect();
            removed += ours.len();
            let failures =
                kernel.change_routes(ours.into_iter().map(brindle_kernel::RouteChange::Remove).collect()).await;
            if let Some(first) = failures.first() {
                anyhow::bail!("removing WireGuard's routes: {first}");
            }
        }
    }
    removed += usize::from(kernel.delete_link(name).await?);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use brindle_kernel::fake::FakeKernel;
    use brindle_kernel::{Output, Route};

    use super::*;
    use crate::calc::{Target, WireguardPeer, WireguardSettings};

    fn device(dir: &std::path::Path) -> WireguardDevice {
        std::fs::write(dir.join("key"), "cHJpdmF0ZQ==\n").unwrap();
        WireguardDevice {
            settings: WireguardSettings {
                ipv6: false,
                interface: "wg.brindle".into(),
                port: 51820,
                mtu: 1440,
                private_key_file: dir.join("key"),
                table: 1,
                rule_priority: 99,
                mark: 0x100000,
            },
            address: Some("10.244.0.0".parse().unwrap()),
            peers: vec![WireguardPeer {
                node: "b".into(),
                public_key: "cGVlcg==".into(),
                endpoint: "10.0.0.2:51820".parse().unwrap(),
                allowed_ips: vec!["10.244.1.0/26".parse().unwrap(), "10.244.9.3/32".parse().unwrap()],
            }],
            routes: [
                ("10.244.1.0/26".parse().unwrap(), Target::Wireguard { interface: "wg.brindle".into() }),
                ("10.244.9.3/32".parse().unwrap(), Target::Wireguard { interface: "wg.brindle".into() }),
            ]
            .into(),
        }
    }

    #[test]
    fn the_device_and_its_rule_are_made_once_and_changed_only_where_they_differ() {
        let dir = tempfile::tempdir().unwrap();
        let given = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&given);
        let kernel = FakeKernel::new().with_programs(move |program, args, stdin| {
            seen.lock().unwrap().push(format!("{program} {} <<{}", args.join(" "), stdin.unwrap_or_default()));
            Output { success: true, ..Output::default() }
        });
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let want = device(dir.path());
        let (applied, changes) = runtime.block_on(ensure(&kernel, &want, None)).unwrap();
        assert!(changes > 0);
        assert_eq!(
            applied.config,
            "[Interface]\nPrivateKey = cHJpdmF0ZQ==\nListenPort = 51820\nFwMark = 0x100000\n\n[Peer]\n\
             PublicKey = cGVlcg==\nEndpoint = 10.0.0.2:51820\nAllowedIPs = 10.244.1.0/26, 10.244.9.3/32\n"
        );
        assert_eq!(given.lock().unwrap().len(), 1);
        assert!(given.lock().unwrap()[0].starts_with("wg syncconf wg.brindle /proc/self/fd/0 <<[Interface]"));
        let log = kernel.take_log();
        assert_eq!(log[0], "link add wg.brindle type wireguard");
        for line in [
            "address add 10.244.0.0/32 dev 1",
            "link set wg.brindle up mtu 1440",
            "rule add 99: not from all fwmark 0x100000/0x100000 lookup 1",
        ] {
            assert!(log.contains(&line.to_owned()), "{line} in {log:#?}");
        }
        // Nothing changed: no `wg`, nothing logged.
        let (applied, changes) = runtime.block_on(ensure(&kernel, &want, Some(applied))).unwrap();
        assert_eq!((changes, kernel.take_log()), (0, Vec::<String>::new()));
        let (_, changes) = runtime.block_on(ensure(&kernel, &want, None)).unwrap();
        assert_eq!(changes, 1, "wg is run again when what it has is unknown");
        // A peer gone: configured again.
        let alone = WireguardDevice { peers: Vec::new(), ..want.clone() };
        let (applied, changes) = runtime.block_on(ensure(&kernel, &alone, Some(applied))).unwrap();
        assert!(changes == 1 && !applied.config.contains("[Peer]"), "{:?}", kernel.take_log());
        // Turned off, with a throw left in the table: rule, throw and device go; another
        // family's rule and routes stay.
        kernel.add_route(Route::throw("10.244.1.7/32".parse().unwrap()).in_table(1));
        let v6_rule = Rule { ipv6: true, ..rule(&want) };
        runtime.block_on(kernel.add_rule(&v6_rule)).unwrap();
        kernel.add_route(Route::throw("fd00:244::7/128".parse().unwrap()).in_table(1));
        assert_eq!(runtime.block_on(remove(&kernel, "wg.brindle", false)).unwrap(), 3);
        let state = kernel.state();
        assert_eq!(state.rules.iter().collect::<Vec<_>>(), [&v6_rule]);
        assert_eq!(state.routes.len(), 1, "{:?}", state.routes);
        assert!(state.links.values().all(|l| l.name != "wg.brindle"));
    }

    #[test]
    fn the_report_joins_what_wg_shows_to_the_peers_wanted() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::new().with_programs(|_, _, _| Output {
            success: true,
            stdout: "cHJpdmF0ZQ==\tbXlrZXk=\t51820\toff\ncGVlcg==\t(none)\t10.0.0.2:51820\t10.244.1.0/26\t1796200000\t1200\t3400\toff\n"
                .into(),
            ..Output::default()
        });
        let shown = report(&kernel, &device(dir.path()));
        assert_eq!(shown["publicKey"], "bXlrZXk=");
        let peer = &shown["peers"][0];
        assert_eq!((peer["node"].as_str(), peer["configured"].as_bool()), (Some("b"), Some(true)));
        assert_eq!(
            (peer["latestHandshake"].as_u64(), peer["received"].as_u64(), peer["sent"].as_u64()),
            (Some(1796200000), Some(1200), Some(3400))
        );
    }

    #[test]
    fn a_missing_key_or_a_refusing_wg_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let want = device(dir.path());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let kernel = FakeKernel::new().with_programs(|_, _, _| Output {
            success: false,
            stderr: "Unable to modify interface: Protocol not supported".into(),
            ..Output::default()
        });
        let error = runtime.block_on(ensure(&kernel, &want, None)).unwrap_err().to_string();
        assert!(error.contains("wg syncconf wg.brindle: Unable to modify"), "{error}");
        std::fs::remove_file(dir.path().join("key")).unwrap();
        let error = runtime.block_on(ensure(&kernel, &want, None)).unwrap_err().to_string();
        assert!(error.contains("reading the WireGuard private key"), "{error}");
    }
}

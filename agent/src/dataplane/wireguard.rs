//! The WireGuard device: made with rtnetlink, its key, port and peers set with `wg syncconf`
//! (which adds, changes and removes peers to match, leaving live sessions of unchanged peers
//! alone), its tunnel address and MTU with rtnetlink; removed when WireGuard is turned off.

use std::net::IpAddr;

use brindle_kernel::Kernel;
use ipnetwork::IpNetwork;

use crate::calc::WireguardDevice;

/// The configuration `wg syncconf` takes for `want`, with this node's private key.
pub fn config(want: &WireguardDevice, private_key: &str) -> String {
    let mut text = format!("[Interface]\nPrivateKey = {}\nListenPort = {}\n", private_key.trim(), want.settings.port);
    for peer in &want.peers {
        let allowed: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
        text += &format!("\n[Peer]\nPublicKey = {}\nEndpoint = {}\n", peer.public_key, peer.endpoint);
        if !allowed.is_empty() {
            text += &format!("AllowedIPs = {}\n", allowed.join(", "));
        }
    }
    text
}

/// Makes the device match `want`: created if missing, configured when `last` (what was
/// applied before, if anything) differs from its configuration, with its address, up.
/// Returns the configuration applied and whether anything changed.
pub async fn ensure(kernel: &dyn Kernel, want: &WireguardDevice, last: Option<&str>) -> anyhow::Result<(String, bool)> {
    let name = want.settings.interface.as_str();
    let file = &want.settings.private_key_file;
    let private_key = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading the WireGuard private key {}: {e}", file.display()))?;
    let find = || async { anyhow::Ok(kernel.links().await?.into_iter().find(|l| l.name == name)) };
    let mut changed = false;
    let link = match find().await? {
        Some(link) => link,
        None => {
            kernel.add_wireguard(name).await?;
            changed = true;
            find().await?.ok_or_else(|| anyhow::anyhow!("{name} vanished right after it was made"))?
        }
    };
    let wanted = config(want, &private_key);
    if changed || last != Some(wanted.as_str()) {
        let out = kernel.run("wg", &["syncconf", name, "/proc/self/fd/0"], Some(&wanted))?;
        anyhow::ensure!(out.success, "wg syncconf {name}: {}", out.stderr.trim());
        changed = true;
    }
    if let Some(address) = want.address
        && !kernel.addresses(link.index).await?.iter().any(|a| a.ip() == IpAddr::V4(address))
    {
        kernel.add_address(link.index, IpNetwork::new(address.into(), 32)?).await?;
        changed = true;
    }
    changed |= !link.up || link.mtu != want.settings.mtu;
    kernel.set_up(link.index, want.settings.mtu).await?;
    Ok((wanted, changed))
}

/// Removes the device `name` (WireGuard turned off). Returns whether it existed.
pub async fn remove(kernel: &dyn Kernel, name: &str) -> anyhow::Result<bool> {
    Ok(kernel.delete_link(name).await?)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use brindle_kernel::Output;
    use brindle_kernel::fake::FakeKernel;

    use super::*;
    use crate::calc::{WireguardPeer, WireguardSettings};

    fn device(dir: &std::path::Path) -> WireguardDevice {
        std::fs::write(dir.join("key"), "cHJpdmF0ZQ==\n").unwrap();
        WireguardDevice {
            settings: WireguardSettings {
                interface: "wg.brindle".into(),
                port: 51820,
                mtu: 1440,
                private_key_file: dir.join("key"),
            },
            address: Some("10.244.0.0".parse().unwrap()),
            peers: vec![WireguardPeer {
                public_key: "cGVlcg==".into(),
                endpoint: "10.0.0.2:51820".parse().unwrap(),
                allowed_ips: vec!["10.244.1.0/26".parse().unwrap(), "10.244.9.3/32".parse().unwrap()],
            }],
        }
    }

    #[test]
    fn the_device_is_made_and_configured_once_and_again_only_when_its_configuration_changes() {
        let dir = tempfile::tempdir().unwrap();
        let given = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&given);
        let kernel = FakeKernel::new().with_programs(move |program, args, stdin| {
            seen.lock().unwrap().push(format!("{program} {} <<{}", args.join(" "), stdin.unwrap_or_default()));
            Output { success: true, ..Output::default() }
        });
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let want = device(dir.path());
        let (applied, changed) = runtime.block_on(ensure(&kernel, &want, None)).unwrap();
        assert!(changed);
        assert_eq!(
            applied,
            "[Interface]\nPrivateKey = cHJpdmF0ZQ==\nListenPort = 51820\n\n[Peer]\nPublicKey = cGVlcg==\n\
             Endpoint = 10.0.0.2:51820\nAllowedIPs = 10.244.1.0/26, 10.244.9.3/32\n"
        );
        assert_eq!(given.lock().unwrap().len(), 1);
        assert!(given.lock().unwrap()[0].starts_with("wg syncconf wg.brindle /proc/self/fd/0 <<[Interface]"));
        let log = kernel.take_log();
        assert!(
            log[0] == "link add wg.brindle type wireguard" && log.contains(&"link set wg.brindle up mtu 1440".into())
        );
        // Nothing changed: no `wg`, nothing logged.
        let (_, changed) = runtime.block_on(ensure(&kernel, &want, Some(&applied))).unwrap();
        assert!(!changed && kernel.take_log().is_empty());
        assert_eq!(given.lock().unwrap().len(), 1);
        // A peer gone: configured again.
        let alone = WireguardDevice { peers: Vec::new(), ..want };
        let (applied, changed) = runtime.block_on(ensure(&kernel, &alone, Some(&applied))).unwrap();
        assert!(changed && !applied.contains("[Peer]"));
        assert!(runtime.block_on(remove(&kernel, "wg.brindle")).unwrap());
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

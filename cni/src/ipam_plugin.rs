//! The IPAM plugin, `brindle-ipam`: block IPAM for any main plugin (ptp, bridge, ...).

use serde_json::Value;

use crate::annotations;
use crate::env::Command;
use crate::error::{Error, Result};
use crate::ipam::{self, Store};
use crate::skel::Invocation;
use crate::version::Version;

/// Handles one call of the IPAM plugin.
pub async fn handle(inv: &Invocation) -> Result<Option<Value>> {
    let conf = &inv.conf;
    let request = &inv.request;
    let settings = conf.brindle_ipam()?;
    match request.command {
        Command::Add => {
            conf.validate_for_attachment()?;
            let node = conf.node_name()?;
            let store = Store::connect(conf).await?;
            let pod = annotations::view(store.kubernetes.as_ref(), &request.pod).await?;
            let result = store.add(conf, &settings, ipam::holder(conf, request, &node), &pod.addresses).await?;
            Ok(Some(inv.print(&result)))
        }
        Command::Del => {
            conf.validate_for_attachment()?;
            let store = Store::connect(conf).await?;
            // The previous result names the addresses: release them without a scan.
            let known = conf.prev_result()?.map(|r| r.addresses()).unwrap_or_default();
            store.release(&ipam::handle(&conf.name, &request.container_id), &known).await?;
            Ok(None)
        }
        Command::Check => {
            inv.require(Version::CHECK, "CHECK")?;
            conf.validate_for_attachment()?;
            let prev = conf.prev_result()?.ok_or_else(|| Error::InvalidConfig("CHECK needs prevResult".into()))?;
            let store = Store::connect(conf).await?;
            let problems = store.check(&ipam::handle(&conf.name, &request.container_id), &prev.addresses()).await?;
            if problems.is_empty() { Ok(None) } else { Err(Error::CheckFailed(problems.join("; "))) }
        }
        Command::Gc => {
            inv.require(Version::GC, "GC")?;
            conf.validate_for_attachment()?;
            let store = Store::connect(conf).await?;
            store.gc(&conf.name, &conf.node_name()?, &conf.gc_attachments()).await?;
            Ok(None)
        }
        Command::Status => {
            inv.require(Version::GC, "STATUS")?;
            let store = Store::connect(conf).await.map_err(|e| Error::NotAvailable(e.to_string()))?;
            store.status(&settings, &conf.node_name()?).await?;
            Ok(None)
        }
        Command::Version => unreachable!("VERSION is answered before the config is read"),
    }
}

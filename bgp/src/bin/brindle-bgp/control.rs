//! The control socket: one request line (`status` or `routes`) in, one JSON document out.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use brindle_bgp::speaker::{PeerStatus, RouteInfo, Speaker};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Serves requests until the task is dropped.
pub async fn serve(path: &Path, speaker: Speaker) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let speaker = speaker.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, speaker).await {
                tracing::debug!(error = %e, "control request failed");
            }
        });
    }
}

async fn answer(stream: UnixStream, speaker: Speaker) -> anyhow::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    BufReader::new(reader).read_line(&mut line).await?;
    let reply = match line.trim() {
        "status" => status_json(&speaker.status().await?),
        "routes" => routes_json(&speaker.routes().await?),
        other => json!({ "error": format!("unknown request \"{other}\" (status or routes)") }),
    };
    writer.write_all(reply.to_string().as_bytes()).await?;
    writer.shutdown().await?;
    Ok(())
}

/// Sends one request to a running speaker and returns its JSON answer.
pub async fn request(path: &Path, what: &str) -> anyhow::Result<Value> {
    let mut stream = UnixStream::connect(path)
        .await
        .with_context(|| format!("cannot reach brindle-bgp at {} (is it running?)", path.display()))?;
    stream.write_all(format!("{what}\n").as_bytes()).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let value: Value = serde_json::from_str(&text).context("the speaker's answer is not JSON")?;
    if let Some(error) = value.get("error") {
        anyhow::bail!("the speaker says: {error}");
    }
    Ok(value)
}

fn seconds_since(t: SystemTime) -> u64 {
    t.elapsed().map_or(0, |d| d.as_secs())
}

fn status_json(peers: &[PeerStatus]) -> Value {
    let peers: Vec<Value> = peers
        .iter()
        .map(|p| {
            json!({
                "address": p.address,
                "asn": p.asn,
                "state": format!("{:?}", p.state),
                "since_seconds": seconds_since(p.since),
                "prefixes_received": p.prefixes_received,
                "prefixes_accepted": p.prefixes_accepted,
                "prefixes_advertised": p.prefixes_advertised,
                "last_error": p.last_error,
                "hold_time": p.negotiated.as_ref().map(|n| n.hold_time),
                "router_id": p.negotiated.as_ref().map(|n| n.peer_id),
                "families": p.negotiated.as_ref().map(|n| n.families.iter().map(ToString::to_string).collect::<Vec<_>>()),
                "graceful_restart": p.negotiated.as_ref().map(|n| n.peer_restart.is_some()),
                "bfd": p.bfd.map(|bfd| match bfd {
                    Some(s) => json!({
                        "state": s.state.to_string(),
                        "diagnostic": s.diagnostic.to_string(),
                        "remote_state": s.remote_state.to_string(),
                        "transmit_interval_ms": s.transmit_interval.as_millis(),
                        "detection_time_ms": s.detection_time.as_millis(),
                    }),
                    None => json!({ "state": "unavailable" }),
                }),
            })
        })
        .collect();
    json!({ "peers": peers })
}

fn routes_json(routes: &[RouteInfo]) -> Value {
    let routes: Vec<Value> = routes
        .iter()
        .map(|r| {
            let communities: Vec<String> =
                r.attrs.communities.iter().map(|c| format!("{}:{}", c >> 16, c & 0xffff)).collect();
            json!({
                "prefix": r.prefix.to_string(),
                "next_hop": r.attrs.next_hop,
                "as_path": r.attrs.as_path.asns().collect::<Vec<_>>(),
                "peer": r.peer,
                "best": r.best,
                "stale": r.stale,
                "origin": format!("{:?}", r.attrs.origin),
                "local_pref": r.attrs.local_pref,
                "med": r.attrs.med,
                "communities": communities,
            })
        })
        .collect();
    json!({ "routes": routes })
}

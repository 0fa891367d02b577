//! Health and metrics: `/liveness` and `/readiness` (ready once the dataplane is in sync) and
//! Prometheus text on `/metrics`, served by a minimal HTTP/1.0 responder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A lock that a panic elsewhere does not poison for good.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The agent's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Whether the last pass left the dataplane in sync; watched by whoever acts on it.
    ready: tokio::sync::watch::Sender<bool>,
    /// Why the agent is not ready, when it is not.
    not_ready: Mutex<String>,
    /// Since when the datastore has been unreachable, and the last error.
    datastore_down: Mutex<Option<(SystemTime, String)>>,
    routes: AtomicU64,
    route_changes: AtomicU64,
    applies: AtomicU64,
    apply_micros: AtomicU64,
    resyncs: AtomicU64,
    resync_micros: AtomicU64,
    iptables_restores: AtomicU64,
    iptables_errors: AtomicU64,
    watch_batches: AtomicU64,
    watch_lag_micros: AtomicU64,
    bgp_routes: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Marks the dataplane in sync, or not and why.
    pub fn set_ready(&self, ready: Result<(), String>) {
        self.ready.send_if_modified(|held| std::mem::replace(held, ready.is_ok()) != ready.is_ok());
        *lock(&self.not_ready) = ready.err().unwrap_or_default();
    }

    /// Records that the datastore could not be reached (the first time since it last could).
    pub fn datastore_unreachable(&self, error: &str) {
        let mut down = lock(&self.datastore_down);
        let since = down.as_ref().map_or_else(SystemTime::now, |(since, _)| *since);
        *down = Some((since, error.to_owned()));
    }

    /// Records that the datastore answered.
    pub fn datastore_reachable(&self) {
        *lock(&self.datastore_down) = None;
    }

    /// What is wrong with the datastore connection, in words, if anything.
    pub fn datastore_problem(&self) -> Option<String> {
        let down = lock(&self.datastore_down);
        let (since, error) = down.as_ref()?;
        let ago = since.elapsed().unwrap_or_default().as_secs();
        Some(format!(
            "the datastore is unreachable since {} ({ago} s): {error}",
            humantime::format_rfc3339_seconds(*since)
        ))
    }

    /// Whether the last pass left the dataplane in sync (whatever the datastore does now).
    pub fn dataplane_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Follows [`Metrics::dataplane_ready`]: told each time it changes.
    pub fn readiness(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Whether the dataplane is in sync with a datastore that answers.
    pub fn is_ready(&self) -> bool {
        self.dataplane_ready() && lock(&self.datastore_down).is_none()
    }

    /// Why the agent is not ready ("" when it is).
    pub fn not_ready_reason(&self) -> String {
        match self.datastore_problem() {
            Some(problem) => problem,
            None if self.dataplane_ready() => String::new(),
            None => {
                let why = lock(&self.not_ready);
                if why.is_empty() { "not in sync with the datastore yet".into() } else { why.clone() }
            }
        }
    }

    /// Records one application of the desired state.
    pub fn applied(&self, took: Duration, routes: usize, changes: usize, full_resync: bool) {
        self.routes.store(routes as u64, Ordering::Relaxed);
        self.route_changes.fetch_add(changes as u64, Ordering::Relaxed);
        let micros = took.as_micros() as u64;
        if full_resync {
            self.resyncs.fetch_add(1, Ordering::Relaxed);
            self.resync_micros.fetch_add(micros, Ordering::Relaxed);
        } else {
            self.applies.fetch_add(1, Ordering::Relaxed);
            self.apply_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// Records an iptables-restore call.
    pub fn iptables_restore(&self, ok: bool) {
        self.iptables_restores.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.iptables_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a batch of datastore events.
    pub fn watch_batch(&self) {
        self.watch_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a datastore change took to reach the kernel.
    pub fn watch_lag(&self, lag: Duration) {
        self.watch_lag_micros.store(lag.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records how many routes BGP has taught this node.
    pub fn bgp_routes(&self, count: usize) {
        self.bgp_routes.store(count as u64, Ordering::Relaxed);
    }

    /// Counts an error of a kind (`datastore`, `routes`, `vxlan`, `iptables`, `sysctl`).
    pub fn error(&self, kind: &'static str) {
        *lock(&self.errors).entry(kind).or_default() += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |a: &AtomicU64| get(a) as f64 / 1e6;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "brindle_ready",
            "gauge",
            "1 once the dataplane is in sync with the datastore.",
            u8::from(self.is_ready()).to_string(),
        );
        metric(
            "brindle_routes_programmed",
            "gauge",
            "Routes brindle wants in the kernel.",
            get(&self.routes).to_string(),
        );
        metric(
            "brindle_route_changes_total",
            "counter",
            "Routes added, replaced or removed.",
            get(&self.route_changes).to_string(),
        );
        metric(
            "brindle_apply_seconds_sum",
            "counter",
            "Time spent applying changes.",
            secs(&self.apply_micros).to_string(),
        );
        metric("brindle_apply_seconds_count", "counter", "Changes applied.", get(&self.applies).to_string());
        metric(
            "brindle_resync_seconds_sum",
            "counter",
            "Time spent in full resyncs.",
            secs(&self.resync_micros).to_string(),
        );
        metric("brindle_resync_seconds_count", "counter", "Full resyncs.", get(&self.resyncs).to_string());
        metric(
            "brindle_iptables_restore_calls_total",
            "counter",
            "iptables-restore runs.",
            get(&self.iptables_restores).to_string(),
        );
        metric(
            "brindle_iptables_restore_errors_total",
            "counter",
            "Failed iptables-restore runs.",
            get(&self.iptables_errors).to_string(),
        );
        metric(
            "brindle_datastore_watch_batches_total",
            "counter",
            "Batches of datastore events.",
            get(&self.watch_batches).to_string(),
        );
        metric(
            "brindle_datastore_watch_lag_seconds",
            "gauge",
            "From picking up a datastore change to the kernel matching it.",
            secs(&self.watch_lag_micros).to_string(),
        );
        metric(
            "brindle_bgp_routes_learned",
            "gauge",
            "Best routes learned from BGP peers.",
            get(&self.bgp_routes).to_string(),
        );
        let _ = writeln!(out, "# HELP brindle_errors_total Errors by kind.\n# TYPE brindle_errors_total counter");
        for (kind, count) in lock(&self.errors).iter() {
            let _ = writeln!(out, "brindle_errors_total{{kind=\"{kind}\"}} {count}");
        }
        out
    }
}

/// Listens for health or metrics requests on `listen`.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))
}

/// After a failed accept (out of file descriptors, say): logs it and pauses, so the listener
/// lives as long as the agent instead of ending with the error.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accepting a connection failed; trying again in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves health (and metrics, when `with_metrics` is true) until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, with_metrics: bool) {
    if let Ok(listen) = listener.local_addr() {
        tracing::info!(%listen, "serving {}", if with_metrics { "health and metrics" } else { "health" });
    }
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut request)).await else { return };
            let line = String::from_utf8_lossy(&request[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/liveness" => ("200 OK", "ok\n".to_owned()),
                "/readiness" if metrics.is_ready() => ("200 OK", "ready\n".to_owned()),
                "/readiness" => ("503 Service Unavailable", format!("{}\n", metrics.not_ready_reason())),
                "/metrics" if with_metrics => ("200 OK", metrics.render()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}

/// A question to the agent's main loop, with where to send the answer.
pub type StatusRequest = tokio::sync::oneshot::Sender<String>;

/// Serves the status socket: every connection gets one JSON document (what the main loop
/// answers) and is closed. `brindlectl node status` reads it.
pub async fn serve_socket(
    path: std::path::PathBuf,
    requests: tokio::sync::mpsc::Sender<StatusRequest>,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        tokio::net::UnixListener::bind(&path).map_err(|e| anyhow::anyhow!("listening on {}: {e}", path.display()))?;
    tracing::info!(socket = %path.display(), "serving status");
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if requests.send(tx).await.is_err() {
                return;
            }
            if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(5), rx).await {
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.write_all(b"\n").await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_text() {
        let m = Metrics::default();
        m.applied(Duration::from_millis(5), 12, 3, false);
        m.iptables_restore(false);
        m.error("routes");
        let text = m.render();
        assert!(text.contains("brindle_routes_programmed 12"), "{text}");
        assert!(text.contains("brindle_iptables_restore_errors_total 1"), "{text}");
        assert!(text.contains("brindle_errors_total{kind=\"routes\"} 1"), "{text}");
        assert!(text.contains("brindle_ready 0"), "{text}");
    }

    #[test]
    fn readiness_says_why_not_and_a_datastore_outage_wins() {
        let m = Metrics::default();
        assert_eq!(m.not_ready_reason(), "not in sync with the datastore yet");
        m.set_ready(Ok(()));
        assert!(m.is_ready() && m.not_ready_reason().is_empty());
        m.datastore_unreachable("connection refused");
        let first = m.datastore_problem().unwrap();
        m.datastore_unreachable("timed out");
        let again = m.datastore_problem().unwrap();
        assert!(!m.is_ready());
        assert!(again.starts_with(first.split(" (").next().unwrap()), "the outage keeps its start: {first} / {again}");
        assert!(again.ends_with("timed out") && m.not_ready_reason() == again, "{again}");
        m.datastore_reachable();
        assert!(m.is_ready());
        m.set_ready(Err("no route to 10.244.1.0/26".into()));
        assert_eq!(m.not_ready_reason(), "no route to 10.244.1.0/26");
    }
}

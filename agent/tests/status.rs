//! The health and metrics listener outlives a moment without file descriptors: while the
//! process is out of them it cannot accept, and once some are free it answers again. (It
//! used to end for good at the first failed accept.)

use std::process::{Command, Stdio};
use std::sync::Arc;

use brindle_agent::status::{self, Metrics};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// A GET from another process (its own descriptors), as a prober would make it.
fn get(port: u16, path: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 2 cat <&3"
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_listener_survives_running_out_of_file_descriptors() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(status::bind("127.0.0.1:0".parse().unwrap())).unwrap();
    let port = listener.local_addr().unwrap().port();
    let metrics = Arc::new(Metrics::default());
    runtime.spawn(status::serve(listener, Arc::clone(&metrics), true));
    assert!(get(port, "/liveness").starts_with("HTTP/1.0 200"));

    // Another process knocks 40 times while this one has no descriptor left to accept with.
    let scratch = tempfile::tempdir().unwrap();
    let knocks = scratch.path().join("knocks");
    let script = format!(
        "sleep 0.5; for i in $(seq 40); do (exec 3<>/dev/tcp/127.0.0.1/{port} && \
         printf 'GET /liveness HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 0.2 cat <&3); done > {} 2>&1",
        knocks.display()
    );
    let mut knocker = Command::new("bash").args(["-c", &script]).stdin(Stdio::null()).spawn().unwrap();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, open + 16, hard).unwrap();
    let mut hogs = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hogs.push(file);
    }
    knocker.wait().unwrap();
    drop(hogs);
    let knocked = std::fs::read_to_string(&knocks).unwrap();
    assert!(!knocked.contains("200 OK"), "answered without a descriptor to spare: {knocked}");

    let answer = get(port, "/metrics");
    assert!(answer.starts_with("HTTP/1.0 200") && answer.contains("brindle_ready 0"), "{answer:?}");
}

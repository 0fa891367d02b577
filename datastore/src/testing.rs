//! Throwaway datastores for tests: a real etcd server on free loopback ports in a temporary
//! directory, an SQLite file in one, or a real kube-apiserver (with its own etcd) holding
//! brindle's CustomResourceDefinitions. All clean up when dropped, even when a test fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long an etcd server or a kube-apiserver may take to become ready. An API server is ready
/// in about 2.5 s on an idle machine; under the whole suite's load on two cores one took more
/// than 20 s.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A backend to run a test against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A real etcd server.
    Etcd,
    /// An SQLite file.
    Sqlite,
    /// A real kube-apiserver.
    Kubernetes,
}

/// A running test datastore of either kind.
#[derive(Debug)]
pub enum TestStore {
    /// A private etcd server.
    Etcd(EtcdServer),
    /// A private SQLite file.
    Sqlite(SqliteFile),
    /// A private kube-apiserver.
    Kubernetes(KubeApiServer),
}

impl TestStore {
    /// Starts a store of the given kind.
    pub fn start(backend: Backend) -> std::io::Result<Self> {
        Ok(match backend {
            Backend::Etcd => TestStore::Etcd(EtcdServer::start()?),
            Backend::Sqlite => TestStore::Sqlite(SqliteFile::new()?),
            Backend::Kubernetes => TestStore::Kubernetes(KubeApiServer::start()?),
        })
    }

    /// The selection string that reaches it.
    pub fn selection(&self) -> String {
        match self {
            TestStore::Etcd(e) => e.selection(),
            TestStore::Sqlite(s) => s.selection(),
            TestStore::Kubernetes(k) => k.selection(),
        }
    }

    /// The PIDs of the store's server processes (none for an SQLite file), for what they cost.
    pub fn server_pids(&self) -> Vec<u32> {
        match self {
            TestStore::Etcd(e) => e.child.iter().map(Child::id).collect(),
            TestStore::Sqlite(_) => Vec::new(),
            TestStore::Kubernetes(k) => [&k.child, &k.etcd].into_iter().flatten().map(Child::id).collect(),
        }
    }

    /// The selection with a patient call timeout (30 s), for tests that load the machine on
    /// purpose: they check what contention does to correctness, not how long a call takes.
    pub fn patient_selection(&self) -> String {
        let selection = self.selection();
        match selection.split_once("timeout=") {
            Some((before, after)) => {
                let rest = after.split_once('&').map_or(String::new(), |(_, rest)| format!("&{rest}"));
                format!("{before}timeout=30s{rest}")
            }
            None if selection.contains('?') => format!("{selection}&timeout=30s"),
            None => format!("{selection}?timeout=30s"),
        }
    }
}

/// An SQLite database file in a private temporary directory.
#[derive(Debug)]
pub struct SqliteFile {
    dir: TempDir,
}

impl SqliteFile {
    /// A new, not yet created, database path.
    pub fn new() -> std::io::Result<Self> {
        Ok(SqliteFile { dir: scratch_dir("brindle-sqlite-")? })
    }

    /// The database file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("brindle.db")
    }

    /// `sqlite:///...` with a short poll interval, so watch tests run fast.
    pub fn selection(&self) -> String {
        format!("sqlite://{}?poll=20ms", self.path().display())
    }
}

/// The policies of a YAML stream of Tiers and policies of both APIs, each validated as
/// brindlectl validates it. Panics on anything else: a test's own input is wrong.
pub fn policies_from_yaml(text: &str) -> crate::policy::Policies {
    use crate::resource::{AnyResource, parse_documents};
    let (mut tiers, mut kubernetes, mut namespaced, mut global) = (vec![], vec![], vec![], vec![]);
    for doc in parse_documents(text).unwrap() {
        doc.validate().unwrap();
        match doc {
            AnyResource::Tier(r) => tiers.push(r),
            AnyResource::KubernetesNetworkPolicy(r) => kubernetes.push(r),
            AnyResource::NetworkPolicy(r) => namespaced.push(r),
            AnyResource::GlobalNetworkPolicy(r) => global.push(r),
            other => panic!("not a tier or policy: {other:?}"),
        }
    }
    crate::policy::Policies::new(&tiers, &kubernetes, &namespaced, &global)
}

/// A Kubernetes pod's WorkloadEndpoint on `node` with `labels`: interface eth0 behind `brin0`,
/// no addresses, ports or service account (a test sets what it looks at).
pub fn pod_endpoint(
    node: &str,
    namespace: &str,
    pod: &str,
    labels: &[(&str, &str)],
) -> crate::resource::Resource<crate::resource::WorkloadEndpoint> {
    use crate::resource::{Metadata, Resource, WorkloadEndpoint};
    let mut metadata = Metadata::named(format!("{node}-k8s-{pod}-eth0"));
    metadata.namespace = Some(namespace.into());
    metadata.labels = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    let spec = WorkloadEndpoint {
        node: node.into(),
        orchestrator: "k8s".into(),
        pod: pod.into(),
        endpoint: "eth0".into(),
        container_id: "c".into(),
        interface_name: "brin0".into(),
        mac: None,
        ip_networks: vec![],
        profiles: vec![],
        service_account_name: None,
        ports: vec![],
    };
    Resource { metadata, spec }
}

/// A private etcd server: its own data directory and loopback ports. Killed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    dir: TempDir,
    program: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A temporary directory for a test server's data: in memory (`/dev/shm`) where the machine has
/// it, so a server's syncs never wait on a disk that builds and other suites keep busy (etcd
/// fails a write with "request timed out" when its log cannot be synced in time).
fn scratch_dir(prefix: &str) -> std::io::Result<TempDir> {
    let memory = Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    if memory.is_dir() { builder.tempdir_in(memory) } else { builder.tempdir() }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd (the `etcd` binary on PATH) and waits until it reports healthy.
    pub fn start() -> std::io::Result<Self> {
        EtcdServer::start_program(Path::new("etcd"))
    }

    /// Starts the etcd binary `program` and waits until it reports healthy.
    pub fn start_program(program: &Path) -> std::io::Result<Self> {
        let dir = scratch_dir("brindle-etcd-")?;
        let program = program.to_owned();
        let mut server = EtcdServer { dir, program, client_port: free_port()?, peer_port: free_port()?, child: None };
        server.launch()?;
        Ok(server)
    }

    /// `127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `etcd://127.0.0.1:<port>` with a short call timeout, so outage tests finish quickly.
    pub fn selection(&self) -> String {
        format!("etcd://{}?timeout=2s", self.endpoint())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (its data stays), as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server process in its tracks (SIGSTOP): connections stay open but nothing
    /// answers, the hardest kind of outage for a client.
    pub fn freeze(&self) -> std::io::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) -> std::io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> std::io::Result<()> {
        let Some(child) = &self.child else { return Err(std::io::Error::other("etcd is not running")) };
        let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status()?;
        if status.success() { Ok(()) } else { Err(std::io::Error::other(format!("kill {signal} failed: {status}"))) }
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> std::io::Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))?;
        let child =
            etcd_command(None, &self.program, self.dir.path(), &client, &peer).stderr(log).spawn().map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot start etcd (is etcd-server installed?): {e}"))
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                return Err(std::io::Error::other(format!("etcd exited with {status}: {log}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other("etcd did not become healthy in time"))
    }

    fn healthy(&self) -> bool {
        etcd_healthy(self.client_port)
    }
}

/// Whether the etcd serving clients on loopback port `port` reports itself healthy.
fn etcd_healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Kubernetes release the tests run, and its etcd's (scripts/kube-build.sh builds both).
const VERSIONS: &str = include_str!("../../scripts/kubernetes-version");

/// Where kube-apiserver, kubectl and their etcd are: `BRINDLE_KUBE_BIN`, or the cache
/// scripts/kube-build.sh fills.
pub fn kube_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BRINDLE_KUBE_BIN") {
        return dir.into();
    }
    let mut versions = VERSIONS.lines();
    let (kubernetes, etcd) = (versions.next().unwrap_or_default(), versions.next().unwrap_or_default());
    PathBuf::from(format!("/var/cache/brindle/kubernetes/v{kubernetes}-etcd{etcd}"))
}

/// Where a [`KubeApiServer`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubePlacement {
    /// The network namespace its processes run in; `None`: this one, on loopback and free
    /// ports. In a namespace of its own (a lab's router) it takes the standard ports.
    pub netns: Option<String>,
    /// The address it serves on, and clients reach it at.
    pub address: std::net::Ipv4Addr,
    /// Its directory; `None`: a private temporary one, removed on drop.
    pub dir: Option<PathBuf>,
    /// Whether to install brindle's CustomResourceDefinitions (not when a test installs a
    /// manifest that holds them).
    pub crds: bool,
}

/// A private kube-apiserver with its own etcd, a static admin token, a service-account
/// signing key, and brindle's CustomResourceDefinitions established. Killed on drop, unless
/// detached (a lab's outlives the command that made it).
#[derive(Debug)]
pub struct KubeApiServer {
    placement: KubePlacement,
    dir: PathBuf,
    _temp: Option<TempDir>,
    port: u16,
    etcd: Option<Child>,
    etcd_port: u16,
    child: Option<Child>,
}

/// A command that runs `program` in `netns` (or here).
fn in_netns(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// etcd serving clients on `client` and peers on `peer`, with its data under `dir`.
fn etcd_command(netns: Option<&str>, program: &Path, dir: &Path, client: &str, peer: &str) -> Command {
    let mut command = in_netns(netns, program);
    command
        .arg("--name=test")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=test={peer}"))
        .args(["--logger=zap", "--log-level=warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

impl KubeApiServer {
    /// Starts an API server on loopback in this namespace, in a temporary directory.
    pub fn start() -> std::io::Result<Self> {
        KubeApiServer::start_at(KubePlacement {
            netns: None,
            address: std::net::Ipv4Addr::LOCALHOST,
            dir: None,
            crds: true,
        })
    }

    /// Starts an API server as `placement` says and waits until it is ready and brindle's
    /// kinds are served. On loopback, a port picked free can be taken before etcd or the API
    /// server binds it (by another test's outgoing connection, whose ports come from the same
    /// range): then the start is tried again on fresh ports.
    pub fn start_at(placement: KubePlacement) -> std::io::Result<Self> {
        const ATTEMPTS: usize = 3;
        let bin = kube_bin_dir();
        if !bin.join("kube-apiserver").is_file() {
            return Err(std::io::Error::other(format!(
                "{} has no kube-apiserver: run scripts/install-deps.sh (it builds Kubernetes once per machine)",
                bin.display()
            )));
        }
        let (temp, dir) = match &placement.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (None, dir.clone())
            }
            None => {
                let temp = scratch_dir("brindle-kube-")?;
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        let mut server = KubeApiServer { placement, dir, _temp: temp, port: 0, etcd: None, etcd_port: 0, child: None };
        for attempt in 1..=ATTEMPTS {
            match server.launch(&bin) {
                Ok(()) => break,
                Err(Launch::PortTaken(why)) if server.placement.netns.is_none() && attempt < ATTEMPTS => {
                    eprintln!("kube-apiserver start: a port was taken ({why}); trying fresh ports");
                    server.stop();
                    std::fs::remove_dir_all(server.dir.join("etcd")).or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    })?;
                }
                Err(Launch::PortTaken(why) | Launch::Failed(why)) => return Err(std::io::Error::other(why)),
            }
        }
        if !server.placement.crds {
            return Ok(server);
        }
        let crds = serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": crate::store::kubernetes::layout::crds(&crate::store::kubernetes::layout::collections()),
        });
        let file = server.dir.join("crds.json");
        std::fs::write(&file, crds.to_string())?;
        server.kubectl(&["apply", "-f", &file.display().to_string()])?;
        server.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=30s"])?;
        Ok(server)
    }

    /// Starts etcd and the API server on the placement's ports (fresh free ones on loopback)
    /// and waits until the API server is ready.
    fn launch(&mut self, bin: &Path) -> Result<(), Launch> {
        let netns = self.placement.netns.clone();
        let netns = netns.as_deref();
        let (port, etcd_port, peer_port) = match netns {
            Some(_) => (6443, 2379, 2380),
            None => (|| Ok((free_port()?, free_port()?, free_port()?)))().map_err(failed("no free port"))?,
        };
        (self.port, self.etcd_port) = (port, etcd_port);
        let etcd_log = self.dir.join("etcd.log");
        let client = format!("http://127.0.0.1:{etcd_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(&etcd_log).map_err(failed("cannot start etcd"))?;
        let etcd = etcd_command(netns, &bin.join("etcd"), &self.dir.join("etcd"), &client, &peer)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(failed("cannot start etcd"))?;
        self.etcd = Some(etcd);
        if netns.is_none() {
            let deadline = Instant::now() + START_TIMEOUT;
            while !etcd_healthy(etcd_port) {
                if let Some(status) = self.etcd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    return Err(exited("etcd", status, &etcd_log));
                }
                if Instant::now() > deadline {
                    return Err(Launch::Failed(format!("etcd did not become healthy: {}", tail(&etcd_log))));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        let key = self.dir.join("sa.key");
        let public = self.dir.join("sa.pub");
        let keys = failed("cannot prepare the API server's keys");
        run(Command::new("openssl").args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"]).arg(&key))
            .map_err(keys)?;
        run(Command::new("openssl").args(["ec", "-pubout", "-in"]).arg(&key).arg("-out").arg(&public)).map_err(keys)?;
        std::fs::write(self.dir.join("tokens.csv"), "brindle-admin-token,admin,admin,system:masters\n")
            .map_err(keys)?;
        let log = self.dir.join("kube-apiserver.log");
        let file = std::fs::File::create(&log).map_err(failed("cannot start kube-apiserver"))?;
        let address = self.placement.address;
        let child = in_netns(netns, &bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers={client}"))
            .arg(format!("--bind-address={address}"))
            .arg(format!("--advertise-address={address}"))
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", self.dir.join("certs").display()))
            .arg(format!("--token-auth-file={}", self.dir.join("tokens.csv").display()))
            .arg(format!("--service-account-key-file={}", public.display()))
            .arg(format!("--service-account-signing-key-file={}", key.display()))
            .args(["--service-account-issuer=https://kubernetes.default.svc", "--authorization-mode=RBAC"])
            .args(["--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true", "--v=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .process_group(0)
            .spawn()
            .map_err(failed("cannot start kube-apiserver"))?;
        self.child = Some(child);
        self.write_kubeconfig().map_err(failed("cannot write the kubeconfig"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.kubectl(&["get", "--raw", "/readyz"]).is_ok_and(|out| out.trim() == "ok") {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(exited("kube-apiserver", status, &log));
            }
            if Instant::now() > deadline {
                return Err(Launch::Failed(format!("kube-apiserver did not become ready: {}", tail(&log))));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Kills the API server and its etcd.
    fn stop(&mut self) {
        for child in [self.child.take(), self.etcd.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn write_kubeconfig(&self) -> std::io::Result<()> {
        std::fs::write(self.kubeconfig(), self.kubeconfig_text("brindle-admin-token"))
    }

    fn kubeconfig_text(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{}:{}\n    \
             certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {token}\n\
             contexts:\n- name: test\n  context: {{cluster: test, user: user}}\ncurrent-context: test\n",
            self.placement.address,
            self.port,
            self.ca_cert().display()
        )
    }

    /// A kubeconfig for the service account `namespace/name`, with a token the API server
    /// issues for it (an hour's): the account's roles and nothing more.
    pub fn kubeconfig_for(&self, namespace: &str, name: &str) -> std::io::Result<PathBuf> {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
        let path = self.dir.join(format!("kubeconfig-{namespace}-{name}"));
        std::fs::write(&path, self.kubeconfig_text(token.trim()))?;
        Ok(path)
    }

    /// The address and port the API server serves on.
    pub fn endpoint(&self) -> (std::net::Ipv4Addr, u16) {
        (self.placement.address, self.port)
    }

    /// The certificate a client checks the API server's against (a pod's `ca.crt`).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    /// The admin's kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `kubernetes:///<kubeconfig>` with a short call timeout.
    pub fn selection(&self) -> String {
        format!("kubernetes://{}?timeout=5s", self.kubeconfig().display())
    }

    /// `127.0.0.1:<port>` of the API server's etcd (in its namespace).
    pub fn etcd_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.etcd_port)
    }

    /// Runs kubectl against the server as the admin (in its namespace); its output.
    pub fn kubectl(&self, args: &[&str]) -> std::io::Result<String> {
        let out = in_netns(self.placement.netns.as_deref(), &kube_bin_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            return Err(std::io::Error::other(format!("kubectl {}: {said}", args.join(" "))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How many requests the API server has answered, by verb and resource (`LIST`,
    /// `ipamblocks`), from its `apiserver_request_total` metric.
    pub fn request_counts(&self) -> std::io::Result<std::collections::BTreeMap<(String, String), u64>> {
        let metrics = self.kubectl(&["get", "--raw", "/metrics"])?;
        let mut counts = std::collections::BTreeMap::new();
        for line in metrics.lines() {
            let Some(labels) = line.strip_prefix("apiserver_request_total{") else { continue };
            let Some((labels, value)) = labels.rsplit_once("} ") else { continue };
            let label = |name: &str| {
                labels.split(',').find_map(|l| l.strip_prefix(name)?.strip_prefix("=\"")?.strip_suffix('"'))
            };
            let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else { continue };
            let count = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            *counts.entry((verb.to_owned(), resource.to_owned())).or_default() += count;
        }
        Ok(counts)
    }

    /// The PIDs of etcd and the API server, which keep running: whoever detaches stops them.
    pub fn detach(mut self) -> (u32, u32) {
        let etcd = self.etcd.take().map_or(0, |c| c.id());
        let server = self.child.take().map_or(0, |c| c.id());
        (etcd, server)
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why an attempt to start an API server failed.
enum Launch {
    /// etcd or the API server could not bind its port.
    PortTaken(String),
    Failed(String),
}

/// Turns an error of a step of a start into a failure naming the step.
fn failed(step: &'static str) -> impl Fn(std::io::Error) -> Launch + Copy {
    move |e| Launch::Failed(format!("{step}: {e}"))
}

/// The end of a process that exited while starting: a taken port, or a failure.
fn exited(what: &str, status: std::process::ExitStatus, log: &Path) -> Launch {
    let why = format!("{what} exited with {status}: {}", tail(log));
    if why.contains("address already in use") { Launch::PortTaken(why) } else { Launch::Failed(why) }
}

/// The last lines of a log.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(20).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn run(command: &mut Command) -> std::io::Result<()> {
    let out = command.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("{command:?}: {}", String::from_utf8_lossy(&out.stderr))))
    }
}

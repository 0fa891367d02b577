//! Throwaway datastores for tests: a real etcd server on free loopback ports in a temporary
//! directory, or an SQLite file in one. Both clean up when dropped, even when a test fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long an etcd server may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A backend to run a test against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A real etcd server.
    Etcd,
    /// An SQLite file.
    Sqlite,
}

/// A running test datastore of either kind.
#[derive(Debug)]
pub enum TestStore {
    /// A private etcd server.
    Etcd(EtcdServer),
    /// A private SQLite file.
    Sqlite(SqliteFile),
}

impl TestStore {
    /// Starts a store of the given kind.
    pub fn start(backend: Backend) -> std::io::Result<Self> {
        Ok(match backend {
            Backend::Etcd => TestStore::Etcd(EtcdServer::start()?),
            Backend::Sqlite => TestStore::Sqlite(SqliteFile::new()?),
        })
    }

    /// The selection string that reaches it.
    pub fn selection(&self) -> String {
        match self {
            TestStore::Etcd(e) => e.selection(),
            TestStore::Sqlite(s) => s.selection(),
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
        Ok(SqliteFile { dir: tempfile::Builder::new().prefix("brindle-sqlite-").tempdir()? })
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

/// A private etcd server: its own data directory and loopback ports. Killed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd (the `etcd` binary on PATH) and waits until it reports healthy.
    pub fn start() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("brindle-etcd-").tempdir()?;
        let mut server = EtcdServer { dir, client_port: free_port()?, peer_port: free_port()?, child: None };
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
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
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
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Network namespaces with unique names, removed when their guard drops, and the commands
//! that work in them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short tag unique to this process and call (interface names have 15 characters).
pub fn unique() -> String {
    format!("{:x}{:x}", std::process::id() % 0xfff, NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command; whether it succeeded and its stdout and stderr together.
pub fn output(cmd: &mut Command) -> (bool, String) {
    match cmd.output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        ),
        Err(e) => (false, format!("{cmd:?}: {e}")),
    }
}

/// Moves the calling thread into the namespace at `path`; threads and processes it starts
/// afterwards are inside it too.
pub fn enter(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", path.display()))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// Makes `<prefix>-<unique>-<tag>` with its loopback up.
    pub fn new(prefix: &str, tag: &str) -> anyhow::Result<Netns> {
        Netns::named(&format!("{prefix}-{}-{tag}", unique()))
    }

    /// Makes the namespace `name` with its loopback up; an error if it exists.
    pub fn named(name: &str) -> anyhow::Result<Netns> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let netns = Netns { name: name.to_owned() };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Disarms the guard: the namespace outlives this value (a lab that stays up). Returns
    /// its name.
    pub fn keep(self) -> String {
        std::mem::ManuallyDrop::new(self).name.clone()
    }

    /// Deletes the namespace `name` if it exists (what the guard does, for a kept one).
    pub fn remove(name: &str) {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(std::process::Stdio::null()).status();
    }

    /// Its path, as runtimes pass it in CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// A command that runs inside it.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ip <args>` inside it.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Netns::remove(&self.name);
    }
}

/// GET `path` from `127.0.0.1:port` inside the namespace at `netns`: the raw response, or ""
/// when nothing answers.
pub fn http_get(netns: &Path, port: u16, path: &str) -> String {
    http_get_at(netns, std::net::Ipv4Addr::LOCALHOST.into(), port, path)
}

/// GET `path` from `address:port` inside the namespace at `netns`: the raw response, or ""
/// when nothing answers.
pub fn http_get_at(netns: &Path, address: std::net::IpAddr, port: u16, path: &str) -> String {
    let (netns, path) = (netns.to_owned(), path.to_owned());
    std::thread::spawn(move || {
        if enter(&netns).is_err() {
            return String::new();
        }
        let Ok(mut conn) = std::net::TcpStream::connect((address, port)) else { return String::new() };
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = std::io::Write::write_all(&mut conn, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        let mut response = String::new();
        let _ = std::io::Read::read_to_string(&mut conn, &mut response);
        response
    })
    .join()
    .unwrap_or_default()
}

/// Whether one ping from inside `netns` to `ip` is answered within a second.
pub fn ping(netns: &str, ip: &str) -> bool {
    output(Command::new("ip").args(["netns", "exec", netns, "ping", "-c", "1", "-W", "1", ip])).0
}

/// Whether this kernel has IP-in-IP, loading the ipip module where it is not loaded yet: a
/// fresh namespace gets `tunl0` only with the module.
pub fn kernel_has_ipip() -> anyhow::Result<bool> {
    let _ = Command::new("modprobe").args(["-q", "ipip"]).status();
    let probe = Netns::new("ipip", "probe")?;
    Ok(probe.ip(&["link", "show"])?.contains("tunl0"))
}

/// Joins two namespaces with a veth pair named `<a_end>`/`<b_end>`.
pub fn veth(a: &Netns, a_end: &str, b: &Netns, b_end: &str) -> anyhow::Result<()> {
    run(Command::new("ip")
        .args(["link", "add", a_end, "netns", &a.name, "type", "veth", "peer", "name", b_end, "netns", &b.name]))?;
    Ok(())
}

/// The node's end of the uplink.
pub const NODE_V4: &str = "10.250.0.2";
/// The world's end (the node's default gateway).
pub const WORLD_V4: &str = "10.250.0.1";
/// The node's IPv6 uplink address.
pub const NODE_V6: &str = "fd00:250::2";
/// The world's IPv6 address.
pub const WORLD_V6: &str = "fd00:250::1";

/// A node as a namespace: an uplink to a "world" namespace, default routes of both families
/// through it (proxy ARP toward pods needs one, as on real nodes), forwarding on as the
/// agent sets it.
#[derive(Debug)]
pub struct UplinkedNode {
    /// The node.
    pub node: Netns,
    /// What lies beyond its uplink.
    pub world: Netns,
}

impl UplinkedNode {
    /// Builds the pair, named `<prefix>-...-node` and `<prefix>-...-world`.
    pub fn new(prefix: &str) -> anyhow::Result<UplinkedNode> {
        let node = Netns::new(prefix, "node")?;
        let world = Netns::new(prefix, "world")?;
        let (up, down) = (format!("up{}", unique()), format!("dn{}", unique()));
        veth(&node, &up, &world, &down)?;
        node.ip(&["addr", "add", &format!("{NODE_V4}/24"), "dev", &up])?;
        node.ip(&["addr", "add", &format!("{NODE_V6}/64"), "dev", &up, "nodad"])?;
        node.ip(&["link", "set", &up, "up"])?;
        world.ip(&["addr", "add", &format!("{WORLD_V4}/24"), "dev", &down])?;
        world.ip(&["addr", "add", &format!("{WORLD_V6}/64"), "dev", &down, "nodad"])?;
        world.ip(&["link", "set", &down, "up"])?;
        node.ip(&["route", "add", "default", "via", WORLD_V4])?;
        node.ip(&["-6", "route", "add", "default", "via", WORLD_V6])?;
        run(node.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]))?;
        Ok(UplinkedNode { node, world })
    }
}

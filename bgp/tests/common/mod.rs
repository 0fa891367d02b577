//! A small network-namespace harness for the speaker's interop tests: uniquely named
//! namespaces and veths, processes started inside them, and guards that remove everything
//! even when a test fails. Traffic stays inside the namespaces.
#![allow(dead_code)]

pub mod raw;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique short tag for names (interface names are limited to 15 characters).
pub fn unique() -> String {
    format!("{:x}{:x}", std::process::id() % 0xffff, NEXT.fetch_add(1, Ordering::SeqCst))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("bgpt-{}-{tag}", unique());
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns { name }
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `work` on a thread inside the namespace: the sockets it opens stay there.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.name)).expect("the namespace");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the namespace");
                    work()
                })
                .join()
                .expect("the work inside the namespace")
        })
    }

    /// Runs a command inside the namespace and returns its standard output.
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().expect("run in namespace");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Joins two namespaces with a veth pair and gives each end an IPv4 and an IPv6 address:
/// `10.<net>.0.<a|b>/24` and `fd00:<net>::<a|b>/64`.
pub fn link(a: &Netns, b: &Netns, net: u8, host_a: u8, host_b: u8) {
    let tag = unique();
    let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
    run(Command::new("ip")
        .args(["link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name]));
    for (ns, dev, host) in [(a, &va, host_a), (b, &vb, host_b)] {
        run(Command::new("ip").args(["-n", &ns.name, "addr", "add", &format!("10.{net}.0.{host}/24"), "dev", dev]));
        run(Command::new("ip").args([
            "-n",
            &ns.name,
            "-6",
            "addr",
            "add",
            &format!("fd00:{net}::{host}/64"),
            "dev",
            dev,
            "nodad",
        ]));
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", dev, "up"]));
    }
}

/// Joins several namespaces on one bridge (in its own namespace): host `i` gets
/// `10.<net>.0.<hosts[i]>/24`.
pub struct Switch {
    ns: Netns,
}

impl Switch {
    pub fn new(net: u8, members: &[(&Netns, u8)]) -> Switch {
        let ns = Netns::new("sw");
        run(Command::new("ip").args(["-n", &ns.name, "link", "add", "br0", "type", "bridge"]));
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "br0", "up"]));
        for (member, host) in members {
            let tag = unique();
            let (outer, inner) = (format!("s{tag}"), format!("m{tag}"));
            run(Command::new("ip").args([
                "link",
                "add",
                &outer,
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &inner,
                "netns",
                &member.name,
            ]));
            run(Command::new("ip").args(["-n", &ns.name, "link", "set", &outer, "master", "br0", "up"]));
            run(Command::new("ip").args([
                "-n",
                &member.name,
                "addr",
                "add",
                &format!("10.{net}.0.{host}/24"),
                "dev",
                &inner,
            ]));
            run(Command::new("ip").args([
                "-n",
                &member.name,
                "-6",
                "addr",
                "add",
                &format!("fd00:{net}::{host}/64"),
                "dev",
                &inner,
                "nodad",
            ]));
            run(Command::new("ip").args(["-n", &member.name, "link", "set", &inner, "up"]));
        }
        Switch { ns }
    }
}

/// A process we started, killed on drop.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Process { child, log }
    }

    /// Sends a signal (by name, e.g. `-STOP`) to the process.
    pub fn signal(&self, signal: &str) {
        run(Command::new("kill").arg(signal).arg(self.child.id().to_string()));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").arg(self.child.id().to_string()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A brindle-bgp speaker in a namespace.
pub struct Brindle {
    pub process: Process,
    pub socket: PathBuf,
}

impl Brindle {
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> Brindle {
        let socket = dir.join(format!("{name}.sock"));
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, format!("control_socket = \"{}\"\n{config}", socket.display())).expect("config");
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_brindle-bgp"));
        cmd.args(["run", "--config"]).arg(&path).args(["--log", "info"]);
        let process = Process::spawn(cmd, dir.join(format!("{name}.log")));
        wait_for(Duration::from_secs(10), "the control socket", || socket.exists().then_some(()));
        Brindle { process, socket }
    }

    fn query(&self, what: &str) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_brindle-bgp"))
            .args([what, "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("brindle-bgp query");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The state of the BFD session with `peer` ("" when it has none).
    pub fn bfd(&self, peer: &str) -> String {
        let status = self.query("status");
        let entry = status["peers"].as_array().and_then(|ps| ps.iter().find(|p| p["address"] == peer).cloned());
        entry.and_then(|e| e["bfd"]["state"].as_str().map(str::to_owned)).unwrap_or_default()
    }

    /// The state of the session with `peer`, and its last error.
    pub fn peer(&self, peer: &str) -> (String, String) {
        let status = self.query("status");
        let entry = status["peers"].as_array().and_then(|ps| ps.iter().find(|p| p["address"] == peer).cloned());
        let entry = entry.unwrap_or_default();
        (entry["state"].as_str().unwrap_or("").to_owned(), entry["last_error"].as_str().unwrap_or("").to_owned())
    }

    /// The best routes: prefix -> (next hop, AS path).
    pub fn best_routes(&self) -> Vec<(String, String, Vec<u64>)> {
        let routes = self.query("routes");
        routes["routes"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter(|r| r["best"] == true)
                    .map(|r| {
                        (
                            r["prefix"].as_str().unwrap_or("").to_owned(),
                            r["next_hop"].as_str().unwrap_or("").to_owned(),
                            r["as_path"]
                                .as_array()
                                .map(|p| p.iter().filter_map(|a| a.as_u64()).collect())
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn has_route(&self, prefix: &str) -> bool {
        self.best_routes().iter().any(|(p, _, _)| p == prefix)
    }

    pub fn wait_established(&self, peer: &str) {
        wait_for(Duration::from_secs(30), &format!("session with {peer}"), || {
            (self.peer(peer).0 == "Established").then_some(())
        });
    }
}

/// A BIRD speaker at `10.<net>.0.<me>` with static routes, peering with `peers` (name,
/// address, AS, extra protocol lines).
pub fn bird_config(net: u8, me: u8, asn: u32, statics: &[&str], peers: &[(&str, &str, u32, &str)]) -> String {
    let mut v4 = String::new();
    let mut v6 = String::new();
    for s in statics {
        if s.contains(':') {
            v6.push_str(&format!("  route {s} blackhole;\n"));
        } else {
            v4.push_str(&format!("  route {s} blackhole;\n"));
        }
    }
    let mut config = format!(
        "router id 10.{net}.0.{me};\nprotocol device {{}}\nprotocol static s4 {{ ipv4; {v4} }}\nprotocol static s6 {{ ipv6; {v6} }}\n"
    );
    for (name, address, peer_as, extra) in peers {
        config.push_str(&format!(
            "protocol bgp {name} {{\n  local 10.{net}.0.{me} as {asn};\n  neighbor {address} as {peer_as};\n  direct;\n  graceful restart on;\n  {extra}\n  \
             ipv4 {{ import all; export all; next hop self; gateway direct; }};\n  \
             ipv6 {{ import all; export all; next hop address fd00:{net}::{me}; gateway direct; }};\n}}\n"
        ));
    }
    config
}

/// A BIRD 2 daemon in a namespace, with its own control socket.
pub struct Bird {
    pub process: Process,
    pub socket: PathBuf,
    ns: String,
}

impl Bird {
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> Bird {
        let path = dir.join(format!("{name}.conf"));
        let socket = dir.join(format!("{name}.ctl"));
        std::fs::write(&path, config).expect("bird config");
        let check = Command::new("bird").args(["-p", "-c"]).arg(&path).output().expect("bird -p");
        assert!(check.status.success(), "BIRD rejects its config: {}", String::from_utf8_lossy(&check.stderr));
        let mut cmd = ns.command("bird");
        cmd.arg("-f").arg("-c").arg(&path).arg("-s").arg(&socket).arg("-P").arg(dir.join(format!("{name}.pid")));
        let process = Process::spawn(cmd, dir.join(format!("{name}.log")));
        wait_for(Duration::from_secs(10), "BIRD's socket", || socket.exists().then_some(()));
        Bird { process, socket, ns: ns.name.clone() }
    }

    pub fn cli(&self, command: &str) -> String {
        let out = Command::new("birdc").arg("-s").arg(&self.socket).arg(command).output().expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn has_route(&self, prefix: &str) -> bool {
        self.cli(&format!("show route {prefix}")).contains(prefix)
    }

    pub fn established(&self, protocol: &str) -> bool {
        self.cli(&format!("show protocols {protocol}")).contains("Established")
    }
}

/// FRR in a namespace: zebra, bfdd and bgpd, each its own process, with their configuration,
/// pid files and vty sockets in a directory of their own (no TCP vty).
pub struct Frr {
    daemons: Vec<Process>,
    home: PathBuf,
    ns: String,
}

impl Frr {
    /// Starts FRR with `bgpd` and `bfdd` as those daemons' configuration.
    pub fn start(ns: &Netns, dir: &Path, name: &str, bgpd: &str, bfdd: &str) -> Frr {
        use std::os::unix::fs::PermissionsExt;
        // The daemons run as the frr user: it must reach and write its directory.
        let home = dir.join(name);
        std::fs::create_dir_all(&home).expect("FRR's directory");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let mut daemons = Vec::new();
        for (daemon, config) in [("zebra", ""), ("bfdd", bfdd), ("bgpd", bgpd)] {
            let conf = home.join(format!("{daemon}.conf"));
            std::fs::write(&conf, format!("hostname {name}\n{config}")).expect("FRR config");
            let mut cmd = ns.command(format!("/usr/lib/frr/{daemon}"));
            cmd.arg("-f").arg(&conf).arg("-i").arg(home.join(format!("{daemon}.pid")));
            cmd.arg("-z").arg(home.join("zserv.api")).arg("--vty_socket").arg(&home);
            cmd.args(["-u", "frr", "-g", "frr", "-P", "0", "--log", "stdout"]);
            daemons.push(Process::spawn(cmd, home.join(format!("{daemon}.log"))));
            let vty = home.join(format!("{daemon}.vty"));
            wait_for(Duration::from_secs(10), &format!("FRR's {daemon}"), || vty.exists().then_some(()));
        }
        Frr { daemons, home, ns: ns.name.clone() }
    }

    /// Stops every daemon (SIGSTOP): frozen, they notice nothing until killed.
    pub fn freeze(&self) {
        self.daemons.iter().for_each(|d| d.signal("-STOP"));
    }

    /// A vtysh command's output.
    pub fn vtysh(&self, command: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "vtysh", "--vty_socket"])
            .arg(&self.home)
            .args(["-c", command])
            .output()
            .expect("vtysh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A GoBGP daemon in a namespace.
pub struct Gobgp {
    pub process: Process,
    ns: String,
}

impl Gobgp {
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> Gobgp {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("gobgp config");
        let mut cmd = ns.command("gobgpd");
        cmd.arg("-f").arg(&path).args(["-p", "--pprof-disable", "--api-hosts", "127.0.0.1:50051"]);
        let process = Process::spawn(cmd, dir.join(format!("{name}.log")));
        let gobgp = Gobgp { process, ns: ns.name.clone() };
        wait_for(Duration::from_secs(10), "GoBGP's API", || gobgp.cli(&["global"]).contains("AS").then_some(()));
        gobgp
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "gobgp", "-u", "127.0.0.1", "-p", "50051"])
            .args(args)
            .output()
            .expect("gobgp");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn has_route(&self, prefix: &str, family: &str) -> bool {
        self.cli(&["global", "rib", "-a", family]).contains(prefix)
    }

    pub fn established(&self, neighbor: &str) -> bool {
        self.cli(&["neighbor", neighbor]).to_lowercase().contains("bgp state = established")
    }
}

//! A Debian kernel under qemu, for the tests this machine's kernel cannot run (no ipip, no
//! wireguard): Debian's cloud kernel (unpacked by `scripts/vm-kernel.sh`, never installed)
//! boots with a small initramfs (busybox and the modules to reach the host), mounts the host's
//! root read-only over virtiofs under a writable tmpfs overlay, switches to it and runs a
//! command with the host's own programs, binaries and tests. Its console is streamed and
//! kept; the VM is bounded in time and nothing outlives the run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::process::Process;

/// Where `scripts/vm-kernel.sh` unpacks kernels, one directory per package.
pub const CACHE: &str = "/var/cache/brindle/vm";

/// The modules the initramfs loads, in order, to reach the host's files: virtio PCI,
/// virtiofs (over fuse) and overlayfs.
const BOOT_MODULES: [&str; 8] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "fs/fuse/fuse",
    "fs/fuse/virtiofs",
    "fs/overlayfs/overlay",
];

/// What the command's last line says, with its exit status after it.
const EXIT_MARKER: &str = "brindle-vm: exit status ";

/// An unpacked kernel: its image and its modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `boot/vmlinuz-<release>`.
    pub image: PathBuf,
    /// `lib/modules/<release>`, with `modules.dep`.
    pub modules: PathBuf,
    /// The release, as `uname -r` says it.
    pub release: String,
}

impl Kernel {
    /// The kernel `scripts/vm-kernel.sh` unpacked, or why there is none.
    pub fn find() -> anyhow::Result<Kernel> {
        let hint = "run scripts/install-deps.sh (it unpacks Debian's cloud kernel)";
        let mut packages: Vec<PathBuf> = std::fs::read_dir(CACHE)
            .with_context(|| format!("{CACHE}: {hint}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("ready").exists())
            .collect();
        packages.sort();
        let root = packages.pop().with_context(|| format!("no kernel in {CACHE}: {hint}"))?;
        let modules_dir = root.join("lib/modules");
        let release = std::fs::read_dir(&modules_dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .with_context(|| format!("{} holds no modules", modules_dir.display()))?;
        Ok(Kernel { image: root.join(format!("boot/vmlinuz-{release}")), modules: modules_dir.join(&release), release })
    }
}

/// How a command in the VM ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its exit status (`None`: the VM ended without saying, or ran out of time).
    pub status: Option<i32>,
    /// The VM's console: the kernel's messages and the command's output.
    pub console: String,
}

impl Outcome {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Boots `kernel` and runs `script` (a shell script) as root in `cwd`, with the host's files
/// (read-only, with writes kept in memory) and this kernel's modules; `timeout` bounds the
/// whole run. Console lines are printed as they come, prefixed `vm| `.
pub fn run(kernel: &Kernel, script: &str, cwd: &Path, timeout: Duration) -> anyhow::Result<Outcome> {
    let work = tempfile::Builder::new().prefix("brindle-vm-").tempdir()?;
    let initramfs = work.path().join("initramfs.cpio");
    build_initramfs(kernel, script, cwd, &work.path().join("initramfs"), &initramfs)?;
    let socket = work.path().join("virtiofs.sock");
    let _files = share_host_read_only(&work.path().join("host"), &socket)?;
    let started = Instant::now();
    while !socket.exists() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "virtiofsd did not make {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg",
        "-m",
        "2G",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&kernel.image)
    .arg("-initrd")
    .arg(&initramfs)
    .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
    .arg("-chardev")
    .arg(format!("socket,id=host,path={}", socket.display()))
    .args(["-device", "vhost-user-fs-pci,chardev=host,tag=host"])
    .args(["-object", "memory-backend-memfd,id=mem,size=2G,share=on", "-numa", "node,memdev=mem"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut vm = Process(qemu.spawn().context("starting qemu-system-x86_64")?);
    let console = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        vm.0.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        vm.0.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let console = Arc::clone(&console);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                println!("vm| {line}");
                let mut text = console.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    while vm.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let timed_out = vm.running();
    drop(vm);
    for reader in readers {
        let _ = reader.join();
    }
    let console = std::mem::take(&mut *console.lock().unwrap_or_else(|e| e.into_inner()));
    let status = if timed_out {
        None
    } else {
        console.lines().rev().find_map(|l| l.trim().strip_prefix(EXIT_MARKER)).and_then(|s| s.trim().parse().ok())
    };
    Ok(Outcome { status, console })
}

/// Set inside the VM for a test [`here_or_in_a_vm`] sent there, so it runs and does not send
/// itself again.
const IN_VM: &str = "BRINDLE_IN_VM";

/// Whether this process runs inside the test VM.
pub fn inside() -> bool {
    std::env::var_os(IN_VM).is_some()
}

/// Whether the calling test should run here: yes where this kernel has every one of `modules`
/// (loading them if needed) or inside the VM. Otherwise the test is run again, alone, inside
/// the VM with `modules` loaded (its output streamed with the console) and this returns
/// `false` once it passed there; a failure there fails the test here, with the console.
/// The test is named by its thread, as the test harness names it.
pub fn here_or_in_a_vm(modules: &[&str]) -> bool {
    if inside() || modules.iter().all(|m| module_loads(m)) {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").expect("a test thread, named by the test harness");
    let kernel = Kernel::find().unwrap();
    let exe = std::env::current_exe().unwrap();
    let cwd = std::env::current_dir().unwrap();
    let script = format!(
        "modprobe -a {modules}
{IN_VM}=1 {exe} --exact {test} --nocapture --test-threads=1",
        modules = modules.join(" "),
        exe = exe.display()
    );
    let started = Instant::now();
    let outcome = run(&kernel, &script, &cwd, Duration::from_secs(600)).unwrap();
    println!("{test} ran in the VM ({}) for {:.1} s", kernel.release, started.elapsed().as_secs_f64());
    assert!(outcome.success(), "{test} failed in the VM (status {:?}); its console is above", outcome.status);
    false
}

/// Whether this kernel has `module`, loaded now if it was not.
fn module_loads(module: &str) -> bool {
    Path::new("/sys/module").join(module).exists()
        || Command::new("modprobe").arg("-q").arg(module).status().is_ok_and(|s| s.success())
}

/// Serves a read-only view of the host's root to the VM at `socket`: virtiofsd in a mount
/// namespace of its own, where `/` is bound read-only at `mountpoint`.
fn share_host_read_only(mountpoint: &Path, socket: &Path) -> anyhow::Result<Process> {
    std::fs::create_dir_all(mountpoint)?;
    let at = mountpoint.display();
    let script = format!(
        "mount --make-rprivate / && mount --bind / {at} && mount -o remount,bind,ro {at} && \
         exec /usr/lib/qemu/virtiofsd --socket-path={} -o source={at} -o cache=always -o sandbox=chroot",
        socket.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting virtiofsd")?;
    Ok(Process(child))
}

/// Writes the initramfs (a `newc` cpio archive made with busybox) for `script` to `out`,
/// staging its files in `dir`.
fn build_initramfs(kernel: &Kernel, script: &str, cwd: &Path, dir: &Path, out: &Path) -> anyhow::Result<()> {
    for sub in ["bin", "modules", "proc", "sys", "dev", "lower", "rw", "root"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("copying busybox (busybox-static)")?;
    let mut loads = String::new();
    for module in BOOT_MODULES {
        let name = Path::new(module).file_name().unwrap_or_default().to_string_lossy();
        std::fs::copy(kernel.modules.join(format!("kernel/{module}.ko")), dir.join(format!("modules/{name}.ko")))
            .with_context(|| format!("module {module} of {}", kernel.release))?;
        loads.push_str(&format!("insmod /modules/{name}.ko\n"));
    }
    let modules_on_host = kernel.modules.display();
    let release = &kernel.release;
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         {loads}\
         mount -t virtiofs -o ro host /lower\n\
         mount -t tmpfs rw /rw; mkdir -p /rw/upper /rw/work\n\
         mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /root\n\
         mount --move /proc /root/proc; mount --move /sys /root/sys; mount --move /dev /root/dev\n\
         mount -t tmpfs run /root/run\n\
         ln -s /proc/self/fd /root/dev/fd; ln -s /proc/self/fd/0 /root/dev/stdin\n\
         ln -s /proc/self/fd/1 /root/dev/stdout; ln -s /proc/self/fd/2 /root/dev/stderr\n\
         mkdir -p /root/lib/modules/{release}\n\
         mount --bind /lower{modules_on_host} /root/lib/modules/{release}\n\
         cp /command /root/run/brindle-vm-command\n\
         exec switch_root /root /bin/sh /run/brindle-vm-command\n"
    );
    // PID 1 must not exit: the VM powers off, then waits for it.
    let command = format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         mkdir -p /run/netns\n\
         cd {cwd} && (\n{script}\n)\n\
         echo \"{EXIT_MARKER}$?\"\n\
         echo o > /proc/sysrq-trigger\n\
         sleep 60\n",
        cwd = cwd.display()
    );
    std::fs::write(dir.join("init"), init)?;
    std::fs::write(dir.join("command"), command)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let files = Command::new("find").arg(".").current_dir(dir).output().context("listing the initramfs")?;
    let mut cpio = Command::new("/bin/busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out)?)
        .stderr(Stdio::null())
        .spawn()
        .context("busybox cpio")?;
    std::io::Write::write_all(&mut cpio.stdin.take().context("cpio's input")?, &files.stdout)?;
    anyhow::ensure!(cpio.wait()?.success(), "busybox cpio failed");
    Ok(())
}

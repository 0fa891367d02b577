//! The VM runner: Debian's cloud kernel under qemu, the host's files and programs inside.

use std::time::Duration;

use brindle_e2e::vm::{self, Kernel};

/// A command in the VM runs on its kernel with the host's programs, may load the modules this
/// machine's kernel lacks (ipip, wireguard), writes only to memory, and reports its status.
#[test]
fn a_command_runs_in_the_vm_with_the_modules_this_kernel_lacks() {
    let kernel = Kernel::find().unwrap();
    let marker = format!("/etc/brindle-vm-{}", std::process::id());
    let script = format!(
        "uname -r\n\
         ip netns add vmtest && ip -n vmtest link add tunl1 type ipip remote 10.0.0.2 local 10.0.0.1 && \
         ip -n vmtest link add wg0 type wireguard && ip -n vmtest -o link show\n\
         touch {marker} && test -f {marker} && echo written\n\
         exit 7"
    );
    let cwd = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = std::time::Instant::now();
    let outcome = vm::run(&kernel, &script, cwd, Duration::from_secs(120)).unwrap();
    println!("the VM ran for {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(outcome.status, Some(7), "the script's own status comes back:\n{}", outcome.console);
    let console = &outcome.console;
    assert!(console.contains(&kernel.release), "not the VM's kernel:\n{console}");
    assert!(console.contains("tunl1@") && console.contains("wg0:"), "no ipip or wireguard link:\n{console}");
    assert!(console.contains("written"), "the VM could not write:\n{console}");
    assert!(!std::path::Path::new(&marker).exists(), "the VM wrote to the host's files");
}

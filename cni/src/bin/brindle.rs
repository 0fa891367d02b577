//! The `brindle` CNI plugin.

fn main() -> std::process::ExitCode {
    brindle_cni::skel::run(
        "brindle",
        "a proxy-ARP veth per pod with the 169.254.1.1 gateway",
        brindle_cni::plugin::handle,
    )
}

//! The `brindle-ipam` CNI IPAM plugin.

fn main() -> std::process::ExitCode {
    brindle_cni::skel::run("brindle-ipam", "block IPAM shared through the datastore", brindle_cni::ipam_plugin::handle)
}

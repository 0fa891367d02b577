//! The network-namespace harness shared by brindle's end-to-end tests, benchmarks and
//! `brindle-lab`: uniquely named namespaces removed by guards, and CNI plugins run exactly
//! the way a container runtime runs them.

pub mod bird;
pub mod cni;
pub mod kubelet;
pub mod lab;
pub mod netns;
pub mod process;
pub mod underlay;
pub mod vm;
pub mod wait;

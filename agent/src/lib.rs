//! brindle-node's internals: the syncer, the pure calculation of the desired dataplane, and
//! the drivers that make the kernel match it. The `brindle-node` binary is the product;
//! this library exists so benchmarks can drive the same code. It is not a stable API.

pub mod autodetect;
pub mod bgp;
pub mod bird;
pub mod bird_daemon;
pub mod calc;
pub mod dataplane;
#[cfg(test)]
mod fixtures;
pub mod logging;
pub mod node_condition;
pub mod passes;
pub mod pod_facts;
pub mod policy;
pub mod services;
pub mod startup;
pub mod status;
pub mod syncer;

//! brindle-bgp: a BGP-4 speaker library. It knows nothing of Kubernetes.
//!
//! Today it holds the message codec ([`wire`]); the session state machine, the RIB and the
//! speaker handle come next (DESIGN.md).

pub mod wire;

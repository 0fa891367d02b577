//! A BGP-4 speaker library: codec, session state machine, RIB and route reflection. Knows nothing of Kubernetes.
//!
//! Not implemented yet: DESIGN.md describes what will live here.

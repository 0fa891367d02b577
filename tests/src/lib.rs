//! The network-namespace lab harness and end-to-end tests (binary brindle-lab).
//!
//! Not implemented yet: DESIGN.md describes what will live here.

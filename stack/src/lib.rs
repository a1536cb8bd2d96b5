//! One Envoy renderer and one process supervisor for the demo (`make run`), the end-to-end
//! suite (`tests/`) and the benchmark (`make bench`).
//!
//! - [`render`]: fills `envoy/envoy.yaml.in` in its parsed form, so any value is safe, and
//!   derives extra listeners from it (the benchmark's rows).
//! - [`proc`]: children in sessions of their own, stopped with everything in their session;
//!   bounded waits on a condition.
//! - [`services`]: mock-as, sample-sr and Envoy on loopback, started and waited for.
//! - [`http`]: a minimal HTTP/1.1 client.
//!
//! The `stack` binary (`stack up`, `stack render`) is built on these.

pub mod http;
pub mod proc;
pub mod render;
pub mod services;

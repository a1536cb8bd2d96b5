//! Pure logic of the ProConnect / RFC 7662 introspection filter.
//!
//! Nothing here calls proxy-wasm: the adapter in the root crate reads headers and time from the
//! host, hands them to these functions, and turns their results into host calls. Everything is
//! therefore unit-tested natively.

// Signed answers and strict JSON live in their own crate (built for speed), under their names.
pub use introspection_jose::{claims, der, json, jwt};

pub mod bearer;
pub mod cache;
pub mod callout;
pub mod config;
pub mod decision;
pub mod discovery;
pub mod fault;
pub mod floodlog;
pub mod foreign;
pub mod gate;
pub mod headers;
pub mod host;
pub mod mock;
pub mod reply;
pub mod response;
pub mod rules;
pub mod schedule;
pub mod secret;
pub mod selftest;

pub use config::{ClientAuth, Config, ConfigError};
pub use decision::{Claims, Decision, Denial};
pub use fault::{Fault, HostError};
pub use gate::{Effects, Gate, StartError, Step, Trailers, Verdict};
pub use host::Host;

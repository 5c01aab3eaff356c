//! The HTTP delivery engine. A record handed to it ends in exactly one callback, success or
//! failure, whatever happens on the way: retries, timeouts, resets, an open circuit, shutdown.
//!
//! The pieces are small and separate, in the spirit of Vector's sinks:
//! - `config`: the settings as users write them (JSON), with defaults and validation;
//! - `classify`, `backoff`: what an answer means, and how long to wait before the next attempt;
//! - `breaker`, `concurrency`: per-URL circuit breaker and adaptive concurrency;
//! - `sign`, `redact`, `guard`: request signing, keeping secrets out of logs, and refusing
//!   targets in denied address ranges;
//! - `offsets`: which offsets may be committed once records end out of order;
//! - `request`, `client`, `tls`: the request of one attempt, the keep-alive connections that
//!   carry it, and whom an `https` receiver must prove to be;
//! - `engine`: the loop that drives each record to its one outcome, reported through `report`;
//! - `validation`: the CloudEvents webhook handshake and the request rate it grants.

pub mod backoff;
pub mod breaker;
pub mod classify;
mod client;
pub mod concurrency;
pub mod config;
pub mod engine;
pub mod guard;
pub mod offsets;
pub mod redact;
pub mod report;
mod request;
pub mod sign;
pub mod tls;
pub mod validation;

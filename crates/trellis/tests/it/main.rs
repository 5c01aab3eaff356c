//! End-to-end tests of the `trellis` binary as a user runs it: a child process on 127.0.0.1:0
//! with a temp data dir.

mod cli;
mod cli_subscriptions;
mod crash;
mod delivery_faults;
mod delivery_scenarios;
mod grpc;
mod publish_cli;
mod subscriptions;

use std::path::Path;

pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_trellis"))
}

/// Publishes one binary-mode event with text data to `topic`, as a producer would.
pub(crate) async fn publish(
    client: &reqwest::Client,
    base: &str,
    topic: &str,
    id: &str,
    data: String,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}/v1/topics/{topic}/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/trellis-tests")
        .header("ce-type", "dev.trellis.test")
        .header("content-type", "text/plain")
        .body(data)
        .send()
        .await
}

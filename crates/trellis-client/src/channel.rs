//! Opening a gRPC channel to one endpoint, with the settings the producer and the consumer share.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Connects to `uri` within `connect_timeout`; the error is one line naming the endpoint.
pub(crate) async fn open(uri: &str, connect_timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|error| format!("{uri}: {error}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // The server's windows: adaptive ones would restart at 64 KiB on every reconnect, when a
        // consumer has the most to catch up on.
        .initial_stream_window_size(trellis_proto::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(trellis_proto::CONNECTION_WINDOW_BYTES)
        // Notices a peer that vanished without a reset (a cable pulled, a VM frozen).
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    match tokio::time::timeout(connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(format!("{uri}: {error}")),
        Err(_) => Err(format!("{uri}: connection timed out")),
    }
}

//! Opening a gRPC channel to one endpoint, with the settings the producer and the consumer share.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// HTTP/2 flow-control windows, per stream and per connection: also the most unread data the
/// client buffers for one connection.
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Connects to `uri` within `connect_timeout`; the error is one line naming the endpoint.
pub(crate) async fn open(uri: &str, connect_timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|error| format!("{uri}: {error}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Windows as large as the server's: a stream moves at most one window per round trip,
        // and adaptive ones restart at 64 KiB on every reconnect, when a consumer has the most
        // to catch up on.
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        // Notices a peer that vanished without a reset (a cable pulled, a VM frozen).
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    match tokio::time::timeout(connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(format!("{uri}: {error}")),
        Err(_) => Err(format!("{uri}: connection timed out")),
    }
}

//! Connection metrics of the HTTP and gRPC listeners, labelled by listener (`http`, `grpc`).

use super::limits::Expiry;

pub(crate) const CONNECTIONS_OPEN: &str = "trellis_connections_open";
pub(crate) const CONNECTIONS_ACCEPTED: &str = "trellis_connections_accepted_total";
pub(crate) const CONNECTIONS_REFUSED: &str = "trellis_connections_refused_total";
pub(crate) const CONNECTIONS_TIMED_OUT: &str = "trellis_connections_timed_out_total";
pub(crate) const ACCEPT_ERRORS: &str = "trellis_connection_accept_errors_total";

pub(crate) fn describe() {
    metrics::describe_gauge!(
        CONNECTIONS_OPEN,
        "Connections open, per listener (http, grpc)."
    );
    metrics::describe_counter!(
        CONNECTIONS_ACCEPTED,
        "Connections accepted and served, per listener."
    );
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at once because the listener had max_connections open."
    );
    metrics::describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "Connections closed by a timeout, per listener and reason (idle_timeout, \
         header_timeout, body_timeout, shutdown)."
    );
    metrics::describe_counter!(
        ACCEPT_ERRORS,
        "Failed accept calls, per listener (out of file descriptors, say); the listener waits \
         a moment and accepts again."
    );
}

pub(crate) fn opened(listener: &'static str) {
    metrics::gauge!(CONNECTIONS_OPEN, "listener" => listener).increment(1.0);
    metrics::counter!(CONNECTIONS_ACCEPTED, "listener" => listener).increment(1);
}

pub(crate) fn closed(listener: &'static str) {
    metrics::gauge!(CONNECTIONS_OPEN, "listener" => listener).decrement(1.0);
}

pub(crate) fn refused(listener: &'static str) {
    metrics::counter!(CONNECTIONS_REFUSED, "listener" => listener).increment(1);
}

pub(crate) fn accept_failed(listener: &'static str) {
    metrics::counter!(ACCEPT_ERRORS, "listener" => listener).increment(1);
}

pub(crate) fn timed_out(listener: &'static str, why: Expiry) {
    metrics::counter!(CONNECTIONS_TIMED_OUT, "listener" => listener, "reason" => why.label())
        .increment(1);
}

pub(crate) fn cut_at_shutdown(listener: &'static str, count: usize) {
    metrics::counter!(CONNECTIONS_TIMED_OUT, "listener" => listener, "reason" => "shutdown")
        .increment(u64::try_from(count).unwrap_or(u64::MAX));
}

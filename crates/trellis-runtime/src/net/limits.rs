//! Per-listener connection settings and the deadline rule the watchdog applies.

use std::time::Duration;

/// Limits of one listener (HTTP or gRPC). A timeout of `None` is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is accepted and closed at once (counted and logged),
    /// so the clients already connected keep their latency.
    pub max_connections: usize,
    /// From the first byte of an HTTP/1 request head until the head is complete.
    pub header_read_timeout: Option<Duration>,
    /// With no request in flight and nothing received, the connection is closed after this.
    pub idle_timeout: Option<Duration>,
    /// While a request body is being read: the longest wait for its next bytes.
    pub body_read_timeout: Option<Duration>,
}

impl ConnectionLimits {
    /// The HTTP listener's defaults.
    pub fn http_default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 4096,
            header_read_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            body_read_timeout: Some(Duration::from_secs(30)),
        }
    }

    /// The gRPC listener's defaults. Streams are long-lived and may be quiet for as long as a
    /// topic is, so only a connection without any call is timed out; HTTP/2 pings find dead
    /// peers under a call.
    pub fn grpc_default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 4096,
            header_read_timeout: None,
            idle_timeout: Some(Duration::from_secs(300)),
            body_read_timeout: None,
        }
    }
}

/// Why a connection was closed by its watchdog, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    Idle,
    Header,
    Body,
}

impl Expiry {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Expiry::Idle => "idle_timeout",
            Expiry::Header => "header_timeout",
            Expiry::Body => "body_timeout",
        }
    }
}

/// What the watchdog knows of a connection, in milliseconds since it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Activity {
    /// When bytes last arrived (or the connection was accepted).
    pub(crate) last_read: u64,
    /// When the last request ended (or the connection was accepted).
    pub(crate) idle_since: u64,
    /// When the first byte of a request head not yet complete arrived.
    pub(crate) head_started: Option<u64>,
    /// Requests (HTTP/1) or calls (HTTP/2 streams) in flight.
    pub(crate) in_flight: usize,
    /// Request bodies still being read.
    pub(crate) bodies_reading: usize,
}

/// When the connection expires if nothing changes, and why; `None` while it may wait forever
/// (a request whose body is read is being answered).
pub(crate) fn deadline(activity: &Activity, limits: &ConnectionLimits) -> Option<(u64, Expiry)> {
    let after = |from: u64, timeout: Option<Duration>, why: Expiry| {
        timeout.map(|timeout| {
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            (from.saturating_add(ms), why)
        })
    };
    if activity.in_flight > 0 {
        if activity.bodies_reading > 0 {
            return after(activity.last_read, limits.body_read_timeout, Expiry::Body);
        }
        return None;
    }
    if let Some(started) = activity.head_started
        && limits.header_read_timeout.is_some()
    {
        return after(started, limits.header_read_timeout, Expiry::Header);
    }
    after(
        activity.last_read.max(activity.idle_since),
        limits.idle_timeout,
        Expiry::Idle,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 10,
            header_read_timeout: Some(Duration::from_millis(100)),
            idle_timeout: Some(Duration::from_millis(1000)),
            body_read_timeout: Some(Duration::from_millis(300)),
        }
    }

    #[test]
    fn an_idle_connection_expires_after_the_idle_timeout_from_its_last_bytes() {
        let activity = Activity {
            last_read: 50,
            idle_since: 20,
            ..Activity::default()
        };
        assert_eq!(deadline(&activity, &limits()), Some((1050, Expiry::Idle)));
    }

    #[test]
    fn a_partial_head_expires_after_the_header_timeout_however_it_trickles() {
        let activity = Activity {
            last_read: 5000,
            head_started: Some(10),
            ..Activity::default()
        };
        assert_eq!(deadline(&activity, &limits()), Some((110, Expiry::Header)));
    }

    #[test]
    fn a_body_expires_only_when_its_bytes_stop_coming() {
        let activity = Activity {
            last_read: 700,
            in_flight: 1,
            bodies_reading: 1,
            ..Activity::default()
        };
        assert_eq!(deadline(&activity, &limits()), Some((1000, Expiry::Body)));
    }

    #[test]
    fn a_request_being_answered_never_expires() {
        let activity = Activity {
            in_flight: 2,
            ..Activity::default()
        };
        assert_eq!(deadline(&activity, &limits()), None);
    }

    #[test]
    fn timeouts_that_are_off_never_expire() {
        let off = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: None,
            idle_timeout: None,
            body_read_timeout: None,
        };
        let head = Activity {
            head_started: Some(1),
            ..Activity::default()
        };
        assert_eq!(deadline(&head, &off), None);
        let body = Activity {
            in_flight: 1,
            bodies_reading: 1,
            ..Activity::default()
        };
        assert_eq!(deadline(&body, &off), None);
    }
}

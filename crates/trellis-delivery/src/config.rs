//! A subscription's `sink` and `delivery` settings as users write them in `POST /v1/subscriptions`
//! (JSON): the types, their defaults, and the checks that run before anything is stored. Every
//! error names the offending field as a dotted path (`delivery.backoff.multiplier`,
//! `sink.urls[1]`), so the API can hand it straight back to the user.
//!
//! Secrets. A sink may carry credentials in three places: `secret` (the HMAC signing key),
//! header values such as `Authorization`, and URL query parameters such as `access_token` (the
//! two schemes the CloudEvents webhook spec allows). One rule covers all three:
//! - `Debug` and `Serialize` (the API view, what `GET` returns) print `"***"` in their place, so
//!   logging a spec or returning it from the API cannot leak them: every query value (`redact`'s
//!   `redact_url`, which logs use too) and every `headers` value, whatever the header's name.
//!   A name cannot tell which header carries a credential (`X-JWT`, `X-Session`, `X-Pass`, a
//!   `Bearer` token under any name), and the user who set a header knows its value;
//! - `SinkSpec::to_stored_json` is the one, explicitly named, way to get the real values out,
//!   for the metadata store; `SinkSpec::from_json` reads it back;
//! - `validate` refuses the `"***"` placeholder, so a `GET`, edit, `PUT` round trip fails loudly
//!   instead of storing the placeholder as a credential.
//!
//! This module does no I/O: it neither resolves hosts nor checks addresses against the deny
//! list (`guard` does that when the engine is built and when connecting), and the outer subscription object (`name`, `topic`,
//! `start`, `dead_letter_topic`) belongs to the runtime.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Unexpected, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::redact::{REDACTED, redact_url};

/// Where an event goes: `sink` in a subscription.
///
/// `Debug` and `Serialize` redact credentials (see the module docs); use
/// [`SinkSpec::to_stored_json`] to keep them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a sink object, e.g. {\"urls\": [\"https://example.com/hook\"]}"
)]
pub struct SinkSpec {
    /// One or more absolute `http` or `https` URLs (no fragment, no `user:password@`). Required.
    #[serde(serialize_with = "serialize_redacted_urls")]
    pub urls: Vec<String>,
    /// How events are spread over `urls`. Default `round_robin`.
    #[serde(default)]
    pub strategy: Strategy,
    /// The CloudEvents HTTP content mode. Default `binary`.
    #[serde(default)]
    pub mode: Mode,
    /// Extra request headers; their values are shown as `***` everywhere but in the requests
    /// (and the stored form). Headers Trellis sets itself (`content-type`, `ce-*`, `trellis-*`,
    /// `x-request-id`, `traceparent`, `tracestate`, `webhook-request-origin`, `host`,
    /// `content-length`) and hop-by-hop headers are refused. Default none.
    #[serde(default, serialize_with = "serialize_redacted_headers")]
    pub headers: BTreeMap<String, String>,
    /// Key for HMAC request signing, at least 16 bytes. Default none: requests are not signed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_redacted_secret"
    )]
    pub secret: Option<String>,
    /// Do the CloudEvents webhook validation handshake (an `OPTIONS` request) before the first
    /// delivery to each URL. Default `false`.
    #[serde(default)]
    pub validate: bool,
}

/// How a sink with several URLs spreads events over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each event goes to one URL, taken in turn; a retry fails over to the next URL.
    #[default]
    RoundRobin,
    /// Each event goes to every URL; it has ended once every URL has delivered or given up.
    Broadcast,
}

/// The CloudEvents HTTP content mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The event's data is the body; attributes travel in `ce-*` headers.
    #[default]
    Binary,
    /// The whole event is the body, as `application/cloudevents+json`.
    Structured,
}

/// How hard Trellis tries to deliver each record: `delivery` in a subscription. Every key is
/// optional; a missing key takes its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a delivery object")]
pub struct DeliverySpec {
    /// Attempts per record (with `broadcast`: per record and URL), the first one included;
    /// 1 means no retries. Default 10, at most 1000.
    pub max_attempts: u32,
    /// Time budget per record, from its first attempt; when it runs out the record is
    /// dead-lettered whatever `max_attempts` says. Default 300000 (5 minutes), at most 7 days.
    pub max_delivery_ms: u64,
    /// Waits between attempts.
    pub backoff: BackoffSpec,
    /// Cap on a `Retry-After` answer (429, 503). The wait before the next attempt is the larger
    /// of the backoff and the capped `Retry-After`; 0 ignores `Retry-After` (not recommended:
    /// the CloudEvents webhook spec says senders must observe it). A wait that does not fit the
    /// rest of `max_delivery_ms` dead-letters the record, saying so. Default 60000, at most
    /// 1 day.
    pub retry_after_max_ms: u64,
    /// Time allowed to open a connection (TCP and TLS). Default 5000.
    pub connect_timeout_ms: u64,
    /// Time allowed for one attempt, from sending the request to the end of the response.
    /// At most `max_delivery_ms`. Default 30000.
    pub request_timeout_ms: u64,
    /// Requests in flight per URL: a number for a fixed limit, or `{"min", "max"}` for a limit
    /// that adapts to the endpoint's latency and errors. Default `{"min": 1, "max": 64}`.
    pub concurrency: ConcurrencySpec,
    /// The per-URL circuit breaker.
    pub breaker: BreakerSpec,
    /// Send events in batches (CloudEvents batched mode). Default absent: one event per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// Status codes to retry on top of the built-in ones (408, 429 and 5xx except 501).
    /// Codes 100 to 599, not 2xx, not also in `drop_on`. Default none.
    pub retry_on: Vec<u16>,
    /// Status codes that end a record at once, without retries (it goes to the dead-letter
    /// topic, if there is one). Codes 100 to 599, not 2xx. Default none.
    pub drop_on: Vec<u16>,
}

/// Exponential backoff between attempts: `initial_ms`, then each wait `multiplier` times the
/// previous one, up to `max_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a backoff object")]
pub struct BackoffSpec {
    /// The first wait. Default 1000, at least 1.
    pub initial_ms: u64,
    /// The longest wait. Default 60000, at most 1 day.
    pub max_ms: u64,
    /// Growth factor, from 1.0 (constant waits) to 10.0. Default 2.0.
    pub multiplier: f64,
    /// Wait a random time between zero and the computed wait ("full jitter"). Default `true`.
    pub jitter: bool,
}

/// Requests in flight per URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ConcurrencySpec {
    /// Exactly this many, 1 to 1024. Written as a plain number.
    Fixed(usize),
    /// A limit that grows while the endpoint keeps up and shrinks on errors, timeouts and
    /// rising latency, staying within `min..=max` (1 to 1024). Written as `{"min", "max"}`;
    /// a missing key takes its default (`min` 1, `max` 64).
    Adaptive { min: usize, max: usize },
}

/// The per-URL circuit breaker: it opens when `failure_threshold` attempts in a row fail, or
/// when at least `failure_ratio` of the attempts in the last `window_ms` failed (once there were
/// at least `min_requests` of them). While open, no request goes to the URL and records wait;
/// after `cool_down_ms` one probe is let through, and its result closes or reopens the breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a breaker object")]
pub struct BreakerSpec {
    /// Consecutive failed attempts that open the breaker; 0 turns this rule off. Default 5.
    pub failure_threshold: u32,
    /// Share of failed attempts in the window at or above which the breaker opens, 0.0 to 1.0;
    /// 0.0 turns this rule off. Default 0.5.
    pub failure_ratio: f64,
    /// Attempts the window must hold before `failure_ratio` applies. Default 20.
    pub min_requests: u32,
    /// Length of the sliding window for `failure_ratio`. Default 60000.
    pub window_ms: u64,
    /// How long the breaker stays open before a probe. Default 30000.
    pub cool_down_ms: u64,
}

/// Batching: a request carries up to `max_events` events, and waits at most `max_wait_ms` for
/// the batch to fill. A failed batch is retried whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a batch object")]
pub struct BatchSpec {
    /// Events per request, 1 to 1000. Default 100.
    pub max_events: usize,
    /// Longest wait for a batch to fill, 1 to 60000. Default 1000.
    pub max_wait_ms: u64,
}

/// A rejected setting: `field` is its dotted path in the request (`delivery.backoff.multiplier`,
/// `sink.urls[1]`), `message` says what is wrong and, where it helps, what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SinkSpec {
    /// Parses and validates a `sink` object. `prefix` is the object's path in the request
    /// (usually `"sink"`) and starts every error's field path.
    pub fn from_json(value: &Value, prefix: &str) -> Result<Self, SpecError> {
        refuse_arrays(value, prefix, &[])?;
        let spec: SinkSpec = parse(value, prefix)?;
        spec.validate(prefix)?;
        Ok(spec)
    }

    /// Checks what the types cannot: URLs, header names and values, the secret's length.
    pub fn validate(&self, prefix: &str) -> Result<(), SpecError> {
        let urls_field = join(prefix, "urls");
        if self.urls.is_empty() {
            return Err(spec_error(
                urls_field,
                "must list at least one URL, e.g. [\"https://example.com/hook\"]",
            ));
        }
        if self.urls.len() > MAX_URLS {
            return Err(spec_error(
                urls_field,
                format!("must list at most {MAX_URLS} URLs; got {}", self.urls.len()),
            ));
        }
        let mut parsed: Vec<http::Uri> = Vec::with_capacity(self.urls.len());
        for (url_idx, url) in self.urls.iter().enumerate() {
            let field = format!("{urls_field}[{url_idx}]");
            let uri = check_url(url).map_err(|message| spec_error(&field, message))?;
            if let Some(earlier_idx) = parsed.iter().position(|earlier| *earlier == uri) {
                return Err(spec_error(
                    field,
                    format!(
                        "duplicates {urls_field}[{earlier_idx}]; got {:?}",
                        redact_url(url)
                    ),
                ));
            }
            parsed.push(uri);
        }

        let headers_field = join(prefix, "headers");
        // Keyed by the lowercased name: `X-Token` and `x-token` are the same header.
        let mut seen_names: BTreeMap<String, &str> = BTreeMap::new();
        for (name, value) in &self.headers {
            let field = format!("{headers_field}.{name}");
            let header_name =
                check_header(name, value).map_err(|message| spec_error(&field, message))?;
            if let Some(earlier) = seen_names.insert(header_name.as_str().to_owned(), name) {
                return Err(spec_error(
                    field,
                    format!(
                        "duplicates {headers_field}.{earlier} (header names are case-insensitive)"
                    ),
                ));
            }
        }

        if let Some(secret) = &self.secret {
            let field = join(prefix, "secret");
            if secret == REDACTED {
                return Err(spec_error(field, PLACEHOLDER_MESSAGE));
            }
            // The secret itself is never echoed: error messages end up in logs and responses.
            if secret.len() < MIN_SECRET_BYTES {
                return Err(spec_error(
                    field,
                    format!(
                        "must be at least {MIN_SECRET_BYTES} bytes; got {} bytes",
                        secret.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The spec as JSON with every credential in clear, for the metadata store only; anything
    /// shown to people goes through `Serialize`, which redacts them. [`SinkSpec::from_json`]
    /// reads this back.
    pub fn to_stored_json(&self) -> Value {
        // Destructured so that a new field cannot be forgotten here.
        let SinkSpec {
            urls,
            strategy,
            mode,
            headers,
            secret,
            validate,
        } = self;
        let mut object = Map::new();
        object.insert("urls".to_owned(), Value::from(urls.clone()));
        object.insert("strategy".to_owned(), Value::from(strategy.as_str()));
        object.insert("mode".to_owned(), Value::from(mode.as_str()));
        let headers = headers
            .iter()
            .map(|(name, value)| (name.clone(), Value::from(value.as_str())))
            .collect();
        object.insert("headers".to_owned(), Value::Object(headers));
        if let Some(secret) = secret {
            object.insert("secret".to_owned(), Value::from(secret.as_str()));
        }
        object.insert("validate".to_owned(), Value::from(*validate));
        Value::Object(object)
    }
}

impl fmt::Debug for SinkSpec {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SinkSpec {
            urls,
            strategy,
            mode,
            headers,
            secret,
            validate,
        } = self;
        let urls: Vec<String> = urls.iter().map(|url| redact_url(url)).collect();
        formatter
            .debug_struct("SinkSpec")
            .field("urls", &urls)
            .field("strategy", strategy)
            .field("mode", mode)
            .field("headers", &RedactedHeaders(headers))
            .field("secret", &secret.as_ref().map(|_| REDACTED))
            .field("validate", validate)
            .finish()
    }
}

impl Strategy {
    /// The name users write.
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Broadcast => "broadcast",
        }
    }
}

impl Mode {
    /// The name users write.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Binary => "binary",
            Mode::Structured => "structured",
        }
    }
}

impl DeliverySpec {
    /// Parses and validates a `delivery` object; `{}` gives the defaults. `prefix` is the
    /// object's path in the request (usually `"delivery"`) and starts every error's field path.
    pub fn from_json(value: &Value, prefix: &str) -> Result<Self, SpecError> {
        refuse_arrays(value, prefix, &["backoff", "breaker", "batch"])?;
        let spec: DeliverySpec = parse(value, prefix)?;
        spec.validate(prefix)?;
        Ok(spec)
    }

    /// Checks ranges and the rules that tie fields together.
    pub fn validate(&self, prefix: &str) -> Result<(), SpecError> {
        let field = |name: &str| join(prefix, name);
        check_range(field("max_attempts"), self.max_attempts, 1, MAX_ATTEMPTS)?;
        check_range(
            field("max_delivery_ms"),
            self.max_delivery_ms,
            1,
            MAX_DELIVERY_MS,
        )?;
        self.backoff.validate(&field("backoff"))?;
        check_range(
            field("retry_after_max_ms"),
            self.retry_after_max_ms,
            0,
            MAX_RETRY_AFTER_MS,
        )?;
        check_range(
            field("connect_timeout_ms"),
            self.connect_timeout_ms,
            1,
            MAX_CONNECT_TIMEOUT_MS,
        )?;
        check_range(
            field("request_timeout_ms"),
            self.request_timeout_ms,
            1,
            MAX_DELIVERY_MS,
        )?;
        if self.request_timeout_ms > self.max_delivery_ms {
            return Err(spec_error(
                field("request_timeout_ms"),
                format!(
                    "must not exceed {} ({}); got {}",
                    field("max_delivery_ms"),
                    self.max_delivery_ms,
                    self.request_timeout_ms
                ),
            ));
        }
        self.concurrency.validate(&field("concurrency"))?;
        self.breaker.validate(&field("breaker"))?;
        if let Some(batch) = &self.batch {
            batch.validate(&field("batch"))?;
        }
        check_status_codes(&field("retry_on"), &self.retry_on)?;
        check_status_codes(&field("drop_on"), &self.drop_on)?;
        for (code_idx, code) in self.drop_on.iter().enumerate() {
            if self.retry_on.contains(code) {
                return Err(spec_error(
                    format!("{}[{code_idx}]", field("drop_on")),
                    format!(
                        "{code} is also in {}; a status is either retried or dropped",
                        field("retry_on")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Applies a JSON merge patch (RFC 7396) to these settings, then parses and validates the
    /// result: `PATCH` on a subscription's `delivery`. A key set to `null` goes back to its
    /// default (for `batch`: no batching); nested objects merge key by key; a number replaces
    /// an adaptive `concurrency` object and an object replaces a number.
    pub fn patched(&self, patch: &Value, prefix: &str) -> Result<Self, SpecError> {
        let mut merged = serde_json::to_value(self).map_err(|error| {
            spec_error(
                prefix,
                format!("the current settings cannot be written as JSON: {error}"),
            )
        })?;
        merge_patch(&mut merged, patch);
        Self::from_json(&merged, prefix)
    }
}

impl BackoffSpec {
    fn validate(&self, prefix: &str) -> Result<(), SpecError> {
        let field = |name: &str| join(prefix, name);
        check_range(field("initial_ms"), self.initial_ms, 1, MAX_BACKOFF_MS)?;
        check_range(field("max_ms"), self.max_ms, 1, MAX_BACKOFF_MS)?;
        if self.initial_ms > self.max_ms {
            return Err(spec_error(
                field("initial_ms"),
                format!(
                    "must not exceed {} ({}); got {}",
                    field("max_ms"),
                    self.max_ms,
                    self.initial_ms
                ),
            ));
        }
        // The negated range also catches NaN.
        if !(1.0..=MAX_MULTIPLIER).contains(&self.multiplier) {
            return Err(spec_error(
                field("multiplier"),
                format!(
                    "must be between 1.0 and {MAX_MULTIPLIER:.1}; got {}",
                    self.multiplier
                ),
            ));
        }
        Ok(())
    }
}

impl ConcurrencySpec {
    fn validate(&self, prefix: &str) -> Result<(), SpecError> {
        match *self {
            ConcurrencySpec::Fixed(limit) => {
                check_range(prefix.to_owned(), limit, 1, MAX_CONCURRENCY)
            }
            ConcurrencySpec::Adaptive { min, max } => {
                check_range(join(prefix, "min"), min, 1, MAX_CONCURRENCY)?;
                check_range(join(prefix, "max"), max, 1, MAX_CONCURRENCY)?;
                if min > max {
                    return Err(spec_error(
                        join(prefix, "min"),
                        format!("must not exceed {} ({max}); got {min}", join(prefix, "max")),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl BreakerSpec {
    fn validate(&self, prefix: &str) -> Result<(), SpecError> {
        let field = |name: &str| join(prefix, name);
        check_range(
            field("failure_threshold"),
            self.failure_threshold,
            0,
            MAX_BREAKER_COUNT,
        )?;
        // The negated range also catches NaN.
        if !(0.0..=1.0).contains(&self.failure_ratio) {
            return Err(spec_error(
                field("failure_ratio"),
                format!("must be between 0.0 and 1.0; got {}", self.failure_ratio),
            ));
        }
        check_range(
            field("min_requests"),
            self.min_requests,
            1,
            MAX_BREAKER_COUNT,
        )?;
        check_range(field("window_ms"), self.window_ms, 1, MAX_BREAKER_MS)?;
        check_range(field("cool_down_ms"), self.cool_down_ms, 1, MAX_BREAKER_MS)?;
        Ok(())
    }
}

impl BatchSpec {
    fn validate(&self, prefix: &str) -> Result<(), SpecError> {
        check_range(
            join(prefix, "max_events"),
            self.max_events,
            1,
            MAX_BATCH_EVENTS,
        )?;
        check_range(
            join(prefix, "max_wait_ms"),
            self.max_wait_ms,
            1,
            MAX_BATCH_WAIT_MS,
        )?;
        Ok(())
    }
}

// Defaults, with the reasons; peers' figures are from shared/reference/delivery-peers.md.

// Knative's cluster default is 10 retries and Redpanda Connect's 3; Vector and Dapr retry forever.
// Trellis has a dead-letter topic and a time budget, so a bounded count in Knative's range:
// with the default backoff, 10 attempts span about 4 minutes of waits, inside the 5 minute budget.
const DEFAULT_MAX_ATTEMPTS: u32 = 10;
// Kafka's producer gives a record 2 minutes (delivery.timeout.ms). A webhook endpoint that is
// being redeployed needs longer; 5 minutes is also 10 attempts at the default request timeout.
// The budget bounds how long one record can hold back the committed offset.
const DEFAULT_MAX_DELIVERY_MS: u64 = 5 * 60 * 1000;
// Vector starts at 1 s; Knative at 0.2 s, Kafka Connect at 0.3 s. A webhook that failed is
// usually down for seconds, not milliseconds, so Vector's 1 s.
const DEFAULT_BACKOFF_INITIAL_MS: u64 = 1000;
// Dapr's maxInterval and Kafka Connect's errors.retry.delay.max.ms are both 60 s.
const DEFAULT_BACKOFF_MAX_MS: u64 = 60 * 1000;
// Knative's exponential policy doubles; Dapr grows by 1.5, Fluvio's reconnect by 1.1.
const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;
// Vector and Dapr jitter by default, Knative and JetStream do not; without it, every record that
// failed during an outage retries at the same instant when the endpoint comes back.
const DEFAULT_BACKOFF_JITTER: bool = true;
// The CloudEvents webhook spec says a sender must observe Retry-After, and a record whose
// capped wait does not fit what is left of its budget is dead-lettered rather than retried early.
// So the cap must sit well inside the budget, or a capped wait never fits (a cap equal to the
// budget never did: the first attempt has already spent some of it). Redpanda Connect's newer
// HTTP client caps Retry-After at its longest backoff, and Trellis's longest backoff (as Dapr's
// and Kafka Connect's) is 60 s: a minute's wait fits the 5 minute budget through its first four
// minutes. Knative's cap (`retryAfterMax`) has no default; it is off unless set.
const DEFAULT_RETRY_AFTER_MAX_MS: u64 = DEFAULT_BACKOFF_MAX_MS;
// A capped wait plus the attempt after it fits the default budget with room to spare.
const _: () = assert!(
    DEFAULT_RETRY_AFTER_MAX_MS + DEFAULT_REQUEST_TIMEOUT_MS < DEFAULT_MAX_DELIVERY_MS / 2,
    "the default Retry-After cap must fit the default delivery budget"
);
// async-nats connects within 5 s and Redpanda Connect's http_client times out after 5 s; a
// connection that takes longer than that is not going to serve a webhook well.
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5000;
// JetStream's AckWait is 30 s, Vector's HTTP timeout 60 s, Redpanda Connect's 5 s. Webhook
// receivers often do their work before answering, so JetStream's middle ground.
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30 * 1000;
// Vector's adaptive concurrency starts at 1 and is the default there; its cap is 200, sized for
// bulk log stores. Redpanda Connect's http_client allows 64 in flight, closer to what one
// webhook service takes.
const DEFAULT_CONCURRENCY_MIN: usize = 1;
const DEFAULT_CONCURRENCY_MAX: usize = 64;
// The breaker defaults are `breaker::BreakerSettings::default()`'s, where the full reasoning
// lives; keep the two in step. In short: Dapr is the only peer with a breaker. It trips on more
// than 5 consecutive failures; Trellis on the 5th, so the number users read is the number that
// trips.
const DEFAULT_BREAKER_FAILURE_THRESHOLD: u32 = 5;
// Dapr has no ratio rule and misses a target that fails most requests but succeeds often enough
// to reset the consecutive count; half failing is beyond what retries paper over, and 20 attempts
// keep a quiet target from being judged on a handful.
const DEFAULT_BREAKER_FAILURE_RATIO: f64 = 0.5;
const DEFAULT_BREAKER_MIN_REQUESTS: u32 = 20;
// Dapr's 60 s breaker timeout sets the scale of the window.
const DEFAULT_BREAKER_WINDOW_MS: u64 = 60 * 1000;
// Half of Dapr's 60 s: a probe every 30 s costs a dead target nothing, and it is Vector's longest
// retry backoff, so waiting on an open circuit is no worse than waiting out a backoff.
const DEFAULT_BREAKER_COOL_DOWN_MS: u64 = 30 * 1000;
// Dapr's bulk subscribe: 100 messages or 1 s (Vector's HTTP sink also flushes after 1 s).
const DEFAULT_BATCH_MAX_EVENTS: usize = 100;
const DEFAULT_BATCH_MAX_WAIT_MS: u64 = 1000;

// Limits, with the reasons.

// Past 1000 attempts the time budget is what ends a record anyway; a bigger number is a typo.
const MAX_ATTEMPTS: u32 = 1000;
// A record in retry holds back the committed offset; a week outlasts any outage worth waiting for.
const MAX_DELIVERY_MS: u64 = 7 * 24 * 60 * 60 * 1000;
// JetStream's sample backoff list tops out just under a day.
const MAX_BACKOFF_MS: u64 = 24 * 60 * 60 * 1000;
// Caps without a comment of their own are sanity bounds: past them a value is a typo (seconds
// written as milliseconds, an extra zero), not a policy.
const MAX_RETRY_AFTER_MS: u64 = 24 * 60 * 60 * 1000;
const MAX_CONNECT_TIMEOUT_MS: u64 = 5 * 60 * 1000;
// Beyond 10 the second wait already hits any sensible max_ms.
const MAX_MULTIPLIER: f64 = 10.0;
// Each unit is a request that can be in flight; past 1024 per URL it is a load test, not a webhook.
const MAX_CONCURRENCY: usize = 1024;
const MAX_BREAKER_COUNT: u32 = 100_000;
const MAX_BREAKER_MS: u64 = 60 * 60 * 1000;
// A failed batch is retried whole (batched mode has no per-event status), so big batches multiply
// redelivery; and every event waiting to fill a batch holds back the committed offset.
const MAX_BATCH_EVENTS: usize = 1000;
const MAX_BATCH_WAIT_MS: u64 = 60 * 1000;
// Each URL has its own breaker and concurrency limit, and broadcast sends every event to each.
const MAX_URLS: usize = 32;
// The floor the subscriptions issue sets. RFC 2104 advises a key as long as the hash output (32
// bytes for SHA-256); 16 random bytes (128 bits) already put brute force out of reach.
const MIN_SECRET_BYTES: usize = 16;

impl Default for DeliverySpec {
    fn default() -> Self {
        DeliverySpec {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_delivery_ms: DEFAULT_MAX_DELIVERY_MS,
            backoff: BackoffSpec::default(),
            retry_after_max_ms: DEFAULT_RETRY_AFTER_MAX_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            concurrency: ConcurrencySpec::default(),
            breaker: BreakerSpec::default(),
            batch: None,
            retry_on: Vec::new(),
            drop_on: Vec::new(),
        }
    }
}

impl Default for BackoffSpec {
    fn default() -> Self {
        BackoffSpec {
            initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            max_ms: DEFAULT_BACKOFF_MAX_MS,
            multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            jitter: DEFAULT_BACKOFF_JITTER,
        }
    }
}

impl Default for ConcurrencySpec {
    fn default() -> Self {
        ConcurrencySpec::Adaptive {
            min: DEFAULT_CONCURRENCY_MIN,
            max: DEFAULT_CONCURRENCY_MAX,
        }
    }
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            failure_threshold: DEFAULT_BREAKER_FAILURE_THRESHOLD,
            failure_ratio: DEFAULT_BREAKER_FAILURE_RATIO,
            min_requests: DEFAULT_BREAKER_MIN_REQUESTS,
            window_ms: DEFAULT_BREAKER_WINDOW_MS,
            cool_down_ms: DEFAULT_BREAKER_COOL_DOWN_MS,
        }
    }
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            max_events: DEFAULT_BATCH_MAX_EVENTS,
            max_wait_ms: DEFAULT_BATCH_MAX_WAIT_MS,
        }
    }
}

// Hand-written rather than `#[serde(untagged)]`: untagged errors say only "data did not match any
// variant", while this names the field and what was expected, e.g. `delivery.concurrency.max`.
impl<'de> Deserialize<'de> for ConcurrencySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ConcurrencyVisitor)
    }
}

struct ConcurrencyVisitor;

impl<'de> Visitor<'de> for ConcurrencyVisitor {
    type Value = ConcurrencySpec;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a number (a fixed limit) or an object {\"min\": 1, \"max\": 64}")
    }

    fn visit_u64<E: de::Error>(self, limit: u64) -> Result<Self::Value, E> {
        usize::try_from(limit)
            .map(ConcurrencySpec::Fixed)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(limit), &self))
    }

    fn visit_i64<E: de::Error>(self, limit: i64) -> Result<Self::Value, E> {
        let limit =
            u64::try_from(limit).map_err(|_| E::invalid_value(Unexpected::Signed(limit), &self))?;
        self.visit_u64(limit)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let AdaptiveConcurrency { min, max } =
            AdaptiveConcurrency::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(ConcurrencySpec::Adaptive { min, max })
    }
}

/// The object form of `concurrency`, with its own defaults and unknown-key check.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AdaptiveConcurrency {
    min: usize,
    max: usize,
}

impl Default for AdaptiveConcurrency {
    fn default() -> Self {
        AdaptiveConcurrency {
            min: DEFAULT_CONCURRENCY_MIN,
            max: DEFAULT_CONCURRENCY_MAX,
        }
    }
}

const PLACEHOLDER_MESSAGE: &str =
    "\"***\" is the placeholder the API shows instead of a credential; send the real value";

// Headers whose value Trellis sets; a user value would break or spoof the request.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "x-request-id",
    "traceparent",
    "tracestate",
    "webhook-request-origin",
];
const RESERVED_HEADER_PREFIXES: &[&str] = &["ce-", "trellis-"];
// Hop-by-hop and framing headers belong to the HTTP client; a user `transfer-encoding` next to
// the client's `content-length` is how request smuggling starts.
const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Checks one sink URL; the error message is for `sink.urls[i]`.
fn check_url(url: &str) -> Result<http::Uri, String> {
    let example = "e.g. \"https://example.com/hook\"";
    // Echoed in errors, which end up in logs and responses: credentials hidden.
    let shown = redact_url(url);
    // `http::Uri` drops a fragment silently; it is never sent, so it is most likely a mistake.
    if url.contains('#') {
        return Err(format!("must not have a fragment (#...); got {shown:?}"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("must be an absolute http or https URL, {example}; got {shown:?}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "must be an absolute http or https URL, {example}; got {shown:?}"
        ));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!(
            "must be an absolute http or https URL, {example}; got {shown:?}"
        ));
    };
    if authority.host().is_empty() {
        return Err(format!("must name a host, {example}; got {shown:?}"));
    }
    // Read as the address guard and the resolver read it, so that what passes here is what
    // delivery connects to (`1.2.3.256` or `example.123` is neither a name nor an address).
    if crate::guard::literal_address(authority.host()).is_err() {
        return Err(format!(
            "host {:?} is neither a valid host name nor an IP address, {example}",
            authority.host()
        ));
    }
    // Credentials in the URL end up in logs and in the API; headers can be redacted.
    if authority.as_str().contains('@') {
        // Not echoed: the URL holds the password.
        return Err(
            "must not contain credentials (user:password@); put them in an Authorization header"
                .to_owned(),
        );
    }
    // `http::Uri` keeps a port it cannot represent (`:99999`) and only `port_u16` notices.
    if let Some(port) = authority
        .as_str()
        .strip_prefix(authority.host())
        .and_then(|rest| rest.strip_prefix(':'))
        .filter(|port| !port.is_empty())
        && !port.parse::<u16>().is_ok_and(|port| port > 0)
    {
        return Err(format!("port must be from 1 to 65535; got {port:?}"));
    }
    // `http::Uri` lets raw UTF-8 through, which is not a valid request target.
    if !url.is_ascii() {
        return Err(format!(
            "must be ASCII; percent-encode other characters; got {shown:?}"
        ));
    }
    if let Some(query) = uri.query() {
        // `redact_url` hides every query value, so any of them may come back as the placeholder.
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or(("", pair));
            if value == REDACTED {
                return Err(format!("query parameter {name:?}: {PLACEHOLDER_MESSAGE}"));
            }
        }
    }
    Ok(uri)
}

/// Checks one extra header; the error message is for `sink.headers.<name>`.
fn check_header(name: &str, value: &str) -> Result<http::HeaderName, String> {
    let header_name = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid HTTP header name"))?;
    let lower = header_name.as_str();
    if RESERVED_HEADERS.contains(&lower)
        || RESERVED_HEADER_PREFIXES
            .iter()
            .any(|prefix| lower.starts_with(prefix))
    {
        return Err("is set by Trellis and cannot be overridden".to_owned());
    }
    if HOP_BY_HOP_HEADERS.contains(&lower) {
        return Err("is managed by the HTTP client and cannot be set".to_owned());
    }
    if value == REDACTED {
        return Err(PLACEHOLDER_MESSAGE.to_owned());
    }
    if http::HeaderValue::from_str(value).is_err() {
        // The value is not echoed: it may be a credential.
        return Err(
            "is not a valid HTTP header value (printable ASCII, spaces and tabs only)".to_owned(),
        );
    }
    Ok(header_name)
}

fn check_status_codes(field: &str, codes: &[u16]) -> Result<(), SpecError> {
    for (code_idx, &code) in codes.iter().enumerate() {
        let code_field = format!("{field}[{code_idx}]");
        if !(100..=599).contains(&code) {
            return Err(spec_error(
                code_field,
                format!("must be an HTTP status code from 100 to 599; got {code}"),
            ));
        }
        if (200..=299).contains(&code) {
            return Err(spec_error(
                code_field,
                format!("{code} means success and cannot be listed; list non-2xx codes only"),
            ));
        }
        if let Some(earlier_idx) = codes[..code_idx]
            .iter()
            .position(|&earlier| earlier == code)
        {
            return Err(spec_error(
                code_field,
                format!("{code} is already listed at {field}[{earlier_idx}]"),
            ));
        }
    }
    Ok(())
}

fn check_range<T: PartialOrd + fmt::Display>(
    field: String,
    value: T,
    min: T,
    max: T,
) -> Result<(), SpecError> {
    if value < min || value > max {
        return Err(spec_error(
            field,
            format!("must be between {min} and {max}; got {value}"),
        ));
    }
    Ok(())
}

/// Deserializes with the path of any type or unknown-key error, prefixed by `prefix`.
fn parse<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        // serde_path_to_error writes the root as ".".
        let path = if path == "." { "" } else { path.as_str() };
        let message = error.inner().to_string();
        // serde reports a missing key against the object that lacks it; name the key itself.
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            return spec_error(join(&join(prefix, path), name), "is required");
        }
        spec_error(join(prefix, path), message)
    })
}

/// serde's derived structs also accept an array, read field by field in declaration order;
/// nobody writing `"backoff": [500, 2000]` means that, so `value` and its `nested` struct-valued
/// keys must be objects.
fn refuse_arrays(value: &Value, prefix: &str, nested: &[&str]) -> Result<(), SpecError> {
    let message = "invalid type: sequence, expected an object";
    if value.is_array() {
        return Err(spec_error(prefix, message));
    }
    for key in nested {
        if value.get(key).is_some_and(Value::is_array) {
            return Err(spec_error(join(prefix, key), message));
        }
    }
    Ok(())
}

/// Joins two dotted paths; either may be empty, and `[i]` attaches without a dot.
fn join(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_owned()
    } else if path.is_empty() {
        prefix.to_owned()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

fn spec_error(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// RFC 7396: objects merge key by key, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_object) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_object) = target {
        for (key, patch_value) in patch_object {
            if patch_value.is_null() {
                target_object.remove(key);
            } else {
                merge_patch(
                    target_object.entry(key.clone()).or_insert(Value::Null),
                    patch_value,
                );
            }
        }
    }
}

struct RedactedHeaders<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_map()
            .entries(self.0.keys().map(|name| (name, REDACTED)))
            .finish()
    }
}

fn serialize_redacted_urls<S: Serializer>(
    urls: &[String],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(urls.iter().map(|url| redact_url(url)))
}

fn serialize_redacted_headers<S: Serializer>(
    headers: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(headers.keys().map(|name| (name, REDACTED)))
}

fn serialize_redacted_secret<S: Serializer>(
    secret: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str(REDACTED),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests;

//! A subscription's `sink` and `delivery` settings as users write them in `POST /v1/subscriptions`
//! (JSON): the types, their defaults, and the checks that run before anything is stored. Every
//! error names the offending field as a dotted path (`delivery.backoff.multiplier`,
//! `sink.urls[1]`), so the API can hand it straight back to the user.
//!
//! Secrets. A sink may carry credentials in three places: `secret` (the HMAC signing key),
//! header values such as `Authorization`, and URL query parameters such as `access_token` (the
//! two schemes the CloudEvents webhook spec allows). One rule covers all three:
//! - `Debug` and `Serialize` (the API view, what `GET` returns) print `"***"` in their place, so
//!   logging a spec or returning it from the API cannot leak them. What counts as a credential
//!   is `redact`'s call (`redact_url`, `is_sensitive_header`), so logs and the API agree: every
//!   query value, and the values of credential-looking headers;
//! - `SinkSpec::to_stored_json` is the one, explicitly named, way to get the real values out,
//!   for the metadata store; `SinkSpec::from_json` reads it back;
//! - `validate` refuses the `"***"` placeholder, so a `GET`, edit, `PUT` round trip fails loudly
//!   instead of storing the placeholder as a credential.
//!
//! This module does no I/O: it neither resolves hosts nor checks addresses against the deny
//! list (`guard` does that when connecting), and the outer subscription object (`name`, `topic`,
//! `start`, `dead_letter_topic`) belongs to the runtime.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Unexpected, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::redact::{REDACTED, is_sensitive_header, redact_url};

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
    /// Extra request headers. Headers Trellis sets itself (`content-type`, `ce-*`, `trellis-*`,
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
    /// the CloudEvents webhook spec says senders must observe it). Default 300000, at most 1 day.
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
// The CloudEvents webhook spec says a sender must observe Retry-After, so the cap is the whole
// default budget: only the budget, not an arbitrary cap, makes Trellis come back sooner than asked.
const DEFAULT_RETRY_AFTER_MAX_MS: u64 = DEFAULT_MAX_DELIVERY_MS;
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

fn redact_header_value<'a>(name: &str, value: &'a str) -> &'a str {
    if is_sensitive_header(name, &[]) {
        REDACTED
    } else {
        value
    }
}

struct RedactedHeaders<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(name, value)| (name, redact_header_value(name, value))),
            )
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
    serializer.collect_map(
        headers
            .iter()
            .map(|(name, value)| (name, redact_header_value(name, value))),
    )
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
mod tests {
    use super::*;

    use serde_json::json;

    const SECRET: &str = "s3cret-signing-key-0123";
    const TOKEN: &str = "Bearer tok-abcdef";
    const QUERY_TOKEN: &str = "qtok987654";

    #[track_caller]
    fn check_delivery_error(delivery: Value, field: &str, message_part: &str) {
        let error = DeliverySpec::from_json(&delivery, "delivery")
            .expect_err(&format!("{delivery} should be refused"));
        assert_eq!(error.field, field, "{delivery}: {error}");
        assert!(
            error.message.contains(message_part),
            "{delivery}: {error:?} should mention {message_part:?}"
        );
    }

    #[track_caller]
    fn check_sink_error(sink: Value, field: &str, message_part: &str) {
        let error =
            SinkSpec::from_json(&sink, "sink").expect_err(&format!("{sink} should be refused"));
        assert_eq!(error.field, field, "{sink}: {error}");
        assert!(
            error.message.contains(message_part),
            "{sink}: {error:?} should mention {message_part:?}"
        );
    }

    fn sink_with_credentials() -> SinkSpec {
        SinkSpec::from_json(
            &json!({
                "urls": [format!("https://example.com/hook?tenant=a&access_token={QUERY_TOKEN}")],
                "headers": {"Authorization": TOKEN, "X-Env": "prod"},
                "secret": SECRET,
            }),
            "sink",
        )
        .expect("valid sink")
    }

    #[test]
    fn an_empty_delivery_object_takes_every_default() {
        let spec = DeliverySpec::from_json(&json!({}), "delivery").expect("defaults are valid");
        assert_eq!(spec, DeliverySpec::default());
        // The documented defaults, as the API shows them.
        assert_eq!(
            serde_json::to_value(&spec).expect("serialisable"),
            json!({
                "max_attempts": 10,
                "max_delivery_ms": 300_000,
                "backoff": {"initial_ms": 1000, "max_ms": 60_000, "multiplier": 2.0, "jitter": true},
                "retry_after_max_ms": 300_000,
                "connect_timeout_ms": 5000,
                "request_timeout_ms": 30_000,
                "concurrency": {"min": 1, "max": 64},
                "breaker": {
                    "failure_threshold": 5, "failure_ratio": 0.5, "min_requests": 20,
                    "window_ms": 60_000, "cool_down_ms": 30_000,
                },
                "retry_on": [],
                "drop_on": [],
            })
        );
    }

    #[test]
    fn delivery_settings_round_trip() {
        let default_json = serde_json::to_value(DeliverySpec::default()).expect("serialisable");
        assert_eq!(
            DeliverySpec::from_json(&default_json, "delivery"),
            Ok(DeliverySpec::default())
        );
        let custom = json!({
            "max_attempts": 3,
            "backoff": {"multiplier": 1.5, "jitter": false},
            "concurrency": 4,
            "batch": {"max_events": 10},
            "retry_on": [404, 409],
            "drop_on": [503],
        });
        let spec = DeliverySpec::from_json(&custom, "delivery").expect("valid");
        assert_eq!(spec.backoff.initial_ms, 1000);
        assert_eq!(
            spec.batch,
            Some(BatchSpec {
                max_events: 10,
                max_wait_ms: 1000
            })
        );
        let again = serde_json::to_value(&spec).expect("serialisable");
        assert_eq!(DeliverySpec::from_json(&again, "delivery"), Ok(spec));
    }

    #[test]
    fn a_minimal_sink_takes_every_default() {
        let spec = SinkSpec::from_json(&json!({"urls": ["https://example.com/hook"]}), "sink")
            .expect("valid");
        assert_eq!(spec.strategy, Strategy::RoundRobin);
        assert_eq!(spec.mode, Mode::Binary);
        assert!(spec.headers.is_empty());
        assert_eq!(spec.secret, None);
        assert!(!spec.validate);
        let shown = serde_json::to_value(&spec).expect("serialisable");
        assert_eq!(
            shown,
            json!({"urls": ["https://example.com/hook"], "strategy": "round_robin", "mode": "binary", "headers": {}, "validate": false})
        );
        assert_eq!(SinkSpec::from_json(&shown, "sink"), Ok(spec));
    }

    #[test]
    fn a_full_sink_round_trips_through_the_store() {
        let spec = SinkSpec::from_json(
            &json!({
                "urls": ["https://a.example.com/hook", "http://b.example.com:8080/hook?x=1", "http://[::1]:9/h"],
                "strategy": "broadcast",
                "mode": "structured",
                "headers": {"X-Env": "prod"},
                "secret": SECRET,
                "validate": true,
            }),
            "sink",
        )
        .expect("valid");
        assert_eq!(spec.strategy, Strategy::Broadcast);
        assert_eq!(spec.mode, Mode::Structured);
        assert_eq!(
            SinkSpec::from_json(&spec.to_stored_json(), "sink"),
            Ok(spec.clone())
        );
        // The stored form has the same keys as the API form: no field forgotten in either.
        let stored_keys: Vec<String> = spec
            .to_stored_json()
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        let shown = serde_json::to_value(&spec).expect("serialisable");
        let shown_keys: Vec<String> = shown.as_object().expect("object").keys().cloned().collect();
        assert_eq!(stored_keys, shown_keys);
    }

    #[test]
    fn credentials_never_reach_debug_or_the_api() {
        let spec = sink_with_credentials();
        let debug = format!("{spec:?}");
        let shown = serde_json::to_string(&spec).expect("serialisable");
        for output in [&debug, &shown] {
            for credential in [SECRET, TOKEN, QUERY_TOKEN] {
                assert!(
                    !output.contains(credential),
                    "{credential} leaked in {output}"
                );
            }
            assert!(output.contains("***"), "{output}");
            // What is not a credential stays readable.
            assert!(
                output.contains("prod") && output.contains("tenant="),
                "{output}"
            );
        }
        let shown: Value = serde_json::from_str(&shown).expect("json");
        assert_eq!(shown["secret"], "***");
        assert_eq!(shown["headers"]["Authorization"], "***");
        assert_eq!(
            shown["urls"][0],
            "https://example.com/hook?tenant=***&access_token=***"
        );
        // Only the stored form keeps them.
        let stored = spec.to_stored_json();
        assert_eq!(stored["secret"], SECRET);
        assert_eq!(stored["headers"]["Authorization"], TOKEN);
        assert_eq!(SinkSpec::from_json(&stored, "sink"), Ok(spec));
    }

    #[test]
    fn the_redaction_placeholder_is_refused_as_a_credential() {
        // GET, edit, PUT: the placeholders come back and must not be stored as credentials.
        let shown = serde_json::to_value(sink_with_credentials()).expect("serialisable");
        check_sink_error(shown.clone(), "sink.urls[0]", "placeholder");
        let mut shown = shown;
        shown["urls"] = json!(["https://example.com/hook"]);
        check_sink_error(shown.clone(), "sink.headers.Authorization", "placeholder");
        shown["headers"] = json!({});
        check_sink_error(shown, "sink.secret", "placeholder");
    }

    #[test]
    fn url_errors_do_not_echo_credentials() {
        let error = SinkSpec::from_json(
            &json!({"urls": ["https://user:pw-123@example.com/"]}),
            "sink",
        )
        .expect_err("credentials in the URL");
        assert!(!error.to_string().contains("pw-123"), "{error}");
        let error = SinkSpec::from_json(
            &json!({"urls": [format!("https://example.com/?access_token={QUERY_TOKEN}#frag")]}),
            "sink",
        )
        .expect_err("fragment");
        assert!(!error.to_string().contains(QUERY_TOKEN), "{error}");
        assert!(error.to_string().contains("access_token=***"), "{error}");
    }

    #[test]
    fn secret_errors_do_not_echo_it() {
        let error = SinkSpec::from_json(
            &json!({"urls": ["https://example.com/"], "secret": "short-secret"}),
            "sink",
        )
        .expect_err("too short");
        assert_eq!(
            error.to_string(),
            "sink.secret: must be at least 16 bytes; got 12 bytes"
        );
    }

    #[test]
    fn refuses_bad_urls() {
        let cases = [
            (json!([]), "sink.urls", "at least one"),
            (
                json!(["ftp://example.com/x"]),
                "sink.urls[0]",
                "http or https",
            ),
            (json!(["/hook"]), "sink.urls[0]", "absolute"),
            (json!(["example.com/hook"]), "sink.urls[0]", "absolute"),
            (
                json!(["https://example.com/a", "https://example.com/a#top"]),
                "sink.urls[1]",
                "fragment",
            ),
            (
                json!(["https://user:pw@example.com/"]),
                "sink.urls[0]",
                "credentials",
            ),
            (
                json!(["https://example.com:99999/"]),
                "sink.urls[0]",
                "port must be from 1 to 65535; got \"99999\"",
            ),
            (json!(["https://example.com:0/"]), "sink.urls[0]", "port"),
            (json!(["https://example.com/ü"]), "sink.urls[0]", "ASCII"),
            (json!(["https://:80/"]), "sink.urls[0]", "must name a host"),
            (json!(["https://exa mple.com/"]), "sink.urls[0]", "absolute"),
            (
                json!([
                    "https://example.com/a",
                    "https://x.com/",
                    "HTTPS://EXAMPLE.com/a"
                ]),
                "sink.urls[2]",
                "duplicates sink.urls[0]",
            ),
            (
                json!(["https://example.com/a", 3]),
                "sink.urls[1]",
                "expected a string",
            ),
            (
                json!("https://example.com/a"),
                "sink.urls",
                "expected a sequence",
            ),
        ];
        for (urls, field, message_part) in cases {
            check_sink_error(json!({"urls": urls}), field, message_part);
        }
        let too_many: Vec<String> = (0..=MAX_URLS)
            .map(|idx| format!("https://example.com/{idx}"))
            .collect();
        check_sink_error(json!({"urls": too_many}), "sink.urls", "at most 32");
    }

    #[test]
    fn refuses_headers_trellis_sets_or_http_forbids() {
        let cases = [
            (
                json!({"Content-Type": "text/plain"}),
                "sink.headers.Content-Type",
                "set by Trellis",
            ),
            (
                json!({"ce-id": "1"}),
                "sink.headers.ce-id",
                "set by Trellis",
            ),
            (
                json!({"Trellis-Signature": "x"}),
                "sink.headers.Trellis-Signature",
                "set by Trellis",
            ),
            (
                json!({"X-Request-Id": "1"}),
                "sink.headers.X-Request-Id",
                "set by Trellis",
            ),
            (
                json!({"traceparent": "00-1"}),
                "sink.headers.traceparent",
                "set by Trellis",
            ),
            (
                json!({"Host": "evil"}),
                "sink.headers.Host",
                "set by Trellis",
            ),
            (
                json!({"Content-Length": "1"}),
                "sink.headers.Content-Length",
                "set by Trellis",
            ),
            (
                json!({"Transfer-Encoding": "chunked"}),
                "sink.headers.Transfer-Encoding",
                "HTTP client",
            ),
            (
                json!({"bad name": "x"}),
                "sink.headers.bad name",
                "not a valid HTTP header name",
            ),
            (
                json!({"X-Ok": "line\nbreak"}),
                "sink.headers.X-Ok",
                "not a valid HTTP header value",
            ),
            (
                json!({"X-Dup": "1", "x-dup": "2"}),
                "sink.headers.x-dup",
                "case-insensitive",
            ),
            (
                json!({"X-Num": 3}),
                "sink.headers.X-Num",
                "expected a string",
            ),
        ];
        for (headers, field, message_part) in cases {
            check_sink_error(
                json!({"urls": ["https://example.com/"], "headers": headers}),
                field,
                message_part,
            );
        }
    }

    #[test]
    fn sink_type_errors_name_the_field() {
        let url = json!(["https://example.com/"]);
        check_sink_error(json!({}), "sink.urls", "is required");
        check_sink_error(json!("https://example.com/"), "sink", "a sink object");
        check_sink_error(
            json!([["https://example.com/"]]),
            "sink",
            "expected an object",
        );
        check_sink_error(
            json!({"urls": url, "strategy": "fanout"}),
            "sink.strategy",
            "round_robin",
        );
        check_sink_error(
            json!({"urls": url, "mode": "batched"}),
            "sink.mode",
            "structured",
        );
        check_sink_error(
            json!({"urls": url, "validate": "yes"}),
            "sink.validate",
            "a boolean",
        );
        check_sink_error(json!({"urls": url, "secret": 7}), "sink.secret", "a string");
    }

    #[test]
    fn unknown_fields_are_named_at_every_level() {
        check_sink_error(
            json!({"urls": ["https://example.com/"], "url": "x"}),
            "sink.url",
            "unknown field",
        );
        let cases = [
            (json!({"retries": 3}), "delivery.retries"),
            (json!({"backoff": {"factor": 2}}), "delivery.backoff.factor"),
            (
                json!({"concurrency": {"min": 1, "initial": 2}}),
                "delivery.concurrency.initial",
            ),
            (
                json!({"breaker": {"timeout_ms": 1}}),
                "delivery.breaker.timeout_ms",
            ),
            (
                json!({"batch": {"max_bytes": 1}}),
                "delivery.batch.max_bytes",
            ),
        ];
        for (delivery, field) in cases {
            check_delivery_error(delivery, field, "unknown field");
        }
    }

    #[test]
    fn delivery_type_errors_name_the_field() {
        let cases = [
            (
                json!({"max_attempts": "three"}),
                "delivery.max_attempts",
                "expected u32",
            ),
            (
                json!({"max_attempts": -1}),
                "delivery.max_attempts",
                "expected u32",
            ),
            (
                json!({"backoff": {"jitter": 1}}),
                "delivery.backoff.jitter",
                "a boolean",
            ),
            (
                json!({"backoff": 5}),
                "delivery.backoff",
                "a backoff object",
            ),
            (
                json!({"concurrency": -1}),
                "delivery.concurrency",
                "a fixed limit",
            ),
            (
                json!({"concurrency": 2.5}),
                "delivery.concurrency",
                "a fixed limit",
            ),
            (
                json!({"concurrency": "auto"}),
                "delivery.concurrency",
                "a fixed limit",
            ),
            (
                json!({"concurrency": {"max": "many"}}),
                "delivery.concurrency.max",
                "expected usize",
            ),
            (
                json!({"retry_on": [404, 70_000]}),
                "delivery.retry_on[1]",
                "expected u16",
            ),
            (json!([]), "delivery", "expected an object"),
            (
                json!({"backoff": [500, 2000]}),
                "delivery.backoff",
                "expected an object",
            ),
            (
                json!({"breaker": [1]}),
                "delivery.breaker",
                "expected an object",
            ),
            (
                json!({"batch": [10, 100]}),
                "delivery.batch",
                "expected an object",
            ),
            (
                json!({"concurrency": [1, 2]}),
                "delivery.concurrency",
                "a fixed limit",
            ),
            (json!("fast"), "delivery", "a delivery object"),
        ];
        for (delivery, field, message_part) in cases {
            check_delivery_error(delivery, field, message_part);
        }
    }

    #[test]
    fn refuses_out_of_range_delivery_settings() {
        let cases = [
            (
                json!({"max_attempts": 0}),
                "delivery.max_attempts",
                "between 1 and 1000; got 0",
            ),
            (
                json!({"max_attempts": 1001}),
                "delivery.max_attempts",
                "got 1001",
            ),
            (
                json!({"max_delivery_ms": 0}),
                "delivery.max_delivery_ms",
                "between 1",
            ),
            (
                json!({"max_delivery_ms": MAX_DELIVERY_MS + 1}),
                "delivery.max_delivery_ms",
                "between 1",
            ),
            (
                json!({"backoff": {"initial_ms": 0}}),
                "delivery.backoff.initial_ms",
                "between 1",
            ),
            (
                json!({"backoff": {"max_ms": MAX_BACKOFF_MS + 1}}),
                "delivery.backoff.max_ms",
                "between 1",
            ),
            (
                json!({"backoff": {"initial_ms": 5000, "max_ms": 2000}}),
                "delivery.backoff.initial_ms",
                "must not exceed delivery.backoff.max_ms (2000); got 5000",
            ),
            (
                json!({"backoff": {"multiplier": 0.5}}),
                "delivery.backoff.multiplier",
                "between 1.0 and 10.0; got 0.5",
            ),
            (
                json!({"backoff": {"multiplier": 11}}),
                "delivery.backoff.multiplier",
                "got 11",
            ),
            (
                json!({"retry_after_max_ms": MAX_RETRY_AFTER_MS + 1}),
                "delivery.retry_after_max_ms",
                "between 0",
            ),
            (
                json!({"connect_timeout_ms": 0}),
                "delivery.connect_timeout_ms",
                "between 1",
            ),
            (
                json!({"request_timeout_ms": 0}),
                "delivery.request_timeout_ms",
                "between 1",
            ),
            (
                json!({"max_delivery_ms": 10_000}),
                "delivery.request_timeout_ms",
                "must not exceed delivery.max_delivery_ms (10000); got 30000",
            ),
            (
                json!({"concurrency": 0}),
                "delivery.concurrency",
                "between 1 and 1024; got 0",
            ),
            (
                json!({"concurrency": 1025}),
                "delivery.concurrency",
                "got 1025",
            ),
            (
                json!({"concurrency": {"min": 0}}),
                "delivery.concurrency.min",
                "between 1",
            ),
            (
                json!({"concurrency": {"max": 2000}}),
                "delivery.concurrency.max",
                "between 1 and 1024",
            ),
            (
                json!({"concurrency": {"min": 100}}),
                "delivery.concurrency.min",
                "must not exceed delivery.concurrency.max (64); got 100",
            ),
            (
                json!({"breaker": {"failure_threshold": 100_001}}),
                "delivery.breaker.failure_threshold",
                "between 0 and 100000",
            ),
            (
                json!({"breaker": {"failure_ratio": 1.5}}),
                "delivery.breaker.failure_ratio",
                "between 0.0 and 1.0; got 1.5",
            ),
            (
                json!({"breaker": {"failure_ratio": -0.1}}),
                "delivery.breaker.failure_ratio",
                "got -0.1",
            ),
            (
                json!({"breaker": {"min_requests": 0}}),
                "delivery.breaker.min_requests",
                "between 1",
            ),
            (
                json!({"breaker": {"window_ms": 0}}),
                "delivery.breaker.window_ms",
                "between 1",
            ),
            (
                json!({"breaker": {"cool_down_ms": 0}}),
                "delivery.breaker.cool_down_ms",
                "between 1",
            ),
            (
                json!({"batch": {"max_events": 0}}),
                "delivery.batch.max_events",
                "between 1 and 1000",
            ),
            (
                json!({"batch": {"max_wait_ms": 0}}),
                "delivery.batch.max_wait_ms",
                "between 1 and 60000",
            ),
            (
                json!({"retry_on": [99]}),
                "delivery.retry_on[0]",
                "100 to 599; got 99",
            ),
            (
                json!({"drop_on": [404, 600]}),
                "delivery.drop_on[1]",
                "100 to 599; got 600",
            ),
            (
                json!({"retry_on": [404, 204]}),
                "delivery.retry_on[1]",
                "204 means success",
            ),
            (
                json!({"drop_on": [410, 410]}),
                "delivery.drop_on[1]",
                "already listed at delivery.drop_on[0]",
            ),
            (
                json!({"retry_on": [404, 409], "drop_on": [400, 409]}),
                "delivery.drop_on[1]",
                "409 is also in delivery.retry_on",
            ),
        ];
        for (delivery, field, message_part) in cases {
            check_delivery_error(delivery, field, message_part);
        }
    }

    #[test]
    fn edges_of_the_ranges_are_accepted() {
        let delivery = json!({
            "max_attempts": 1,
            "max_delivery_ms": 1,
            "request_timeout_ms": 1,
            "backoff": {"initial_ms": 7, "max_ms": 7, "multiplier": 1.0},
            "retry_after_max_ms": 0,
            "concurrency": {"min": 1024, "max": 1024},
            "breaker": {"failure_threshold": 0, "failure_ratio": 0.0},
            "batch": {"max_events": 1000, "max_wait_ms": 1},
            "retry_on": [100, 599],
            "drop_on": [199, 300],
        });
        assert!(DeliverySpec::from_json(&delivery, "delivery").is_ok());
    }

    #[test]
    fn validate_catches_what_json_cannot_express() {
        let mut spec = DeliverySpec::default();
        spec.backoff.multiplier = f64::NAN;
        assert_eq!(
            spec.validate("delivery").map_err(|error| error.field),
            Err("delivery.backoff.multiplier".to_owned())
        );
        spec.backoff.multiplier = f64::INFINITY;
        assert!(spec.validate("delivery").is_err());
        let mut spec = DeliverySpec::default();
        spec.breaker.failure_ratio = f64::NAN;
        assert!(spec.validate("delivery").is_err());
    }

    #[test]
    fn concurrency_is_a_number_or_an_object() {
        let fixed = DeliverySpec::from_json(&json!({"concurrency": 8}), "delivery").expect("valid");
        assert_eq!(fixed.concurrency, ConcurrencySpec::Fixed(8));
        let adaptive =
            DeliverySpec::from_json(&json!({"concurrency": {"min": 2, "max": 16}}), "delivery")
                .expect("valid");
        assert_eq!(
            adaptive.concurrency,
            ConcurrencySpec::Adaptive { min: 2, max: 16 }
        );
        let partial = DeliverySpec::from_json(&json!({"concurrency": {"max": 8}}), "delivery")
            .expect("valid");
        assert_eq!(
            partial.concurrency,
            ConcurrencySpec::Adaptive { min: 1, max: 8 }
        );
        // Each serialises back the way it was written.
        assert_eq!(
            serde_json::to_value(fixed).expect("serialisable")["concurrency"],
            json!(8)
        );
        assert_eq!(
            serde_json::to_value(adaptive).expect("serialisable")["concurrency"],
            json!({"min": 2, "max": 16})
        );
    }

    #[test]
    fn merge_patch_changes_only_what_it_names() {
        let current = DeliverySpec::from_json(
            &json!({"max_attempts": 4, "backoff": {"initial_ms": 500}, "batch": {"max_events": 10}}),
            "delivery",
        )
        .expect("valid");
        let patched = current
            .patched(&json!({"backoff": {"multiplier": 3.0}}), "delivery")
            .expect("valid patch");
        assert_eq!(patched.backoff.multiplier, 3.0);
        assert_eq!(patched.backoff.initial_ms, 500);
        assert_eq!(patched.max_attempts, 4);
        assert_eq!(patched.batch, current.batch);
        assert_eq!(
            current.patched(&json!({}), "delivery").as_ref(),
            Ok(&current)
        );
    }

    #[test]
    fn merge_patch_null_goes_back_to_the_default() {
        let current = DeliverySpec::from_json(
            &json!({"max_attempts": 4, "batch": {"max_events": 10}}),
            "delivery",
        )
        .expect("valid");
        let patched = current
            .patched(&json!({"batch": null, "max_attempts": null}), "delivery")
            .expect("valid patch");
        assert_eq!(patched.batch, None);
        assert_eq!(patched, DeliverySpec::default());
        let batched = patched
            .patched(&json!({"batch": {"max_wait_ms": 50}}), "delivery")
            .expect("valid patch");
        assert_eq!(
            batched.batch,
            Some(BatchSpec {
                max_events: 100,
                max_wait_ms: 50
            })
        );
    }

    #[test]
    fn merge_patch_switches_concurrency_forms() {
        let current = DeliverySpec::default();
        let fixed = current
            .patched(&json!({"concurrency": 4}), "delivery")
            .expect("valid patch");
        assert_eq!(fixed.concurrency, ConcurrencySpec::Fixed(4));
        let adaptive = fixed
            .patched(&json!({"concurrency": {"max": 8}}), "delivery")
            .expect("valid patch");
        assert_eq!(
            adaptive.concurrency,
            ConcurrencySpec::Adaptive { min: 1, max: 8 }
        );
    }

    #[test]
    fn merge_patch_is_validated() {
        let current = DeliverySpec::default();
        let error = current
            .patched(&json!({"backoff": {"jitterr": false}}), "delivery")
            .expect_err("unknown key");
        assert_eq!(error.field, "delivery.backoff.jitterr");
        let error = current
            .patched(&json!({"backoff": {"max_ms": 10}}), "delivery")
            .expect_err("initial above max");
        assert_eq!(error.field, "delivery.backoff.initial_ms");
        let error = current
            .patched(&json!({"backoff": {"multiplier": 0.5}}), "delivery")
            .expect_err("multiplier too small");
        assert_eq!(
            error.to_string(),
            "delivery.backoff.multiplier: must be between 1.0 and 10.0; got 0.5"
        );
    }

    #[test]
    fn an_empty_prefix_gives_bare_paths() {
        let error = DeliverySpec::from_json(&json!({"backoff": {"multiplier": 0.5}}), "")
            .expect_err("invalid");
        assert_eq!(error.field, "backoff.multiplier");
        let error = SinkSpec::from_json(&json!({"urls": ["https://example.com/", 1]}), "")
            .expect_err("invalid");
        assert_eq!(error.field, "urls[1]");
        let error = SinkSpec::from_json(&json!({}), "").expect_err("invalid");
        assert_eq!(error.field, "urls");
        let error = SinkSpec::from_json(&json!(1), "").expect_err("invalid");
        assert_eq!(error.field, "");
    }

    #[test]
    fn names_match_their_serde_form() {
        for strategy in [Strategy::RoundRobin, Strategy::Broadcast] {
            assert_eq!(
                serde_json::to_value(strategy).expect("serialisable"),
                json!(strategy.as_str())
            );
        }
        for mode in [Mode::Binary, Mode::Structured] {
            assert_eq!(
                serde_json::to_value(mode).expect("serialisable"),
                json!(mode.as_str())
            );
        }
    }
}

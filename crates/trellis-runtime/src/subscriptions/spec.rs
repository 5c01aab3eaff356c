//! A subscription as users write it (`POST /v1/subscriptions`) and as the metadata store keeps
//! it. `sink` and `delivery` are the delivery engine's own types; this file adds the outer
//! object: `name`, `topic`, `start`, `dead_letter_topic`, and the `paused` flag.

use serde::Serialize;
use serde_json::{Map, Value};
use trellis_delivery::config::{DeliverySpec, SinkSpec, SpecError};

/// Where a new subscription starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Only events published after the subscription was created.
    Latest,
    /// Every event the topic still holds.
    Earliest,
    Offset(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubscriptionSpec {
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) sink: SinkSpec,
    pub(crate) delivery: DeliverySpec,
    pub(crate) start: Start,
    pub(crate) dead_letter_topic: String,
    pub(crate) paused: bool,
    /// Requests per minute each URL granted in the validation handshake (`None`: no limit),
    /// by index in `sink.urls`; empty when the sink is not validated.
    pub(crate) allowed_rates: Vec<Option<u32>>,
}

/// The API view of a subscription: credentials redacted (see `trellis_delivery::config`).
#[derive(Serialize)]
pub(crate) struct SubscriptionView<'a> {
    pub(crate) name: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) sink: &'a SinkSpec,
    pub(crate) delivery: &'a DeliverySpec,
    pub(crate) start: Value,
    pub(crate) dead_letter_topic: &'a str,
    pub(crate) paused: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(crate) allowed_rates: &'a [Option<u32>],
}

const FIELDS: &[&str] = &[
    "name",
    "topic",
    "sink",
    "delivery",
    "start",
    "dead_letter_topic",
];

impl SubscriptionSpec {
    /// Reads a `POST /v1/subscriptions` body. Errors name the field.
    pub(crate) fn from_request(body: &Value) -> Result<SubscriptionSpec, SpecError> {
        let object = body.as_object().ok_or_else(|| SpecError {
            field: "body".to_owned(),
            message: "must be a JSON object with name, topic and sink".to_owned(),
        })?;
        reject_unknown(object, FIELDS)?;
        let name = required_name(object, "name")?;
        let topic = required_name(object, "topic")?;
        let sink = match object.get("sink") {
            Some(sink) => SinkSpec::from_json(sink, "sink")?,
            None => return Err(field_error("sink", "is required")),
        };
        let delivery = match object.get("delivery") {
            Some(delivery) => DeliverySpec::from_json(delivery, "delivery")?,
            None => DeliverySpec::default(),
        };
        let start = match object.get("start") {
            None | Some(Value::Null) => Start::Latest,
            Some(Value::String(word)) if word == "latest" => Start::Latest,
            Some(Value::String(word)) if word == "earliest" => Start::Earliest,
            Some(Value::Number(number)) => Start::Offset(number.as_u64().ok_or_else(|| {
                field_error(
                    "start",
                    "must be \"latest\", \"earliest\" or an offset (a whole number from 0)",
                )
            })?),
            Some(_) => {
                return Err(field_error(
                    "start",
                    "must be \"latest\", \"earliest\" or an offset (a whole number from 0)",
                ));
            }
        };
        let dead_letter_topic = match object.get("dead_letter_topic") {
            None | Some(Value::Null) => format!("{name}.dlq"),
            Some(_) => required_name(object, "dead_letter_topic")?,
        };
        check_topic_name("dead_letter_topic", &dead_letter_topic)?;
        if dead_letter_topic == topic {
            return Err(field_error(
                "dead_letter_topic",
                "must differ from topic: dead letters would be delivered again",
            ));
        }
        Ok(SubscriptionSpec {
            name,
            topic,
            sink,
            delivery,
            start,
            dead_letter_topic,
            paused: false,
            allowed_rates: Vec::new(),
        })
    }

    pub(crate) fn view(&self) -> SubscriptionView<'_> {
        SubscriptionView {
            name: &self.name,
            topic: &self.topic,
            sink: &self.sink,
            delivery: &self.delivery,
            start: start_json(self.start),
            dead_letter_topic: &self.dead_letter_topic,
            paused: self.paused,
            allowed_rates: &self.allowed_rates,
        }
    }

    /// The stored form: like the request, with credentials in clear and the `paused` flag.
    pub(crate) fn to_stored(&self) -> Value {
        let mut object = Map::new();
        object.insert("name".to_owned(), Value::from(self.name.as_str()));
        object.insert("topic".to_owned(), Value::from(self.topic.as_str()));
        object.insert("sink".to_owned(), self.sink.to_stored_json());
        object.insert(
            "delivery".to_owned(),
            serde_json::to_value(&self.delivery).unwrap_or(Value::Null),
        );
        object.insert("start".to_owned(), start_json(self.start));
        object.insert(
            "dead_letter_topic".to_owned(),
            Value::from(self.dead_letter_topic.as_str()),
        );
        object.insert("paused".to_owned(), Value::from(self.paused));
        if !self.allowed_rates.is_empty() {
            object.insert(
                "allowed_rates".to_owned(),
                Value::from(
                    self.allowed_rates
                        .iter()
                        .map(|rate| rate.map_or(Value::Null, Value::from))
                        .collect::<Vec<_>>(),
                ),
            );
        }
        Value::Object(object)
    }

    pub(crate) fn from_stored(stored: &Value) -> Result<SubscriptionSpec, SpecError> {
        let mut request = stored.clone();
        let object = request.as_object_mut();
        let (paused, rates) = match object {
            Some(object) => (object.remove("paused"), object.remove("allowed_rates")),
            None => (None, None),
        };
        let mut spec = SubscriptionSpec::from_request(&request)?;
        spec.paused = paused.and_then(|paused| paused.as_bool()).unwrap_or(false);
        spec.allowed_rates = match rates {
            Some(Value::Array(rates)) => rates
                .iter()
                .map(|rate| rate.as_u64().and_then(|rate| u32::try_from(rate).ok()))
                .collect(),
            _ => Vec::new(),
        };
        Ok(spec)
    }
}

fn start_json(start: Start) -> Value {
    match start {
        Start::Latest => Value::from("latest"),
        Start::Earliest => Value::from("earliest"),
        Start::Offset(offset) => Value::from(offset),
    }
}

pub(crate) fn reject_unknown(object: &Map<String, Value>, known: &[&str]) -> Result<(), SpecError> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(field_error(
            key,
            &format!("unknown field; the fields are {}", known.join(", ")),
        )),
    }
}

fn required_name(object: &Map<String, Value>, field: &str) -> Result<String, SpecError> {
    match object.get(field) {
        Some(Value::String(name)) => {
            check_topic_name(field, name)?;
            Ok(name.clone())
        }
        Some(_) => Err(field_error(field, "must be a string")),
        None => Err(field_error(field, "is required")),
    }
}

/// Subscription names follow the topic-name rules, so `<name>.dlq` is always a valid topic.
fn check_topic_name(field: &str, name: &str) -> Result<(), SpecError> {
    trellis_storage::validate_topic_name(name).map_err(|error| {
        let message = match error {
            trellis_storage::StorageError::InvalidTopicName { reason, .. } => reason,
            other => other.to_string(),
        };
        field_error(field, &message)
    })
}

pub(crate) fn field_error(field: &str, message: &str) -> SpecError {
    SpecError {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<SubscriptionSpec, SpecError> {
        SubscriptionSpec::from_request(&body)
    }

    #[test]
    fn the_smallest_subscription_takes_every_default() {
        let spec = parse(
            json!({"name": "audit", "topic": "orders", "sink": {"urls": ["http://127.0.0.1:9/h"]}}),
        )
        .expect("test fixture");
        assert_eq!(spec.start, Start::Latest);
        assert_eq!(spec.dead_letter_topic, "audit.dlq");
        assert_eq!(spec.delivery, DeliverySpec::default());
        assert!(!spec.paused);
    }

    #[test]
    fn errors_name_the_field() {
        let sink = json!({"urls": ["http://127.0.0.1:9/h"]});
        let cases = [
            (json!({"topic": "t", "sink": sink}), "name"),
            (json!({"name": "a b", "topic": "t", "sink": sink}), "name"),
            (json!({"name": "a", "sink": sink}), "topic"),
            (json!({"name": "a", "topic": "t"}), "sink"),
            (
                json!({"name": "a", "topic": "t", "sink": sink, "start": "middle"}),
                "start",
            ),
            (
                json!({"name": "a", "topic": "t", "sink": sink, "start": -1}),
                "start",
            ),
            (
                json!({"name": "a", "topic": "t", "sink": sink, "dead_letter_topic": "t"}),
                "dead_letter_topic",
            ),
            (
                json!({"name": "a", "topic": "t", "sink": sink, "colour": "red"}),
                "colour",
            ),
            (
                json!({"name": "a", "topic": "t", "sink": {"urls": []}}),
                "sink.urls",
            ),
            (
                json!({"name": "a", "topic": "t", "sink": sink, "delivery": {"max_attempts": 0}}),
                "delivery.max_attempts",
            ),
        ];
        for (body, field) in cases {
            let error = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(error.field, field, "{body}: {error}");
        }
    }

    #[test]
    fn the_stored_form_round_trips_with_secrets_and_the_pause() {
        let mut spec = parse(json!({
            "name": "audit", "topic": "orders", "start": 5,
            "sink": {"urls": ["http://127.0.0.1:9/h"], "secret": "0123456789abcdef-secret"},
        }))
        .expect("test fixture");
        spec.paused = true;
        spec.allowed_rates = vec![Some(120)];
        let stored = spec.to_stored();
        assert_eq!(
            SubscriptionSpec::from_stored(&stored).expect("test fixture"),
            spec
        );
        let view = serde_json::to_string(&spec.view()).expect("test fixture");
        assert!(!view.contains("0123456789abcdef-secret"));
    }
}

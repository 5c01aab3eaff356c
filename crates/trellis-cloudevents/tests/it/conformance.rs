//! Runs the CloudEvents project's HTTP protocol binding scenarios
//! (`tests/data/http-protocol-binding.feature`, see `tests/data/README.md`) against the parsers.
//!
//! The feature file is read at test time from this crate's own `tests/data/`, never from
//! outside the project. Each step phrase the file uses has a handler below; an unknown phrase
//! fails the test.

use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use trellis_cloudevents::{
    CloudEvent, ContentMode, Data, ExtensionValue, content_mode, parse_binary, parse_structured,
};

use crate::gherkin::{self, Scenario, Step};

/// Two outlines with two examples each. If the file grows, update this after checking that
/// the new scenarios run.
const N_SCENARIOS: usize = 4;

#[test]
fn http_protocol_binding_scenarios_pass() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/http-protocol-binding.feature");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    let feature = gherkin::parse(&source);

    let names: Vec<&str> = feature
        .scenarios
        .iter()
        .map(|scenario| scenario.name.as_str())
        .collect();
    assert_eq!(feature.scenarios.len(), N_SCENARIOS, "scenarios: {names:?}");
    for scenario in &feature.scenarios {
        run(&feature.background, scenario);
    }
    for mode in ["Binary content mode", "Structured content mode"] {
        assert!(
            names.iter().any(|name| name.starts_with(mode)),
            "no {mode} scenario in {names:?}"
        );
    }
}

/// What the steps so far have produced.
#[derive(Default)]
struct World {
    request: Option<(HeaderMap, Bytes)>,
    event: Option<CloudEvent>,
}

fn run(background: &[Step], scenario: &Scenario) {
    let mut world = World::default();
    for step in background.iter().chain(&scenario.steps) {
        run_step(&mut world, step, &scenario.name);
    }
}

fn run_step(world: &mut World, step: &Step, scenario: &str) {
    let context = format!("scenario {scenario:?}, step {:?}", step.text);
    match step.text.as_str() {
        "HTTP Protocol Binding is supported" => {}
        "an HTTP request" => {
            let request = step
                .doc_string
                .as_deref()
                .unwrap_or_else(|| panic!("{context}: needs a doc string"));
            world.request = Some(parse_http_request(request, &context));
        }
        "parsed as HTTP request" => {
            let (headers, body) = world
                .request
                .take()
                .unwrap_or_else(|| panic!("{context}: no request"));
            let mode = content_mode(&headers).unwrap_or_else(|error| panic!("{context}: {error}"));
            let event = match mode {
                ContentMode::Binary => parse_binary(&headers, body),
                ContentMode::Structured => parse_structured(&body),
                ContentMode::Batch => panic!("{context}: the feature has no batch scenarios yet"),
            };
            world.event = Some(event.unwrap_or_else(|error| panic!("{context}: {error}")));
        }
        "the attributes are:" => {
            let event = world
                .event
                .as_ref()
                .unwrap_or_else(|| panic!("{context}: no event"));
            let (header, rows) = step
                .table
                .split_first()
                .unwrap_or_else(|| panic!("{context}: needs a table"));
            assert_eq!(header, &["key", "value"], "{context}");
            for row in rows {
                let [key, value] = row.as_slice() else {
                    panic!("{context}: row {row:?} needs two cells")
                };
                assert_eq!(
                    attribute(event, key).as_deref(),
                    Some(value.as_str()),
                    "{context}: attribute {key}"
                );
            }
        }
        "the data is equal to the following JSON:" => {
            let event = world
                .event
                .as_ref()
                .unwrap_or_else(|| panic!("{context}: no event"));
            let expected = step
                .doc_string
                .as_deref()
                .unwrap_or_else(|| panic!("{context}: needs a doc string"));
            let expected: serde_json::Value =
                serde_json::from_str(expected).unwrap_or_else(|error| panic!("{context}: {error}"));
            let actual: serde_json::Value = match &event.data {
                Some(Data::Json(raw)) => serde_json::from_str(raw.get()),
                Some(Data::Text(text)) => serde_json::from_str(text),
                Some(Data::Binary(bytes)) => serde_json::from_slice(bytes),
                None => panic!("{context}: the event has no data"),
            }
            .unwrap_or_else(|error| panic!("{context}: data is not JSON: {error}"));
            assert_eq!(actual, expected, "{context}");
        }
        other => panic!("{context}: no handler for step {other:?}"),
    }
}

/// Splits an HTTP/1.1 request into headers and body. The request line is skipped; the body is
/// everything after the first empty line. `Content-Length` is not enforced: the doc strings'
/// line endings are not the wire's.
fn parse_http_request(request: &str, context: &str) -> (HeaderMap, Bytes) {
    let (head, body) = request.split_once("\n\n").unwrap_or((request, ""));
    let mut headers = HeaderMap::new();
    for line in head.lines().skip(1) {
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{context}: bad header line {line:?}"));
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .unwrap_or_else(|error| panic!("{context}: {error}"));
        let value = HeaderValue::from_str(value.trim())
            .unwrap_or_else(|error| panic!("{context}: {error}"));
        headers.append(name, value);
    }
    (headers, Bytes::copy_from_slice(body.as_bytes()))
}

fn attribute(event: &CloudEvent, key: &str) -> Option<String> {
    match key {
        "id" => Some(event.id.clone()),
        "source" => Some(event.source.clone()),
        "specversion" => Some(event.specversion.clone()),
        "type" => Some(event.ty.clone()),
        "datacontenttype" => event.datacontenttype.clone(),
        "dataschema" => event.dataschema.clone(),
        "subject" => event.subject.clone(),
        "time" => event.time.clone(),
        extension => event.extensions.get(extension).map(|value| match value {
            ExtensionValue::String(value) => value.clone(),
            ExtensionValue::Integer(value) => value.to_string(),
            ExtensionValue::Boolean(value) => value.to_string(),
        }),
    }
}

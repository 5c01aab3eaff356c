//! Fuzzes `content_mode` and `parse_binary` with a header map and body built from the fuzz
//! input. The map can start from a valid event's headers, and header names are biased towards
//! `ce-*` and the attribute names the parser knows, so the fuzzer reaches accepted events and
//! each validation rule instead of stopping at the first missing attribute.
//!
//! An accepted event must survive both ways out: `to_binary_headers` and back must give the
//! same event (binary mode carries extension values as strings, so nothing is lost), and so must
//! the stored structured encoding.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use trellis_cloudevents::{CloudEvent, content_mode, parse_binary};

#[derive(Debug, Arbitrary)]
struct Request {
    /// Start from the four required headers of a valid event.
    start_valid: bool,
    headers: Vec<Header>,
    body: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Header {
    name: Name,
    value: Vec<u8>,
    /// Replace any earlier header of this name rather than adding another.
    replace: bool,
}

#[derive(Debug, Arbitrary)]
enum Name {
    Known(Known),
    /// `ce-` followed by these bytes.
    Ce(Vec<u8>),
    /// Any header name.
    Other(Vec<u8>),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Known {
    SpecVersion,
    Id,
    Source,
    Type,
    Time,
    Subject,
    DataSchema,
    DataContentType,
    Data,
    ContentType,
}

impl Name {
    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Name::Known(known) => {
                let name = match known {
                    Known::SpecVersion => "ce-specversion",
                    Known::Id => "ce-id",
                    Known::Source => "ce-source",
                    Known::Type => "ce-type",
                    Known::Time => "ce-time",
                    Known::Subject => "ce-subject",
                    Known::DataSchema => "ce-dataschema",
                    Known::DataContentType => "ce-datacontenttype",
                    Known::Data => "ce-data",
                    Known::ContentType => "content-type",
                };
                name.as_bytes().to_vec()
            }
            Name::Ce(suffix) => [b"ce-".as_slice(), suffix].concat(),
            Name::Other(name) => name.clone(),
        }
    }
}

fuzz_target!(|request: Request| {
    let mut headers = HeaderMap::new();
    if request.start_valid {
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
    }
    for header in &request.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&header.name.to_bytes()),
            HeaderValue::from_bytes(&header.value),
        ) else {
            continue;
        };
        if header.replace {
            headers.insert(name, value);
        } else {
            headers.append(name, value);
        }
    }
    let _ = content_mode(&headers);
    let Ok(event) = parse_binary(&headers, Bytes::from(request.body)) else {
        return;
    };

    let message = event.to_binary_headers().expect("a parsed event encodes");
    let back = parse_binary(&message.headers, message.body).expect("an encoded event parses");
    assert_eq!(back, event);

    let encoded = event.to_structured_json();
    assert_eq!(encoded.len(), event.encoded_len());
    assert_eq!(
        CloudEvent::from_structured_json(&encoded).as_ref(),
        Ok(&event)
    );
});

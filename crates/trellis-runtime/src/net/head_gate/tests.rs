use proptest::prelude::Strategy;

use super::*;

/// What passes and what is refused, for `input` in one piece.
fn run(input: &[u8]) -> (usize, Option<Refusal>, bool) {
    feed(input, &[])
}

/// The same for every way of cutting `input` in two and in single bytes.
fn run_all_cuts(input: &[u8]) -> (usize, Option<Refusal>, bool) {
    let whole = run(input);
    for cut in 1..input.len().min(255) {
        let cut = u8::try_from(cut).unwrap_or(u8::MAX);
        assert_eq!(feed(input, &[cut]), whole, "cut at {cut}");
    }
    assert_eq!(feed(input, &[1; 4096]), whole, "byte by byte");
    whole
}

const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";

#[test]
fn valid_requests_pass_whole_including_pipelined_and_bodies() {
    let mut input = GET.to_vec();
    input.extend_from_slice(b"POST /v1/topics/t/events HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    input.extend_from_slice(GET);
    assert_eq!(run_all_cuts(&input), (input.len(), None, false));
}

#[test]
fn chunked_bodies_with_extensions_and_trailers_are_followed() {
    let mut input = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5;ext=1\r\nhello\r\n3 \r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
        .to_vec();
    input.extend_from_slice(GET);
    assert_eq!(run_all_cuts(&input), (input.len(), None, false));
}

#[test]
fn an_incomplete_head_is_held_back() {
    let input = b"GET /healthz HTTP/1.1\r\nHo";
    assert_eq!(run(input), (0, None, false));
    let mut gate = HeadGate::default();
    assert_eq!(
        gate.scan(input),
        Scan {
            pass: 0,
            hold: true
        }
    );
}

#[test]
fn malformed_heads_are_refused_after_the_requests_before_them() {
    for (bad, refusal) in [
        (
            &b"GARBAGE\r\n\r\n"[..],
            Refusal::Malformed("the request line is malformed"),
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            Refusal::Malformed("Content-Length must be a whole number of bytes"),
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            Refusal::Malformed("Content-Length headers disagree"),
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            Refusal::Malformed("Transfer-Encoding must end in chunked"),
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Refusal::Malformed("Transfer-Encoding is not allowed in HTTP/1.0"),
        ),
        (
            b"GET / HTTP/9.9\r\n\r\n",
            Refusal::Malformed("the request line must end in HTTP/1.0 or HTTP/1.1"),
        ),
        (
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            Refusal::Malformed("a header field is malformed"),
        ),
    ] {
        let mut input = GET.to_vec();
        input.extend_from_slice(bad);
        assert_eq!(
            run_all_cuts(&input),
            (GET.len(), Some(refusal), false),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn oversized_heads_and_targets_are_refused_with_their_own_status() {
    let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET_BYTES + 1));
    assert_eq!(
        run(long_target.as_bytes()),
        (0, Some(Refusal::TargetTooLong), false)
    );
    // Still arriving: the request line alone is already too long.
    let endless_target = format!("GET /{}", "a".repeat(MAX_TARGET_BYTES + 100));
    assert_eq!(
        run(endless_target.as_bytes()),
        (0, Some(Refusal::TargetTooLong), false)
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(MAX_HEAD_BYTES)
    );
    assert_eq!(
        run(big_header.as_bytes()),
        (0, Some(Refusal::HeadTooLarge), false)
    );
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(
        run(many.as_bytes()),
        (0, Some(Refusal::HeadTooLarge), false)
    );
}

#[test]
fn http2_upgrades_and_closing_requests_make_the_gate_step_aside() {
    let mut h2 = H2_PREFACE.to_vec();
    h2.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage");
    assert_eq!(run_all_cuts(&h2), (h2.len(), None, true));

    let mut closing = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
    closing.extend_from_slice(b"GARBAGE\r\n\r\n");
    assert_eq!(run_all_cuts(&closing), (closing.len(), None, true));

    let mut upgrade = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n".to_vec();
    upgrade.extend_from_slice(b"\x81\x05hello");
    assert_eq!(run_all_cuts(&upgrade), (upgrade.len(), None, true));
}

#[test]
fn every_refusal_is_a_json_answer_with_its_status() {
    for (refusal, status) in [
        (Refusal::HeadTooLarge, "431"),
        (Refusal::TargetTooLong, "414"),
        (Refusal::Malformed("x"), "400"),
    ] {
        let answer = String::from_utf8(refusal.response()).expect("utf-8");
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert!(json["error"].is_string() && json["message"].is_string());
    }
}

#[test]
fn the_fuzz_property_holds_on_a_mixed_input() {
    let mut input = GET.to_vec();
    input.extend_from_slice(
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    );
    input.extend_from_slice(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
    fuzz_head_gate(&input, &[3, 1, 7, 2, 40, 1, 1, 9]);
}

/// Pieces requests are made of, valid and not, so random inputs reach every state.
const PIECES: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"POST /v1/topics/t/events HTTP/1.1\r\n",
    b"Host: a\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Upgrade: x\r\n",
    b"\r\n",
    b"abc",
    b"3\r\nabc\r\n",
    b"0\r\n\r\n",
    b"0\r\nT: 1\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\r",
    b"\n",
    b" ",
    b"\x00",
    b"HTTP/1.0",
];

proptest::proptest! {
    /// The fuzz target's property on inputs built from request pieces and random bytes: what
    /// passes never depends on how the bytes arrive.
    #[test]
    fn what_passes_does_not_depend_on_the_cuts(
        parts in proptest::collection::vec(
            proptest::prop_oneof![
                4 => proptest::sample::select(PIECES).prop_map(<[u8]>::to_vec),
                1 => proptest::collection::vec(proptest::num::u8::ANY, 0..8),
            ],
            0..24,
        ),
        cuts in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
    ) {
        let input: Vec<u8> = parts.concat();
        fuzz_head_gate(&input, &cuts);
    }
}

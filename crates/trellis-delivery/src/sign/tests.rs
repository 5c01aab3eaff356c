use super::*;

const SECRET: &[u8] = b"whsec_test";
const BODY: &[u8] = br#"{"id":"1"}"#;
const T: i64 = 1_700_000_000;

#[test]
fn known_answer() {
    // Computed independently: python3 hmac.new(b"whsec_test", b'1700000000.{"id":"1"}',
    // hashlib.sha256).hexdigest()
    assert_eq!(
        signature(SECRET, T, BODY),
        "t=1700000000,v1=11bf4466ea17c3df3fd743af0b435368e16b7a05eb8eced85e8c4670767bdec5"
    );
}

#[test]
fn long_keys_and_negative_timestamps() {
    // A key longer than SHA-256's 64-byte block is hashed first; python3 agrees.
    assert_eq!(
        signature(&[b'k'; 100], -5, b""),
        "t=-5,v1=08da09817b82bc258cdac8551780f02feef65956afc87ef0932646fac7ad0dc6"
    );
    assert_eq!(
        verify(&[b'k'; 100], &signature(&[b'k'; 100], -5, b""), b"", 0, 5),
        Ok(())
    );
}

#[test]
fn round_trip_within_tolerance_either_way() {
    let header = signature(SECRET, T, BODY);
    for now in [T - 300, T - 1, T, T + 1, T + 300] {
        assert_eq!(verify(SECRET, &header, BODY, now, 300), Ok(()), "now {now}");
    }
}

#[test]
fn outside_tolerance_is_refused() {
    let header = signature(SECRET, T, BODY);
    for now in [T - 301, T + 301, i64::MIN, i64::MAX] {
        assert!(
            matches!(
                verify(SECRET, &header, BODY, now, 300),
                Err(SignatureError::OutsideTolerance { .. })
            ),
            "now {now}"
        );
    }
    assert!(matches!(
        verify(SECRET, &header, BODY, T + 1, -10),
        Err(SignatureError::OutsideTolerance { tolerance_s: 0, .. })
    ));
    assert_eq!(verify(SECRET, &header, BODY, T, -10), Ok(()));
}

#[test]
fn tampering_is_refused() {
    let header = signature(SECRET, T, BODY);
    assert_eq!(
        verify(SECRET, &header, br#"{"id":"2"}"#, T, 300),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify(b"other", &header, BODY, T, 300),
        Err(SignatureError::Mismatch)
    );
    // Moving the timestamp invalidates the MAC even when the new one is fresh.
    let moved = header.replace("t=1700000000", "t=1700000100");
    assert_eq!(
        verify(SECRET, &moved, BODY, T + 100, 300),
        Err(SignatureError::Mismatch)
    );
    // A truncated or non-hex signature is just a mismatch.
    let truncated = &header[..header.len() - 2];
    assert_eq!(
        verify(SECRET, truncated, BODY, T, 300),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify(SECRET, "t=1700000000,v1=zz", BODY, T, 300),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn any_matching_v1_is_accepted_and_unknown_keys_ignored() {
    let good = signature(SECRET, T, BODY);
    let good_v1 = good
        .split_once(",v1=")
        .map(|(_, v1)| v1)
        .unwrap_or_default();
    let header = format!("t={T}, v1=00ff, v2=whatever, v1={good_v1}");
    assert_eq!(verify(SECRET, &header, BODY, T, 300), Ok(()));
    // Uppercase hex decodes to the same bytes.
    let upper = format!("t={T},v1={}", good_v1.to_uppercase());
    assert_eq!(verify(SECRET, &upper, BODY, T, 300), Ok(()));
}

#[test]
fn malformed_headers() {
    let good = signature(SECRET, T, BODY);
    let good_v1 = good
        .split_once(",v1=")
        .map(|(_, v1)| v1)
        .unwrap_or_default();
    let cases = [
        ("", SignatureError::MissingTimestamp),
        ("garbage", SignatureError::MissingTimestamp),
        (&format!("v1={good_v1}"), SignatureError::MissingTimestamp),
        (
            &format!("t=soon,v1={good_v1}"),
            SignatureError::MissingTimestamp,
        ),
        (
            &format!("t=1.5,v1={good_v1}"),
            SignatureError::MissingTimestamp,
        ),
        (
            &format!("t={T},t={T},v1={good_v1}"),
            SignatureError::MissingTimestamp,
        ),
        (&format!("t={T}"), SignatureError::MissingSignature),
        (
            &format!("t={T},v0={good_v1}"),
            SignatureError::MissingSignature,
        ),
    ];
    for (header, error) in cases {
        assert_eq!(
            verify(SECRET, header, BODY, T, 300),
            Err(error),
            "{header:?}"
        );
    }
}

#[test]
fn empty_secret_and_body_still_sign() {
    let header = signature(b"", 0, b"");
    assert_eq!(verify(b"", &header, b"", 0, 0), Ok(()));
}

use super::*;

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("valid status code")
}

/// The rules as written in the design, independently of `default_verdict`'s match.
fn expected(code: u16) -> Verdict {
    let is_2xx = (200..300).contains(&code);
    let is_5xx = (500..600).contains(&code);
    if is_2xx {
        Verdict::Delivered
    } else if code == 410 {
        Verdict::Gone
    } else if code == 408 || code == 429 || (is_5xx && code != 501) {
        Verdict::Retriable
    } else {
        Verdict::Permanent
    }
}

#[test]
fn default_table_covers_every_code() {
    let policy = StatusPolicy::default();
    for code in 100..=599 {
        assert_eq!(
            policy.classify(status(code)),
            expected(code),
            "status {code}"
        );
    }
}

#[test]
fn default_table_spot_checks() {
    let policy = StatusPolicy::default();
    let table = [
        (200, Verdict::Delivered),
        (202, Verdict::Delivered),
        (204, Verdict::Delivered),
        (101, Verdict::Permanent),
        (301, Verdict::Permanent),
        (302, Verdict::Permanent),
        (307, Verdict::Permanent),
        (400, Verdict::Permanent),
        (401, Verdict::Permanent),
        (403, Verdict::Permanent),
        (404, Verdict::Permanent),
        (408, Verdict::Retriable),
        (409, Verdict::Permanent),
        (410, Verdict::Gone),
        (413, Verdict::Permanent),
        (415, Verdict::Permanent),
        (429, Verdict::Retriable),
        (500, Verdict::Retriable),
        (501, Verdict::Permanent),
        (502, Verdict::Retriable),
        (503, Verdict::Retriable),
        (504, Verdict::Retriable),
        (599, Verdict::Retriable),
        (600, Verdict::Permanent),
        (999, Verdict::Permanent),
    ];
    for (code, verdict) in table {
        assert_eq!(policy.classify(status(code)), verdict, "status {code}");
    }
}

#[test]
fn overrides_change_non_2xx_codes() {
    let policy = StatusPolicy {
        retry_on: vec![404, 409, 501],
        drop_on: vec![500, 429, 410],
    };
    let table = [
        (404, Verdict::Retriable),
        (409, Verdict::Retriable),
        (501, Verdict::Retriable),
        (500, Verdict::Permanent),
        (429, Verdict::Permanent),
        // drop_on turns Gone into a plain dead-letter: the user asked not to pause the URL.
        (410, Verdict::Permanent),
        // Untouched codes keep the default.
        (503, Verdict::Retriable),
        (400, Verdict::Permanent),
    ];
    for (code, verdict) in table {
        assert_eq!(policy.classify(status(code)), verdict, "status {code}");
    }
}

#[test]
fn retry_on_can_make_gone_retriable() {
    let policy = StatusPolicy {
        retry_on: vec![410],
        drop_on: vec![],
    };
    assert_eq!(policy.classify(StatusCode::GONE), Verdict::Retriable);
}

#[test]
fn two_hundreds_cannot_be_overridden() {
    let policy = StatusPolicy {
        retry_on: vec![200, 201],
        drop_on: vec![202, 204],
    };
    for code in [200, 201, 202, 204] {
        assert_eq!(policy.classify(status(code)), Verdict::Delivered, "{code}");
    }
}

#[test]
fn drop_on_wins_over_retry_on() {
    let policy = StatusPolicy {
        retry_on: vec![503, 404],
        drop_on: vec![503, 404],
    };
    assert_eq!(
        policy.classify(StatusCode::SERVICE_UNAVAILABLE),
        Verdict::Permanent
    );
    assert_eq!(policy.classify(StatusCode::NOT_FOUND), Verdict::Permanent);
}

#[test]
fn backpressure_is_429_and_503_only() {
    for code in 100..=599 {
        let expected = code == 429 || code == 503;
        assert_eq!(is_backpressure(status(code)), expected, "status {code}");
    }
}

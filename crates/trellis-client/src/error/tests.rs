use super::*;

#[test]
fn codes_are_classified_as_the_proto_says() {
    for code in [
        Code::Unavailable,
        Code::ResourceExhausted,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::Internal,
    ] {
        assert!(is_transient_code(code), "{code:?}");
    }
    for code in [
        Code::InvalidArgument,
        Code::FailedPrecondition,
        Code::NotFound,
        Code::PermissionDenied,
        Code::Unauthenticated,
        Code::Unimplemented,
    ] {
        assert!(!is_transient_code(code), "{code:?}");
    }
}

#[test]
fn a_rejected_record_is_permanent_and_a_timeout_transient() {
    let rejected = ProducerError::Rejected {
        code: Code::InvalidArgument,
        message: "source is empty".to_owned(),
        attribute: Some("source".to_owned()),
    };
    assert!(!rejected.is_transient());
    assert!(ProducerError::DeliveryTimeout(Duration::from_secs(1)).is_transient());
    assert_eq!(
        rejected.to_string(),
        "refused by the server (InvalidArgument): source is empty"
    );
}

use proptest::prelude::*;

use super::*;

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Failed),
        Just(Event::BackoffElapsed),
        Just(Event::Recovered),
    ]
}

#[test]
fn a_failure_cycles_through_backoff_and_recovering_back_to_ready() {
    let mut machine = StateMachine::default();
    assert_eq!(machine.state(), ConnectionState::Ready);
    let states: Vec<_> = [Event::Failed, Event::BackoffElapsed, Event::Recovered]
        .into_iter()
        .map(|event| machine.on(event).expect("valid transition"))
        .collect();
    assert_eq!(
        states,
        [
            ConnectionState::Backoff,
            ConnectionState::Recovering,
            ConnectionState::Ready
        ]
    );
    assert_eq!(machine.failures(), 0);
}

#[test]
fn failed_recoveries_count_towards_the_backoff() {
    let mut machine = StateMachine::default();
    for expected in 1..=3 {
        machine.on(Event::Failed).expect("fails");
        assert_eq!(machine.failures(), expected);
        machine.on(Event::BackoffElapsed).expect("elapses");
    }
}

#[test]
fn ready_ignores_recovered_and_backoff_elapsed() {
    let mut machine = StateMachine::default();
    assert!(machine.on(Event::Recovered).is_err());
    assert!(machine.on(Event::BackoffElapsed).is_err());
    assert_eq!(machine.state(), ConnectionState::Ready);
}

proptest! {
    /// Whatever happens, the machine only moves along the documented edges, an invalid event
    /// leaves it where it was, and the failure count is zero exactly when it is Ready.
    #[test]
    fn only_documented_transitions(events in proptest::collection::vec(event(), 0..64)) {
        let mut machine = StateMachine::default();
        for event in events {
            let before = machine.clone();
            match machine.on(event) {
                Ok(after) => {
                    let allowed = matches!(
                        (before.state(), after),
                        (ConnectionState::Ready, ConnectionState::Backoff)
                            | (ConnectionState::Backoff, ConnectionState::Recovering)
                            | (ConnectionState::Recovering, ConnectionState::Ready)
                            | (ConnectionState::Recovering, ConnectionState::Backoff)
                    );
                    prop_assert!(allowed, "{:?} -> {:?}", before.state(), after);
                }
                Err(_) => prop_assert_eq!(&machine, &before),
            }
            prop_assert_eq!(machine.failures() == 0, machine.state() == ConnectionState::Ready);
        }
    }
}

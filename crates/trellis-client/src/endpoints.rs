//! Which endpoint to connect to next: stay on the one that works, move on after a failure, and
//! skip an endpoint that failed recently until its quarantine is over.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Endpoints {
    addresses: Vec<String>,
    quarantined_until: Vec<Option<Instant>>,
    current: usize,
    quarantine: Duration,
}

impl Endpoints {
    /// `addresses` is not empty (the config validates it).
    pub(crate) fn new(addresses: Vec<String>, quarantine: Duration) -> Endpoints {
        let n_addresses = addresses.len();
        Endpoints {
            addresses,
            quarantined_until: vec![None; n_addresses],
            current: 0,
            quarantine,
        }
    }

    /// The endpoint to try now: the current one, or the next one after it that is not in
    /// quarantine; when every endpoint is, the one whose quarantine ends first (waiting would
    /// only delay the records).
    pub(crate) fn pick(&mut self, now: Instant) -> (usize, &str) {
        let n_addresses = self.addresses.len();
        let available = (0..n_addresses)
            .map(|step| (self.current + step) % n_addresses)
            .find(|&index| self.quarantined_until[index].is_none_or(|until| until <= now));
        let index = available.unwrap_or_else(|| {
            (0..n_addresses)
                .min_by_key(|&index| self.quarantined_until[index])
                .unwrap_or(0)
        });
        self.current = index;
        (index, self.addresses[index].as_str())
    }

    /// `index` failed at `now`: skip it for the quarantine and move on.
    pub(crate) fn failed(&mut self, index: usize, now: Instant) {
        if let Some(until) = self.quarantined_until.get_mut(index) {
            *until = Some(now + self.quarantine);
        }
        if index == self.current && !self.addresses.is_empty() {
            self.current = (index + 1) % self.addresses.len();
        }
    }

    /// `index` answered: it is trusted again.
    pub(crate) fn succeeded(&mut self, index: usize) {
        if let Some(until) = self.quarantined_until.get_mut(index) {
            *until = None;
        }
    }
}

#[cfg(test)]
mod tests;

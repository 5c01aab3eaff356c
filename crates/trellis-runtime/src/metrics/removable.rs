//! Series that belong to one subscription or one consumer group, kept apart from the Prometheus
//! recorder so that they can be removed when their owner goes. The exporter (0.18) has no call
//! that removes a series; its idle timeout removes series nobody updated lately, which would
//! also drop live ones that merely stand still, and orphan the handles held for them.
//!
//! `Router` is the process-wide recorder: counters and gauges whose key has a `subscription` or
//! `group` label live here, everything else goes to the Prometheus recorder. A family is routed
//! by its labels, so every series of such a family must carry the label. `/metrics` renders both.
//! Histograms are never routed (none is per subscription).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;
use metrics_exporter_prometheus::formatting::{
    sanitize_label_key, sanitize_label_value, sanitize_metric_name, write_help_line,
    write_type_line,
};

/// The labels that make a series removable.
const OWNER_LABELS: &[&str] = &["subscription", "group"];

#[derive(Default)]
pub(crate) struct Removable {
    counters: RwLock<HashMap<Key, Arc<AtomicU64>>>,
    gauges: RwLock<HashMap<Key, Arc<AtomicU64>>>,
    descriptions: RwLock<HashMap<String, SharedString>>,
}

pub(crate) fn removable() -> &'static Removable {
    static REMOVABLE: OnceLock<Removable> = OnceLock::new();
    REMOVABLE.get_or_init(Removable::default)
}

fn routed(key: &Key) -> bool {
    key.labels()
        .any(|label| OWNER_LABELS.contains(&label.key()))
}

fn entry(map: &RwLock<HashMap<Key, Arc<AtomicU64>>>, key: &Key) -> Arc<AtomicU64> {
    if let Some(atomic) = map.read().ok().and_then(|map| map.get(key).cloned()) {
        return atomic;
    }
    match map.write() {
        Ok(mut map) => Arc::clone(map.entry(key.clone()).or_default()),
        // A poisoned map: count into a cell of its own rather than fail the caller.
        Err(_) => Arc::default(),
    }
}

impl Removable {
    /// Removes every series whose labels include all of `labels`. A handle still held for one
    /// keeps counting into a cell nobody renders, so call this once its owner has stopped.
    pub(crate) fn remove(&self, labels: &[(&str, &str)]) {
        let matches = |key: &Key| {
            labels.iter().all(|(name, value)| {
                key.labels()
                    .any(|label| label.key() == *name && label.value() == *value)
            })
        };
        for map in [&self.counters, &self.gauges] {
            if let Ok(mut map) = map.write() {
                map.retain(|key, _| !matches(key));
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        [&self.counters, &self.gauges]
            .iter()
            .map(|map| map.read().map_or(0, |map| map.len()))
            .sum()
    }

    /// The Prometheus text of every series held, families sorted by name.
    pub(crate) fn render(&self) -> String {
        let descriptions = self
            .descriptions
            .read()
            .map(|map| map.clone())
            .unwrap_or_default();
        let mut out = String::new();
        for (kind, map) in [("counter", &self.counters), ("gauge", &self.gauges)] {
            let Ok(map) = map.read() else { continue };
            let mut families: BTreeMap<String, Vec<(&Key, u64)>> = BTreeMap::new();
            for (key, value) in map.iter() {
                families
                    .entry(sanitize_metric_name(key.name()))
                    .or_default()
                    .push((key, value.load(Ordering::Relaxed)));
            }
            for (name, mut series) in families {
                if let Some(description) = descriptions.get(&name) {
                    write_help_line(&mut out, &name, None, None, description);
                }
                write_type_line(&mut out, &name, None, None, kind);
                series.sort_by_key(|(key, _)| {
                    key.labels()
                        .map(|l| l.value().to_owned())
                        .collect::<Vec<_>>()
                });
                for (key, bits) in series {
                    out.push_str(&name);
                    let labels: Vec<String> = key
                        .labels()
                        .map(|label| {
                            format!(
                                "{}=\"{}\"",
                                sanitize_label_key(label.key()),
                                sanitize_label_value(label.value())
                            )
                        })
                        .collect();
                    if !labels.is_empty() {
                        let _ = write!(out, "{{{}}}", labels.join(","));
                    }
                    let _ = match kind {
                        "gauge" => writeln!(out, " {}", f64::from_bits(bits)),
                        _ => writeln!(out, " {bits}"),
                    };
                }
                out.push('\n');
            }
        }
        out
    }

    fn describe(&self, key: &KeyName, description: &SharedString) {
        if let Ok(mut map) = self.descriptions.write() {
            map.insert(sanitize_metric_name(key.as_str()), description.clone());
        }
    }
}

/// The process-wide recorder: routes owner-labelled counters and gauges to `removable()`.
pub(crate) struct Router {
    pub(crate) prometheus: PrometheusRecorder,
}

impl Recorder for Router {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        removable().describe(&key, &description);
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        removable().describe(&key, &description);
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if routed(key) {
            return Counter::from_arc(entry(&removable().counters, key));
        }
        self.prometheus.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if routed(key) {
            return Gauge::from_arc(entry(&removable().gauges, key));
        }
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.prometheus.register_histogram(key, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_an_owner_removes_its_series_only() {
        let removable = Removable::default();
        let key = |owner: &str| {
            Key::from_parts(
                "trellis_test_total",
                vec![metrics::Label::new("subscription", owner.to_owned())],
            )
        };
        entry(&removable.counters, &key("a")).fetch_add(3, Ordering::Relaxed);
        entry(&removable.counters, &key("b")).fetch_add(5, Ordering::Relaxed);
        assert!(
            removable
                .render()
                .contains("trellis_test_total{subscription=\"a\"} 3")
        );
        removable.remove(&[("subscription", "a")]);
        let text = removable.render();
        assert!(!text.contains("subscription=\"a\""), "{text}");
        assert!(
            text.contains("trellis_test_total{subscription=\"b\"} 5"),
            "{text}"
        );
        assert_eq!(removable.len(), 1);
    }
}

//! The human view of `GET /v1/cluster`: a table of replicas, then the units each owns. A pure
//! function from the API's JSON to text; a field the API leaves out shows as `-`.

use serde_json::Value;

use crate::subscriptions_cmd::render::{inline, table};

/// `cluster status`: one row per member under `ID HTTP GRPC SUBS CONNECTORS GROUPS EVENTS/S LAG
/// STARTED`, a line on the replica that answered, then each member's units (sorted) and the
/// units nobody owns.
pub(crate) fn cluster_status(answer: &Value) -> String {
    let members: &[Value] = answer
        .get("members")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|member| {
            vec![
                cell(member.get("id")),
                cell(member.get("http")),
                cell(member.get("grpc")),
                cell(member.pointer("/load/subscriptions")),
                cell(member.pointer("/load/connectors")),
                cell(member.pointer("/load/groups")),
                rate(member.pointer("/load/events_per_second")),
                cell(member.pointer("/load/lag")),
                cell(member.get("started_at")),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "ID",
            "HTTP",
            "GRPC",
            "SUBS",
            "CONNECTORS",
            "GROUPS",
            "EVENTS/S",
            "LAG",
            "STARTED",
        ],
        &rows,
    );
    text.push('\n');
    text.push_str(&answered_by(answer));
    for member in members {
        let id = cell(member.get("id"));
        let units = sorted_units(member.get("owns"));
        if units.is_empty() {
            text.push_str(&format!("{id} owns nothing\n"));
        } else {
            text.push_str(&format!("{id} owns {}:\n", units.len()));
            push_units(&mut text, &units);
        }
    }
    let unowned = sorted_units(answer.get("unowned"));
    if !unowned.is_empty() {
        text.push_str(&format!("unowned {}:\n", unowned.len()));
        push_units(&mut text, &unowned);
    }
    text
}

/// `answered by node-a: healthy, lease TTL 5000 ms`. A replica that cannot prove its lease
/// alive has stopped delivering, which is the first thing to know when looking at it.
fn answered_by(answer: &Value) -> String {
    let id = cell(answer.get("self"));
    let health = match answer.get("healthy").and_then(Value::as_bool) {
        Some(true) => "healthy",
        Some(false) => "NOT healthy (its lease on the metadata store is not proven alive)",
        None => "health unknown",
    };
    let ttl = match answer.get("lease_ttl_ms").and_then(Value::as_u64) {
        Some(ms) => format!(", lease TTL {ms} ms"),
        None => String::new(),
    };
    format!("answered by {id}: {health}{ttl}\n")
}

fn push_units(text: &mut String, units: &[String]) {
    for unit in units {
        text.push_str("  ");
        text.push_str(unit);
        text.push('\n');
    }
}

/// The unit names of a list, sorted, so that a subscription's place is easy to find.
fn sorted_units(list: Option<&Value>) -> Vec<String> {
    let mut units: Vec<String> = list
        .and_then(Value::as_array)
        .map(|units| units.iter().map(inline).collect())
        .unwrap_or_default();
    units.sort();
    units
}

fn cell(value: Option<&Value>) -> String {
    value.map_or_else(|| "-".to_owned(), inline)
}

/// Events per second with one decimal: the rate is a measurement, not a count.
fn rate(value: Option<&Value>) -> String {
    match value.and_then(Value::as_f64) {
        Some(rate) => format!("{rate:.1}"),
        None => cell(value),
    }
}

#[cfg(test)]
mod tests;

//! `trellis subscriptions list|get|create|delete`: a client of a running `trellis serve`.
//!
//! Each command is one request to the HTTP API. Answers print as a table or key/value view
//! (`render.rs`), or with `--json` as the API's JSON, pretty-printed. The server validates
//! subscriptions; this side only builds the request body, so the rules live in one place.

pub(crate) mod render;

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value, json};

use crate::api_client::{ApiClient, path_segment};
use crate::cli::{
    CreateArgs, SinkMode, SinkStrategy, StartAt, SubscriptionsArgs, SubscriptionsCommand,
};

pub(crate) fn run(args: SubscriptionsArgs) -> anyhow::Result<()> {
    // Checked before anything else: a bad --server is a usage error, not a network one.
    let api = ApiClient::new(&args.server.server)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let output = runtime.block_on(execute(&api, args.command))?;
    print(&output)
}

/// Runs one command and returns what it prints on stdout.
async fn execute(api: &ApiClient, command: SubscriptionsCommand) -> anyhow::Result<String> {
    match command {
        SubscriptionsCommand::List(output) => {
            let answer = api.get("/v1/subscriptions").await?.into_json()?;
            if output.json {
                return pretty(&answer);
            }
            let Some(subscriptions) = answer.get("subscriptions").and_then(Value::as_array) else {
                anyhow::bail!("the server's answer has no `subscriptions` list; is it trellis?");
            };
            Ok(render::subscription_table(subscriptions))
        }
        SubscriptionsCommand::Get(args) => {
            let path = format!("/v1/subscriptions/{}", path_segment(&args.name));
            let answer = api.get(&path).await?.into_json()?;
            if args.output.json {
                return pretty(&answer);
            }
            Ok(render::subscription_details(&answer))
        }
        SubscriptionsCommand::Create(args) => {
            let body = create_body(&args)?;
            let answer = api.post("/v1/subscriptions", &body).await?.into_json()?;
            if args.output.json {
                return pretty(&answer);
            }
            Ok(render::subscription_details(&answer))
        }
        SubscriptionsCommand::Delete(args) => {
            let path = format!("/v1/subscriptions/{}", path_segment(&args.name));
            api.delete(&path).await?.into_success()?;
            Ok(format!("deleted subscription {}\n", args.name))
        }
    }
}

/// The `POST /v1/subscriptions` body: the file's JSON as it is, or one built from the flags.
fn create_body(args: &CreateArgs) -> anyhow::Result<Value> {
    match &args.file {
        Some(path) => read_json(path),
        None => body_from_flags(args),
    }
}

/// Reads a JSON body from `path`, or from stdin for `-`. Parsed here so that a typo is reported
/// with the file's name and position instead of as the server's `invalid_json`.
fn read_json(path: &Path) -> anyhow::Result<Value> {
    let (text, source) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the subscription from stdin")?;
        (text, "stdin".to_owned())
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        (text, path.display().to_string())
    };
    serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))
}

/// The body for `--name --topic --url...`; settings not given are left out so the server's
/// defaults apply.
fn body_from_flags(args: &CreateArgs) -> anyhow::Result<Value> {
    // clap requires these without --file; the errors only guard against a change there.
    let name = args.name.as_deref().context("--name is required")?;
    let topic = args.topic.as_deref().context("--topic is required")?;
    if args.urls.is_empty() {
        anyhow::bail!("--url is required, e.g. --url http://127.0.0.1:8080/hook");
    }
    let mut sink = Map::new();
    sink.insert("urls".to_owned(), json!(args.urls));
    if let Some(strategy) = args.strategy {
        let word = match strategy {
            SinkStrategy::RoundRobin => "round_robin",
            SinkStrategy::Broadcast => "broadcast",
        };
        sink.insert("strategy".to_owned(), json!(word));
    }
    if let Some(mode) = args.mode {
        let word = match mode {
            SinkMode::Binary => "binary",
            SinkMode::Structured => "structured",
        };
        sink.insert("mode".to_owned(), json!(word));
    }
    let mut body = Map::new();
    body.insert("name".to_owned(), json!(name));
    body.insert("topic".to_owned(), json!(topic));
    body.insert("sink".to_owned(), Value::Object(sink));
    if let Some(topic) = &args.dead_letter_topic {
        body.insert("dead_letter_topic".to_owned(), json!(topic));
    }
    if let Some(start) = args.start {
        let start = match start {
            StartAt::Latest => json!("latest"),
            StartAt::Earliest => json!("earliest"),
            StartAt::Offset(offset) => json!(offset),
        };
        body.insert("start".to_owned(), start);
    }
    Ok(Value::Object(body))
}

pub(crate) fn pretty(answer: &Value) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(answer).context("cannot format the answer")?;
    text.push('\n');
    Ok(text)
}

/// Writes to stdout. A closed pipe (`trellis subscriptions list | head -1`) is not an error:
/// the reader has what it wanted.
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;

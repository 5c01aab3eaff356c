//! `trellis connectors list|get|status|create|update|delete|pause|resume|restart|offsets|plugins`:
//! a client of the connectors running inside a `trellis serve`.
//!
//! Each command is one or two requests to the HTTP API (`/v1/connectors...`). Answers print as
//! a table or key/value view (`render.rs`), or with `--json` as the API's JSON, pretty-printed.
//! The server validates connector configs; this side only reads the config file (YAML or JSON)
//! into the request body, so the rules live in one place.

mod render;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::api_client::{ApiClient, path_segment};
use crate::cli::OutputArgs;
use crate::subscriptions_cmd::{pretty, print};

#[derive(Debug, Args)]
pub(crate) struct ConnectorsArgs {
    #[command(flatten)]
    pub(crate) server: crate::cli::ServerArgs,
    #[command(subcommand)]
    pub(crate) command: ConnectorsCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConnectorsCommand {
    /// List connectors: name, type, class, topic and state.
    List(OutputArgs),
    /// Show one connector's config (secrets redacted) and its live status.
    Get(NameArgs),
    /// Show one connector's status: state, why it failed, record and offset counters.
    Status(NameArgs),
    /// Create a connector from a config file (YAML or JSON), or from a file holding {name, config}.
    Create(CreateArgs),
    /// Replace a connector's config (or create it); it restarts with the new config.
    Update(UpdateArgs),
    /// Delete a connector: it stops and its config and offsets are forgotten.
    Delete(NameOnlyArgs),
    /// Pause a connector: it stops moving records until resumed; its offsets are kept.
    Pause(NameArgs),
    /// Resume a paused or failed connector from its committed offsets.
    Resume(NameArgs),
    /// Restart a connector: stop it (offsets flushed) and start it again.
    Restart(NameArgs),
    /// Show a connector's committed offsets, or delete them (--delete, the connector paused).
    Offsets(OffsetsArgs),
    /// List the connector plugins this trellis runs: class, type and config keys.
    Plugins(OutputArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// Name of the connector
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct NameOnlyArgs {
    /// Name of the connector
    pub(crate) name: String,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// A file holding {name, config} (YAML or JSON, the POST /v1/connectors body); - reads stdin
    #[arg(long, value_name = "FILE", conflicts_with_all = ["name", "config"])]
    pub(crate) file: Option<PathBuf>,
    /// Name of the connector (A-Z a-z 0-9 . _ -)
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "file",
        requires = "config"
    )]
    pub(crate) name: Option<String>,
    /// The connector's config map, YAML or JSON (`connector.class`, `topic`, ...); - reads stdin
    #[arg(long, value_name = "FILE", required_unless_present = "file")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// Name of the connector
    pub(crate) name: String,
    /// The connector's new config map, YAML or JSON; - reads stdin
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct OffsetsArgs {
    /// Name of the connector
    pub(crate) name: String,
    /// Delete the committed offsets (the connector must be paused); it then starts afresh
    #[arg(long)]
    pub(crate) delete: bool,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

pub(crate) fn run(args: ConnectorsArgs) -> anyhow::Result<()> {
    // Checked before anything else: a bad --server is a usage error, not a network one.
    let api = ApiClient::new(&args.server.server)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let output = runtime.block_on(execute(&api, args.command))?;
    print(&output)
}

fn connector_path(name: &str, rest: &str) -> String {
    format!("/v1/connectors/{}{rest}", path_segment(name))
}

/// Runs one command and returns what it prints on stdout.
async fn execute(api: &ApiClient, command: ConnectorsCommand) -> anyhow::Result<String> {
    match command {
        ConnectorsCommand::List(output) => {
            let answer = api
                .get("/v1/connectors?expand=status&expand=info")
                .await?
                .into_json()?;
            if output.json {
                return pretty(&answer);
            }
            render::connector_table(&answer)
        }
        ConnectorsCommand::Get(args) => {
            let mut info = api
                .get(&connector_path(&args.name, ""))
                .await?
                .into_json()?;
            let status = api
                .get(&connector_path(&args.name, "/status"))
                .await?
                .into_json()?;
            if let Value::Object(info) = &mut info {
                info.insert("status".to_owned(), status);
            }
            if args.output.json {
                return pretty(&info);
            }
            Ok(render::connector_details(&info))
        }
        ConnectorsCommand::Status(args) => {
            let status = api
                .get(&connector_path(&args.name, "/status"))
                .await?
                .into_json()?;
            if args.output.json {
                return pretty(&status);
            }
            Ok(render::status_details(&status))
        }
        ConnectorsCommand::Create(args) => {
            let body = create_body(&args)?;
            let answer = api.post("/v1/connectors", &body).await?.into_json()?;
            if args.output.json {
                return pretty(&answer);
            }
            Ok(render::connector_details(&answer))
        }
        ConnectorsCommand::Update(args) => {
            let config = read_config(&args.config)?;
            let answer = api
                .put(&connector_path(&args.name, "/config"), Some(&config))
                .await?
                .into_json()?;
            if args.output.json {
                return pretty(&answer);
            }
            Ok(render::connector_details(&answer))
        }
        ConnectorsCommand::Delete(args) => {
            api.delete(&connector_path(&args.name, ""))
                .await?
                .into_success()?;
            Ok(format!("deleted connector {}\n", args.name))
        }
        ConnectorsCommand::Pause(args) => {
            let answer = api.put(&connector_path(&args.name, "/pause"), None).await?;
            state_change(answer.into_success()?, &args, "paused")
        }
        ConnectorsCommand::Resume(args) => {
            let answer = api
                .put(&connector_path(&args.name, "/resume"), None)
                .await?;
            state_change(answer.into_success()?, &args, "resumed")
        }
        ConnectorsCommand::Restart(args) => {
            let path = connector_path(&args.name, "/restart");
            let answer = api.post_empty(&path).await?;
            state_change(answer.into_success()?, &args, "restarted")
        }
        ConnectorsCommand::Offsets(args) => {
            let path = connector_path(&args.name, "/offsets");
            if args.delete {
                let answer = api.delete(&path).await?.into_json()?;
                if args.output.json {
                    return pretty(&answer);
                }
                let deleted = answer.get("deleted").and_then(Value::as_u64).unwrap_or(0);
                return Ok(format!(
                    "deleted {deleted} committed offsets of connector {}\n",
                    args.name
                ));
            }
            let answer = api.get(&path).await?.into_json()?;
            if args.output.json {
                return pretty(&answer);
            }
            render::offsets_table(&answer)
        }
        ConnectorsCommand::Plugins(output) => {
            let answer = api.get("/v1/connector-plugins").await?.into_json()?;
            if output.json {
                return pretty(&answer);
            }
            render::plugins_table(&answer)
        }
    }
}

/// What `pause`, `resume` and `restart` print: a sentence, or the answer with `--json`.
fn state_change(answer: Option<Value>, args: &NameArgs, done: &str) -> anyhow::Result<String> {
    if args.output.json {
        return pretty(&answer.unwrap_or_else(|| json!({"name": args.name})));
    }
    let state = answer
        .as_ref()
        .and_then(|answer| answer.get("state"))
        .and_then(Value::as_str);
    Ok(match state {
        Some(state) => format!("{done} connector {} ({state})\n", args.name),
        None => format!("{done} connector {}\n", args.name),
    })
}

/// The `POST /v1/connectors` body: `{name, config}` from `--file`, or `--name` with the
/// `--config` map.
fn create_body(args: &CreateArgs) -> anyhow::Result<Value> {
    if let Some(path) = &args.file {
        let (document, source) = read_document(path)?;
        let Value::Object(body) = &document else {
            anyhow::bail!(
                "{source} must hold a mapping with `name` and `config`, e.g. `name: lines` and `config: {{connector.class: file-source, ...}}`"
            );
        };
        for key in ["name", "config"] {
            if !body.contains_key(key) {
                anyhow::bail!("{source} has no `{key}`; it must hold `name` and `config`");
            }
        }
        return Ok(document);
    }
    // clap requires these without --file; the errors only guard against a change there.
    let name = args.name.as_deref().context("--name is required")?;
    let path = args.config.as_deref().context("--config is required")?;
    let config = read_config(path)?;
    let mut body = Map::new();
    body.insert("name".to_owned(), json!(name));
    body.insert("config".to_owned(), config);
    Ok(Value::Object(body))
}

/// A config map from `path`: a mapping of keys to values.
fn read_config(path: &Path) -> anyhow::Result<Value> {
    let (config, source) = read_document(path)?;
    if !config.is_object() {
        anyhow::bail!(
            "{source} must hold a mapping of config keys, e.g. `connector.class: file-source`"
        );
    }
    Ok(config)
}

/// Reads a YAML or JSON document from `path`, or from stdin for `-`, with the name to report it
/// by. A `.json` file is read as JSON, anything else as YAML (which takes JSON too). Parsed here
/// so that a typo is reported with the file's name and position.
fn read_document(path: &Path) -> anyhow::Result<(Value, String)> {
    let (text, source) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the connector from stdin")?;
        (text, "stdin".to_owned())
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        (text, path.display().to_string())
    };
    let is_json = path
        .extension()
        .is_some_and(|extension| extension == "json");
    let document = parse_document(&text, is_json).with_context(|| {
        let format = if is_json { "JSON" } else { "YAML or JSON" };
        format!("{source} is not valid {format}")
    })?;
    Ok((document, source))
}

pub(crate) fn parse_document(text: &str, is_json: bool) -> anyhow::Result<Value> {
    if is_json {
        return Ok(serde_json::from_str(text)?);
    }
    Ok(serde_norway::from_str(text)?)
}

#[cfg(test)]
mod tests;

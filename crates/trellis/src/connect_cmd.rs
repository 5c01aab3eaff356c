//! `trellis connect run FILE`: one connector in this process, against a running trellis's HTTP
//! API, with its offsets in a local file (`trellis_connectors::standalone`).
//!
//! The file holds `name` and `config`, in YAML or JSON. SIGINT or SIGTERM stop the connector
//! cleanly: records in flight get a moment to end and the offsets are committed, so a restart
//! goes on after the last record published. A second signal exits at once (the offsets of the
//! last interval are then read again, and the runtime drops what was already published). A
//! config error is one line naming the key, with exit status 2; the config is logged with its
//! secrets redacted.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use trellis_connect::ConnectorConfig;
use trellis_connectors::standalone;

use crate::cli::{ConnectArgs, ConnectCommand, ConnectRunArgs};

/// A config that cannot run: the binary exits with status 2 on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigInvalid(String);

/// What a connector file holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectorFile {
    name: String,
    config: serde_json::Value,
}

pub(crate) fn run(args: ConnectArgs) -> anyhow::Result<()> {
    match args.command {
        ConnectCommand::Run(args) => run_connector(args),
    }
}

fn run_connector(args: ConnectRunArgs) -> anyhow::Result<()> {
    let file = read_file(&args.file)?;
    let shown = args.file.display();
    let config = ConnectorConfig::from_value(file.config)
        .map_err(|e| ConfigInvalid(format!("{shown}: `config` {e}")))?;
    standalone::check(&file.name, &config, &args.url)
        .map_err(|e| ConfigInvalid(format!("{shown}: {e}")))?;
    let offsets = args
        .offsets
        .clone()
        .unwrap_or_else(|| default_offsets_file(&args.file, &file.name));
    let _flush_logs_on_return = crate::logging::init(&args.log_level, args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let mut terminate =
            signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
        tracing::info!(
            connector = %file.name,
            // A URL may carry credentials (`user:password@`, a token in the query).
            url = %trellis_delivery::redact::redact_url(&args.url),
            offsets = %offsets.display(),
            "running connector standalone"
        );
        let connector = standalone::run(&file.name, config, &args.url, &offsets, stop.clone());
        tokio::pin!(connector);
        let mut signals = 0;
        let outcome = loop {
            tokio::select! {
                outcome = &mut connector => break outcome,
                _ = terminate.recv() => signals += 1,
                _ = interrupt.recv() => signals += 1,
            }
            if signals == 1 {
                tracing::info!("stopping: committing offsets (a second signal exits at once)");
                stop.cancel();
            } else {
                anyhow::bail!("stopped by a second signal before the offsets were committed");
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(e) if e.is_config() => Err(ConfigInvalid(format!("{shown}: {e}")).into()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("connector {}", file.name))),
        }
    })
}

/// `<name>.offsets` in the directory of the connector file.
fn default_offsets_file(file: &Path, name: &str) -> PathBuf {
    let dir = file.parent().unwrap_or_else(|| Path::new("."));
    dir.join(format!("{name}.offsets"))
}

fn read_file(path: &Path) -> anyhow::Result<ConnectorFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the connector file {}", path.display()))?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let json = match extension.as_deref() {
        Some("json") => true,
        Some("yaml" | "yml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    let parsed = if json {
        serde_json::from_str::<ConnectorFile>(&text).map_err(|e| e.to_string())
    } else {
        serde_norway::from_str::<ConnectorFile>(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        ConfigInvalid(format!(
            "{}: not a connector file ({}: `name` and `config`): {e}",
            path.display(),
            if json { "JSON" } else { "YAML" }
        ))
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_files_give_the_same_connector() {
        let dir = tempfile::tempdir().expect("temp dir");
        let yaml = dir.path().join("c.yaml");
        std::fs::write(
            &yaml,
            "name: tail\nconfig:\n  connector.class: file-source\n  topic: lines\n  max_batch: 10\n",
        )
        .expect("write");
        let json = dir.path().join("c.conf");
        std::fs::write(
            &json,
            r#"{"name": "tail", "config": {"connector.class": "file-source", "topic": "lines", "max_batch": 10}}"#,
        )
        .expect("write");
        let (a, b) = (
            read_file(&yaml).expect("yaml"),
            read_file(&json).expect("json"),
        );
        assert_eq!((a.name.as_str(), &a.config), (b.name.as_str(), &b.config));
        assert_eq!(a.config["max_batch"], 10);
        assert_eq!(
            default_offsets_file(&yaml, "tail"),
            dir.path().join("tail.offsets")
        );
    }

    #[test]
    fn a_malformed_file_is_a_config_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "name: tail\nconfg: {}\n").expect("write");
        let error = read_file(&path).expect_err("a typo");
        assert!(error.is::<ConfigInvalid>(), "{error:#}");
        assert!(format!("{error:#}").contains("confg"), "{error:#}");
    }
}

//! The command line. Every setting of `serve` can also come from the environment (`TRELLIS_*`)
//! or the config file; flags win over the environment, which wins over the file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use trellis_runtime::DurabilityPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "trellis",
    version,
    about = "Trellis: a durable event mesh for CloudEvents"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the Trellis runtime: the HTTP API over a durable log on local disk.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML config file; its settings are overridden by TRELLIS_* variables and by flags.
    #[arg(long, env = "TRELLIS_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Directory for the event log and the metadata store [default: ./trellis-data]
    #[arg(long, env = "TRELLIS_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:10105]
    #[arg(long, env = "TRELLIS_HTTP_ADDR", value_name = "HOST:PORT")]
    pub(crate) http_addr: Option<String>,
    /// Address of the gRPC API [default: 127.0.0.1:10205]
    #[arg(long, env = "TRELLIS_GRPC_ADDR", value_name = "HOST:PORT")]
    pub(crate) grpc_addr: Option<String>,
    /// Default fsync policy of topics: always (group commit), interval or never [default: always]
    #[arg(long, env = "TRELLIS_FSYNC", value_name = "POLICY")]
    pub(crate) fsync: Option<DurabilityPolicy>,
    /// With --fsync interval: milliseconds between fsyncs [default: 100]
    #[arg(long, env = "TRELLIS_FSYNC_INTERVAL_MS", value_name = "MS")]
    pub(crate) fsync_interval_ms: Option<u64>,
    /// Largest accepted event in bytes [default: 1048576]
    #[arg(long, env = "TRELLIS_MAX_EVENT_BYTES", value_name = "BYTES")]
    pub(crate) max_event_bytes: Option<usize>,
    /// Create topics on first publish [default: true]
    #[arg(long, env = "TRELLIS_AUTO_CREATE_TOPICS", value_name = "BOOL")]
    pub(crate) auto_create_topics: Option<bool>,
    /// Log filter, e.g. info, debug or trellis_log=debug,info [default: info]
    #[arg(long, env = "TRELLIS_LOG_LEVEL", value_name = "FILTER")]
    pub(crate) log_level: Option<String>,
    /// Log format: pretty or json [default: pretty]
    #[arg(long, env = "TRELLIS_LOG_FORMAT", value_name = "FORMAT")]
    pub(crate) log_format: Option<crate::config::LogFormat>,
}

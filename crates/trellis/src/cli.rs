//! The command line. Every setting of `serve` can also come from the environment (`TRELLIS_*`)
//! or the config file; flags win over the environment, which wins over the file. The
//! `subscriptions`, `publish` and `subscribe` commands are clients of a running `trellis serve`
//! and only parse here; what they send and print lives in `subscriptions_cmd.rs`,
//! `publish_cmd.rs` and `subscribe_cmd.rs`. Their numbers are range-checked there, so that a bad
//! value is one line and exit 1 like every other error of theirs.

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
#[allow(clippy::large_enum_variant)] // Built once per process: boxing `serve`'s flags saves nothing.
pub(crate) enum Command {
    /// Run the Trellis runtime: the HTTP API over a durable log on local disk.
    Serve(ServeArgs),
    /// List, show, create and delete subscriptions through a running trellis's HTTP API.
    Subscriptions(SubscriptionsArgs),
    /// List, show, create, pause, resume, restart and delete connectors through a running
    /// trellis's HTTP API.
    // Its arguments live beside their code in `connectors_cmd.rs`.
    Connectors(crate::connectors_cmd::ConnectorsArgs),
    /// Publish CloudEvents to a topic over gRPC: lines of stdin, or generated load with --count.
    Publish(PublishArgs),
    /// Receive a consumer group's events over gRPC, print them as JSON lines and ack them.
    Subscribe(SubscribeArgs),
    /// Run one connector in this process against a running trellis's HTTP API (standalone).
    Connect(ConnectArgs),
    /// Show the replicas sharing a trellis's metadata and what each runs, through the HTTP API
    /// of any one of them.
    // Its arguments live beside their code in `cluster_cmd.rs`.
    Cluster(crate::cluster_cmd::ClusterArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML config file; its settings are overridden by TRELLIS_* variables and by flags.
    #[arg(long, env = "TRELLIS_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Directory for the event log and the metadata store [default: ./trellis-data]
    #[arg(long, env = "TRELLIS_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Where events are stored: `embedded` (the log in the data dir) or NATS JetStream at
    /// nats://HOST:PORT[,nats://HOST:PORT...] (tls:// to require TLS) [default: embedded]
    #[arg(
        long,
        env = "TRELLIS_STORAGE",
        value_name = "embedded|nats://HOST:PORT"
    )]
    pub(crate) storage: Option<String>,
    /// With NATS storage: a credentials file (JWT and NKey seed) to connect with
    #[arg(long, env = "TRELLIS_NATS_CREDS", value_name = "FILE")]
    pub(crate) nats_creds: Option<PathBuf>,
    /// With NATS storage: PEM CA certificates to trust for the servers' TLS certificates
    #[arg(long, env = "TRELLIS_NATS_TLS_CA", value_name = "FILE")]
    pub(crate) nats_tls_ca: Option<PathBuf>,
    /// Where metadata (subscriptions, connectors, offsets, cluster membership) is kept:
    /// `embedded` (in the data dir) or etcd at etcd://HOST:PORT[,HOST:PORT...] (etcds:// for
    /// TLS), shared by every replica; etcd needs NATS storage, and the data dir then only holds
    /// its lock [default: embedded]
    #[arg(long, env = "TRELLIS_META", value_name = "embedded|etcd://HOST:PORT")]
    pub(crate) meta: Option<String>,
    /// With etcd: PEM CA certificates to trust for etcd's TLS certificates; etcds:// needs it,
    /// and it turns TLS on for etcd:// too
    #[arg(long, env = "TRELLIS_META_CA", value_name = "FILE")]
    pub(crate) meta_ca: Option<PathBuf>,
    /// With etcd: the user to authenticate as (needs --meta-password-file)
    #[arg(long, env = "TRELLIS_META_USER", value_name = "USER")]
    pub(crate) meta_user: Option<String>,
    /// With etcd: a file holding the user's password (a trailing newline is ignored)
    #[arg(long, env = "TRELLIS_META_PASSWORD_FILE", value_name = "FILE")]
    pub(crate) meta_password_file: Option<PathBuf>,
    /// This replica's id among those sharing the metadata, unique per running process
    /// (A-Z a-z 0-9 . _ -) [default: hostname-<6 random hex digits>]
    #[arg(long, env = "TRELLIS_NODE_ID", value_name = "ID")]
    pub(crate) node_id: Option<String>,
    /// Where other replicas and clients reach this one's HTTP API [default: the bound address]
    #[arg(long, env = "TRELLIS_ADVERTISE_HTTP", value_name = "HOST:PORT")]
    pub(crate) advertise_http: Option<String>,
    /// Where other replicas and clients reach this one's gRPC API [default: the bound address]
    #[arg(long, env = "TRELLIS_ADVERTISE_GRPC", value_name = "HOST:PORT")]
    pub(crate) advertise_grpc: Option<String>,
    /// Milliseconds this replica's lease outlives its last refresh: a dead replica's work moves
    /// to another within about this (1000 to 3600000) [default: 5000]
    #[arg(long, env = "TRELLIS_LEASE_TTL_MS", value_name = "MS")]
    pub(crate) lease_ttl_ms: Option<u64>,
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
    /// Deduplication window in milliseconds: an event whose (source, id) its topic stored this
    /// recently is not stored again; 0 turns it off [default: 600000]
    #[arg(long, env = "TRELLIS_DEDUP_WINDOW_MS", value_name = "MS")]
    pub(crate) dedup_window_ms: Option<u64>,
    /// Create topics on first publish [default: true]
    #[arg(long, env = "TRELLIS_AUTO_CREATE_TOPICS", value_name = "BOOL")]
    pub(crate) auto_create_topics: Option<bool>,
    /// After SIGTERM or SIGINT: milliseconds to let requests and calls in flight finish before
    /// the connections still open are closed; a second signal stops at once [default: 30000]
    #[arg(long, env = "TRELLIS_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    pub(crate) shutdown_timeout_ms: Option<u64>,
    /// Log filter, e.g. info, debug or trellis_log=debug,info [default: info]
    #[arg(long, env = "TRELLIS_LOG_LEVEL", value_name = "FILTER")]
    pub(crate) log_level: Option<String>,
    /// Log format: pretty or json [default: pretty]
    #[arg(long, env = "TRELLIS_LOG_FORMAT", value_name = "FORMAT")]
    pub(crate) log_format: Option<crate::config::LogFormat>,
}

/// Where `trellis serve` listens when nothing else is configured.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:10105";

/// Where the admin commands find a running `trellis serve`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// URL of the trellis HTTP API
    #[arg(
        long,
        global = true,
        env = "TRELLIS_SERVER",
        value_name = "URL",
        default_value = DEFAULT_SERVER
    )]
    pub(crate) server: String,
}

#[derive(Debug, Args)]
pub(crate) struct SubscriptionsArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    #[command(subcommand)]
    pub(crate) command: SubscriptionsCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SubscriptionsCommand {
    /// List subscriptions: name, topic, URLs and whether each is paused.
    List(OutputArgs),
    /// Show one subscription's settings and its live delivery status.
    Get(GetArgs),
    /// Create a subscription from flags, or from a JSON body with --file.
    Create(CreateArgs),
    /// Delete a subscription: delivery stops and its committed offset is forgotten.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub(crate) struct OutputArgs {
    /// Print the API's JSON answer as it is (pretty-printed)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// Name of the subscription
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// Name of the subscription
    pub(crate) name: String,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The request body of POST /v1/subscriptions as a JSON file; - reads it from stdin
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["name", "topic", "urls", "strategy", "mode", "dead_letter_topic", "start"]
    )]
    pub(crate) file: Option<PathBuf>,
    /// Name of the subscription (A-Z a-z 0-9 . _ -)
    #[arg(long, value_name = "NAME", required_unless_present = "file")]
    pub(crate) name: Option<String>,
    /// Topic to deliver
    #[arg(long, value_name = "TOPIC", required_unless_present = "file")]
    pub(crate) topic: Option<String>,
    /// Webhook URL; repeat the flag for several
    #[arg(long = "url", value_name = "URL", required_unless_present = "file")]
    pub(crate) urls: Vec<String>,
    /// Each event to one URL in turn, or to every URL [server default: round_robin]
    #[arg(long, value_enum)]
    pub(crate) strategy: Option<SinkStrategy>,
    /// CloudEvents HTTP content mode of the deliveries [server default: binary]
    #[arg(long, value_enum)]
    pub(crate) mode: Option<SinkMode>,
    /// Topic for records that fail for good [server default: NAME.dlq]
    #[arg(long, value_name = "TOPIC")]
    pub(crate) dead_letter_topic: Option<String>,
    /// Where to start reading the topic: latest, earliest or an offset [server default: latest]
    #[arg(long, value_name = "latest|earliest|OFFSET", value_parser = parse_start)]
    pub(crate) start: Option<StartAt>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// `sink.strategy`, spelled as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum SinkStrategy {
    RoundRobin,
    Broadcast,
}

/// `sink.mode`, spelled as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum SinkMode {
    Binary,
    Structured,
}

/// `start`: a word or an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    Latest,
    Earliest,
    Offset(u64),
}

fn parse_start(text: &str) -> Result<StartAt, String> {
    match text {
        "latest" => Ok(StartAt::Latest),
        "earliest" => Ok(StartAt::Earliest),
        _ => text.parse().map(StartAt::Offset).map_err(|_| {
            format!("expected latest, earliest or an offset (a whole number from 0), e.g. 0; got {text:?}")
        }),
    }
}

/// The gRPC endpoints of `publish` and `subscribe`.
#[derive(Debug, Args)]
pub(crate) struct EndpointArgs {
    /// gRPC address of trellis; repeat the flag, or separate with commas, for several (tried in
    /// order, the next one after a failure)
    #[arg(
        long = "endpoint",
        env = "TRELLIS_GRPC_ENDPOINT",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        default_value = trellis_client::DEFAULT_ENDPOINT
    )]
    pub(crate) endpoints: Vec<String>,
}

const PUBLISH_HELP: &str = "\
Input (without --count): one event per line of stdin.
  - A line that is a JSON object with a \"specversion\" member is sent as that structured
    CloudEvent, its id and attributes as given.
  - Any other line becomes the text data of a new event: id a fresh UUIDv7, source --source,
    type --type, datacontenttype text/plain.
  - Events are stored in the order of their lines.
  - Blank lines are skipped. A line that starts with '{' and mentions \"specversion\" but is not
    a valid CloudEvent fails on its own (its line number goes to stderr); the others are sent.

With --count N: N events with ids <run-uuid>-0 .. <run-uuid>-(N-1) and --size bytes of text
data, as fast as possible or at --rate events per second (open loop: on schedule whatever the
answers do), several batches in flight, so not necessarily stored in order. stdin is not read.

Output (stderr): a progress bar with the rate on a terminal after a second, then
  published N events (M duplicates), F failed in S s (R events/s)
--quiet turns both off. Exit status 1 if any event failed for good (refused by the server, or
not acknowledged within --timeout while the producer kept retrying), with one line
`trellis: error: ...`; 0 otherwise. Duplicates (an id the topic already stored) are successes.";

#[derive(Debug, Args)]
#[command(after_long_help = PUBLISH_HELP)]
pub(crate) struct PublishArgs {
    /// Topic to publish to
    #[arg(long, value_name = "TOPIC")]
    pub(crate) topic: String,
    #[command(flatten)]
    pub(crate) endpoint: EndpointArgs,
    /// `source` of the events built from data lines and by --count
    #[arg(long, value_name = "URI-REF", default_value = "/trellis/cli")]
    pub(crate) source: String,
    /// `type` of the events built from data lines and by --count
    #[arg(long = "type", value_name = "TYPE", default_value = "dev.trellis.cli")]
    pub(crate) event_type: String,
    /// Publish N generated events instead of reading stdin
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// With --count: bytes of text data per event
    #[arg(long, value_name = "BYTES", requires = "count", default_value_t = 100)]
    pub(crate) size: usize,
    /// With --count: events per second, paced open-loop [default: as fast as the server takes them]
    #[arg(long, value_name = "EVENTS_PER_S", requires = "count")]
    pub(crate) rate: Option<f64>,
    /// Seconds an event may stay unacknowledged, retries included, before it counts as failed
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub(crate) timeout: f64,
    /// No progress bar and no summary line; errors are still printed
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

const SUBSCRIBE_HELP: &str = "\
Output (stdout): one line per event, the structured CloudEvent JSON with the event's offset in
the topic as its first member, as GET /v1/topics/TOPIC/events renders events:
  {\"offset\":0,\"specversion\":\"1.0\",\"id\":\"order-1\",\"source\":\"/shop\",\"type\":\"order.created\",\"data\":{...}}

Each event is acked once its line is written to stdout, so the group does not get it again;
an event not printed (stdout closed, the process stopped) is delivered again later. Delivery
is at least once: after a lost ack an event can come twice.

Ends with exit status 0 after --count events, on Ctrl-C or SIGTERM, or when stdout is closed
(e.g. `| head -n 3`; noticed when the next event is written); with 1 and one line `trellis: error: ...` if the server refuses the
subscription. An unreachable server is retried until stopped, with a warning on stderr.";

#[derive(Debug, Args)]
#[command(after_long_help = SUBSCRIBE_HELP)]
pub(crate) struct SubscribeArgs {
    /// Topic to read
    #[arg(long, value_name = "TOPIC")]
    pub(crate) topic: String,
    /// Consumer group; its progress is kept by the server, so a later run goes on from there
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: String,
    /// Where a group without stored progress starts
    #[arg(long, value_enum, default_value_t = SubscribeStart::Latest)]
    pub(crate) start: SubscribeStart,
    /// clustering: the group's members share the events; broadcast: each member gets them all
    #[arg(long, value_enum, default_value_t = SubscribeMode::Clustering)]
    pub(crate) mode: SubscribeMode,
    /// With --mode broadcast: a member name under which this member's progress is stored
    #[arg(long, value_name = "NAME")]
    pub(crate) member: Option<String>,
    /// Stop after printing N events
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    #[command(flatten)]
    pub(crate) endpoint: EndpointArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SubscribeStart {
    Latest,
    Earliest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SubscribeMode {
    Clustering,
    Broadcast,
}

#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    #[command(subcommand)]
    pub(crate) command: ConnectCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConnectCommand {
    /// Run the connector of FILE until SIGINT or SIGTERM, which commit its offsets and stop it.
    /// A source publishes into the runtime's topic; a sink reads it. A config error is one line
    /// naming the key, with exit status 2.
    Run(ConnectRunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ConnectRunArgs {
    /// The connector: a YAML or JSON file holding `name` and `config` (the flat map of keys, as
    /// for POST /v1/connectors); read as YAML for .yaml/.yml, JSON for .json, else by content
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// URL of the trellis HTTP API the connector publishes into or reads from
    #[arg(long, env = "TRELLIS_SERVER", value_name = "URL", default_value = DEFAULT_SERVER)]
    pub(crate) url: String,
    /// The offsets file, a small embedded store locked while the connector runs
    /// [default: <name>.offsets next to FILE]
    #[arg(long, value_name = "FILE")]
    pub(crate) offsets: Option<PathBuf>,
    /// Log filter, e.g. info or debug
    #[arg(
        long,
        env = "TRELLIS_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub(crate) log_level: String,
    /// Log format
    #[arg(long, env = "TRELLIS_LOG_FORMAT", value_enum, default_value_t = crate::config::LogFormat::Pretty)]
    pub(crate) log_format: crate::config::LogFormat,
}

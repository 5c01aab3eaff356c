//! `trellis cluster status`: the replicas sharing a metadata store, what each runs and how
//! loaded it is, as one running `trellis serve` sees them (`GET /v1/cluster`). Any replica
//! answers for all of them.

mod render;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::api_client::ApiClient;
use crate::subscriptions_cmd::{pretty, print};

#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    #[command(flatten)]
    pub(crate) server: crate::cli::ServerArgs,
    #[command(subcommand)]
    pub(crate) command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// List the live replicas (address, load, start time) and the units each owns:
    /// subscriptions, connectors and consumer groups.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// text: a table of replicas, then each one's units; json: the API's answer as it is
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

pub(crate) fn run(args: ClusterArgs) -> anyhow::Result<()> {
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
async fn execute(api: &ApiClient, command: ClusterCommand) -> anyhow::Result<String> {
    match command {
        ClusterCommand::Status(args) => {
            let answer = api.get("/v1/cluster").await?.into_json()?;
            if args.output == Output::Json {
                return pretty(&answer);
            }
            if !answer.get("members").is_some_and(Value::is_array) {
                anyhow::bail!("the server's answer has no `members` list; is it trellis?");
            }
            Ok(render::cluster_status(&answer))
        }
    }
}

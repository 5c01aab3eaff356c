//! `trellis`: the one binary. Parses the command line, runs the command, and turns any error
//! into one line on stderr and a non-zero exit. This is the only place `anyhow` appears.

mod api_client;
mod cli;
mod cluster_cmd;
mod config;
mod connect_cmd;
mod connectors_cmd;
mod logging;
mod publish_cmd;
mod serve;
mod subscribe_cmd;
mod subscriptions_cmd;

use std::process::ExitCode;

use clap::Parser;

// Publishing allocates a handful of small buffers per event; glibc's allocator spent about a
// tenth of the runtime's CPU on them under load, mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let res = match cli.command {
        cli::Command::Serve(args) => serve::run(args),
        cli::Command::Subscriptions(args) => subscriptions_cmd::run(args),
        cli::Command::Connectors(args) => connectors_cmd::run(args),
        cli::Command::Publish(args) => publish_cmd::run(args),
        cli::Command::Subscribe(args) => subscribe_cmd::run(args),
        cli::Command::Connect(args) => connect_cmd::run(args),
        cli::Command::Cluster(args) => cluster_cmd::run(args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: "outer: inner: root".
            eprintln!("trellis: error: {error:#}");
            if error.is::<connect_cmd::ConfigInvalid>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

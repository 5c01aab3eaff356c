//! `trellis`: the one binary. Parses the command line, runs the command, and turns any error
//! into one line on stderr and a non-zero exit. This is the only place `anyhow` appears.

mod cli;
mod config;
mod logging;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let res = match cli.command {
        cli::Command::Serve(args) => serve::run(args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: "outer: inner: root".
            eprintln!("trellis: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

//! `trellis-fault-proxy`: the test suite's fault-injection TCP proxy as a process, so a
//! benchmark can put it between a client and `trellis serve` and measure each side on its own.
//!
//! Prints `listening on <addr>` once it accepts connections, then runs until killed. At exit
//! (SIGTERM or SIGINT) it prints what it did: `connections accepted N reset N blackholed N`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use trellis_test_support::{FaultProxy, Faults};

/// A TCP proxy on 127.0.0.1 that resets connections at random and delays traffic.
#[derive(Debug, Parser)]
#[command(name = "trellis-fault-proxy", version)]
struct Args {
    /// Where connections are forwarded, `host:port`.
    #[arg(long)]
    upstream: SocketAddr,
    /// Seed of every random decision.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Chance that a connection is reset at a random point.
    #[arg(long, default_value_t = 0.0)]
    reset_probability: f64,
    /// Moves the seed on, from `--seed`, to one that resets each of the first N connections, so
    /// that a client keeping one connection meets resets at all. Needs `--reset-probability`.
    #[arg(long, default_value_t = 0)]
    reset_first: u64,
    /// Latency added to every chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Extra latency per chunk, uniform in 0..=this, in milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut faults = Faults::none()
        .with_seed(args.seed)
        .with_reset_probability(args.reset_probability)
        .with_delay(Duration::from_millis(args.delay_ms))
        .with_jitter(Duration::from_millis(args.jitter_ms));
    if args.reset_first > 0 {
        faults = faults.resetting_first(args.reset_first).with_context(|| {
            format!(
                "no seed resets the first {} connections at a reset probability of {}",
                args.reset_first, args.reset_probability
            )
        })?;
        eprintln!(
            "seed {} resets the first {} connections",
            faults.seed, args.reset_first
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async move {
            let proxy = FaultProxy::start(args.upstream, faults)
                .await
                .context("cannot start the proxy")?;
            println!("listening on {}", proxy.addr());
            let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
            tokio::select! {
                _ = terminate.recv() => {}
                interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot watch SIGINT")?,
            }
            let stats = proxy.stats();
            println!(
                "connections accepted {} reset {} blackholed {}",
                stats.connections_accepted, stats.connections_reset, stats.connections_blackholed
            );
            Ok(())
        })
}

//! Log output: `tracing` to stderr, human-readable or JSON lines.

mod batched;

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub(crate) use batched::FlushGuard;

const QUIET_NATS_CLIENT: &str = "async_nats=warn";

/// Sets up logging. Lines reach stderr in batches (see [`batched`]) until the returned guard
/// is dropped, which writes the rest.
pub(crate) fn init(level: &str, format: LogFormat) -> anyhow::Result<FlushGuard> {
    let mut filter = EnvFilter::try_new(level).with_context(|| {
        format!("log level must be a filter such as info or trellis_log=debug,info; got {level:?}")
    })?;
    // The NATS client logs every reconnect attempt at info; Trellis says once (and then at most
    // every 30 s) that its event store is away, so the client's lines only repeat it. A filter
    // that names the client keeps its own say.
    if !level.contains("async_nats") {
        filter = filter.add_directive(
            QUIET_NATS_CLIENT
                .parse()
                .context("the NATS client's log directive")?,
        );
    }
    let (writer, guard) = batched::BatchedWriter::start(std::io::stderr())
        .context("cannot start the log writer thread")?;
    // Colours only for a person at a terminal; files and log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let res = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    res.map_err(|error| anyhow::anyhow!("cannot set up logging: {error}"))?;
    Ok(guard)
}

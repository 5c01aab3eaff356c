//! The tally of a `trellis publish` run, the progress bar on stderr, and the failure lines and
//! summary it prints.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use trellis_client::{ProducerError, RecordMetadata};

use super::input::Origin;

/// Failures printed one by one; past this only the count goes on, so a dead server or a file
/// of bad lines does not flood the terminal.
const MAX_SHOWN_FAILURES: u64 = 20;
/// The bar appears only for runs longer than this, so quick runs stay clean.
const BAR_DELAY: Duration = Duration::from_secs(1);

/// Why one event failed for good.
#[derive(Debug)]
pub(super) enum Failure {
    /// The line could not become an event.
    Input(String),
    Producer(ProducerError),
}

#[derive(Debug)]
pub(super) struct Progress {
    bar: ProgressBar,
    quiet: bool,
    started: Instant,
    stored: u64,
    duplicates: u64,
    failed: u64,
    /// Failures from waiting too long (delivery or buffer timeout): about the server, not the
    /// event, so they are summed up at the end instead of printed one by one.
    timed_out: u64,
}

/// The counts at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Totals {
    pub(super) stored: u64,
    pub(super) duplicates: u64,
    pub(super) failed: u64,
    pub(super) timed_out: u64,
}

impl Progress {
    /// A bar for `expected` events (a spinner when unknown), drawn on stderr only when it is a
    /// terminal and not `quiet`.
    pub(super) fn new(expected: Option<u64>, quiet: bool) -> Progress {
        let bar = match expected {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::hidden())
                .with_style(style(
                    "{bar:30} {human_pos}/{human_len} events  {rate}  {elapsed}",
                )),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
                .with_style(style("{spinner} {human_pos} events  {rate}  {elapsed}")),
        };
        if !quiet && std::io::stderr().is_terminal() {
            let delayed = bar.clone();
            tokio::spawn(async move {
                tokio::time::sleep(BAR_DELAY).await;
                if !delayed.is_finished() {
                    delayed.set_draw_target(ProgressDrawTarget::stderr());
                    delayed.enable_steady_tick(Duration::from_millis(200));
                }
            });
        }
        Progress {
            bar,
            quiet,
            started: Instant::now(),
            stored: 0,
            duplicates: 0,
            failed: 0,
            timed_out: 0,
        }
    }

    pub(super) fn record(&mut self, origin: Origin, result: Result<RecordMetadata, Failure>) {
        match result {
            Ok(stored) => {
                self.stored += 1;
                self.duplicates += u64::from(stored.duplicate);
                self.bar.inc(1);
            }
            Err(Failure::Producer(
                ProducerError::DeliveryTimeout(_) | ProducerError::BufferFull(_),
            )) => {
                self.failed += 1;
                self.timed_out += 1;
            }
            Err(failure) => {
                self.failed += 1;
                let shown = self.failed - self.timed_out;
                let message = match failure {
                    Failure::Input(message) => message,
                    Failure::Producer(error) => error.to_string(),
                };
                if shown <= MAX_SHOWN_FAILURES {
                    // suspend() keeps the line from being drawn over by the bar.
                    self.bar
                        .suspend(|| eprintln!("trellis: {origin}: {message}"));
                }
                if shown == MAX_SHOWN_FAILURES {
                    self.bar
                        .suspend(|| eprintln!("trellis: further failures are counted, not shown"));
                }
            }
        }
    }

    /// Clears the bar and prints the summary line (unless quiet).
    pub(super) fn finish(self) -> Totals {
        self.bar.finish_and_clear();
        let elapsed = self.started.elapsed().as_secs_f64();
        if !self.quiet {
            eprintln!(
                "{}",
                summary(self.stored, self.duplicates, self.failed, elapsed)
            );
        }
        Totals {
            stored: self.stored,
            duplicates: self.duplicates,
            failed: self.failed,
            timed_out: self.timed_out,
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants; a typo would show in every test run, so the default style
    // is a fine fallback rather than a reason to fail.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        // indicatif's own {per_sec} prints four decimals; whole events per second read better.
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0} events/s", state.per_sec());
            },
        )
}

/// `published N events (M duplicates), F failed in S s (R events/s)`.
pub(super) fn summary(stored: u64, duplicates: u64, failed: u64, elapsed_secs: f64) -> String {
    // Counts far below 2^52 convert exactly; this is only for display.
    #[allow(clippy::cast_precision_loss)]
    let rate = if elapsed_secs > 0.0 {
        stored as f64 / elapsed_secs
    } else {
        0.0
    };
    format!(
        "published {stored} events ({duplicates} duplicates), {failed} failed in {elapsed_secs:.2} s ({rate:.0} events/s)"
    )
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn the_summary_line_reads_as_documented() {
        assert_eq!(
            summary(1000, 2, 3, 0.5),
            "published 1000 events (2 duplicates), 3 failed in 0.50 s (2000 events/s)"
        );
        assert_eq!(
            summary(0, 0, 0, 0.0),
            "published 0 events (0 duplicates), 0 failed in 0.00 s (0 events/s)"
        );
    }
}

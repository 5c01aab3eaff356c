//! A log writer that gathers lines in memory and writes them out (to stderr) in batches.
//!
//! A busy runtime logs one line per delivered record. A `write(2)` per line costs more than the
//! delivery's own bookkeeping, and handing each line to a writer thread costs a wake-up per
//! line instead. Here the logging thread appends to a shared buffer, and a writer thread writes
//! whatever gathered every [`FLUSH_INTERVAL`]: one system call per interval, not per line.
//! A buffer past [`MAX_PENDING_BYTES`] is written at once by the thread that filled it, so a
//! log storm costs that thread time, never unbounded memory.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in memory. Lines carry their own timestamps, so the wait shows
/// nowhere but in how soon a reader of the log sees them.
const FLUSH_INTERVAL: Duration = Duration::from_millis(5);
const MAX_PENDING_BYTES: usize = 1 << 20;

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    stopping: bool,
}

/// Gives `tracing-subscriber` a writer per line; all of them append to one buffer.
#[derive(Clone)]
pub(crate) struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Writes what is still buffered and stops the writer thread when dropped; hold it for as long
/// as the process logs.
pub(crate) struct FlushGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl BatchedWriter {
    /// A writer to `out` and the guard that flushes it; `Err` if the writer thread cannot
    /// start.
    pub(crate) fn start(
        out: impl Write + Send + 'static,
    ) -> io::Result<(BatchedWriter, FlushGuard)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            out: Mutex::new(Box::new(out)),
        });
        let writer = std::thread::Builder::new()
            .name("trellis-log-writer".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_until_stopped(&shared)
            })?;
        Ok((
            BatchedWriter {
                shared: Arc::clone(&shared),
            },
            FlushGuard {
                shared,
                writer: Some(writer),
            },
        ))
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            shared: &self.shared,
        }
    }
}

pub(crate) struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut pending = lock(&self.shared.pending);
        pending.bytes.extend_from_slice(line);
        if pending.bytes.len() >= MAX_PENDING_BYTES {
            // Written under the lock, so lines keep their order and other loggers wait.
            let result = write_out(self.shared, &pending.bytes);
            pending.bytes.clear();
            result?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).stopping = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn write_until_stopped(shared: &Shared) {
    let mut batch = Vec::new();
    loop {
        let stopping = {
            let pending = lock(&shared.pending);
            let (mut pending, _) = shared
                .wake
                .wait_timeout_while(pending, FLUSH_INTERVAL, |pending| !pending.stopping)
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut pending.bytes, &mut batch);
            pending.stopping
        };
        if !batch.is_empty() {
            // Nowhere is left to report a failed write of the log; the lines are dropped.
            let _ = write_out(shared, &batch);
            batch.clear();
        }
        if stopping {
            return;
        }
    }
}

fn write_out(shared: &Shared, bytes: &[u8]) -> io::Result<()> {
    let mut out = shared.out.lock().unwrap_or_else(PoisonError::into_inner);
    out.write_all(bytes)?;
    out.flush()
}

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;

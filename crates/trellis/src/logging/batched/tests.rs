use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

use super::BatchedWriter;

/// Where the writer thread's output lands, readable while it runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("test lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("test lock").clone()).expect("UTF-8 lines")
    }
}

fn log_line(writer: &BatchedWriter, line: &str) {
    writer
        .make_writer()
        .write_all(line.as_bytes())
        .expect("appending to memory");
}

#[test]
fn every_line_from_every_thread_is_written_once_by_the_time_the_guard_drops() {
    let out = Captured::default();
    let (writer, guard) = BatchedWriter::start(out.clone()).expect("writer thread");
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for n in 0..2_000 {
                    log_line(&writer, &format!("thread {thread} line {n}\n"));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("logging thread");
    }
    drop(guard);

    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8_000);
    for thread in 0..4 {
        let own: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|line| line.starts_with(&format!("thread {thread} ")))
            .collect();
        let expected: Vec<String> = (0..2_000)
            .map(|n| format!("thread {thread} line {n}"))
            .collect();
        assert_eq!(
            own, expected,
            "thread {thread}'s lines, in the order it logged them"
        );
    }
}

#[test]
fn lines_are_written_while_the_process_runs_not_only_at_exit() {
    let out = Captured::default();
    let (writer, _guard) = BatchedWriter::start(out.clone()).expect("writer thread");
    log_line(&writer, "Listening.\n");
    // Generous: the writer runs every few milliseconds; the rest only guards a slow CI box.
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.text().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(out.text(), "Listening.\n");
}

//! `trellis connect run`: a standalone connector process against a running `trellis serve`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_connect::offsets::OffsetStore;
use trellis_connect::{Offset, Partition};

use crate::{bin, eventually, run_trellis, start};

/// A `trellis connect run` child, with its stderr gathered as it comes.
struct Connector {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Connector {
    fn start(file: &Path, url: &str) -> Connector {
        let mut child = Command::new(bin())
            .args(["connect", "run", &file.display().to_string(), "--url", url])
            .args(["--log-level", "info,trellis_connect=debug"])
            .env_remove("TRELLIS_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("trellis connect runs");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let gathered = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = gathered.lock().expect("stderr");
                text.push_str(&line);
                text.push('\n');
            }
        });
        Connector { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the connector did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn next_offset(client: &reqwest::Client, base: &str) -> u64 {
    match client.get(format!("{base}/v1/topics/lines")).send().await {
        Ok(response) if response.status().as_u16() == 200 => {
            let topic: Value = response.json().await.expect("topic json");
            topic["next_offset"].as_u64().unwrap_or(0)
        }
        _ => 0,
    }
}

/// The file position after each stored event's line (`connectoffset`), over the whole topic.
async fn stored_line_ends(client: &reqwest::Client, base: &str, end: u64) -> Vec<u64> {
    let mut ends = Vec::new();
    let mut from = 0;
    while from < end {
        let page: Value = client
            .get(format!(
                "{base}/v1/topics/lines/events?from={from}&limit=1000"
            ))
            .send()
            .await
            .expect("read page")
            .json()
            .await
            .expect("page json");
        let events = page.as_array().expect("a page");
        assert!(!events.is_empty(), "the topic reads to its end");
        for event in events {
            let end = event["connectoffset"].as_str().expect("position extension");
            ends.push(end.parse().expect("a decimal offset"));
            from += 1;
        }
    }
    ends
}

async fn committed(offsets: &Path, path: &Path) -> Option<Offset> {
    let meta = trellis_meta::EmbeddedStore::open(offsets).expect("open the offsets file");
    OffsetStore::new(Arc::new(meta), "tail")
        .read(&Partition::new(path.display().to_string()))
        .await
        .expect("read the committed offset")
}

/// A standalone file source killed with SIGKILL mid-file and started again resumes from its
/// committed offset: every line reaches the topic, none is skipped, and the lines published
/// again after the kill are dropped by the runtime's deduplication (one event per line).
#[tokio::test]
async fn a_standalone_file_source_killed_mid_file_resumes_from_its_offsets() {
    const LINES: u64 = 20_000;
    let (_data, server) = start();
    let base = server.base_url().to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.log");
    let text: String = (0..LINES).map(|i| format!("line {i:06}\n")).collect();
    std::fs::write(&path, &text).expect("write the file");
    let connector_file = dir.path().join("tail.yaml");
    std::fs::write(
        &connector_file,
        format!(
            "name: tail\nconfig:\n  connector.class: file-source\n  topic: lines\n  path: {}\n  \
             max_batch: 10\n  offsets.commit.interval.ms: 100\n",
            path.display()
        ),
    )
    .expect("write the connector file");
    let offsets = dir.path().join("tail.offsets");
    let client = reqwest::Client::new();

    let mut first = Connector::start(&connector_file, &base);
    assert!(
        eventually(async || first.stderr().contains("Committed")).await,
        "a first offset commit: {}",
        first.stderr()
    );
    first.kill();
    let killed_at = next_offset(&client, &base).await;
    let resume_at = committed(&offsets, &path)
        .await
        .expect("an offset was committed");
    assert!(resume_at.0 > 0 && resume_at.0 <= text.len() as u64);
    let committed_lines = text.as_bytes()[..resume_at.0 as usize]
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u64;
    // For the record: the lines after the committed offset that were already stored are the
    // ones published again, and dropped as duplicates.
    eprintln!(
        "killed with {killed_at} lines stored and {committed_lines} committed: {} sent again",
        killed_at.saturating_sub(committed_lines)
    );

    let mut second = Connector::start(&connector_file, &base);
    assert!(
        crate::wait_until(Duration::from_secs(120), async || {
            next_offset(&client, &base).await >= LINES
        })
        .await,
        "every line published; stored {} of {LINES}: {}",
        next_offset(&client, &base).await,
        second.stderr()
    );
    let status = second.terminate();
    assert!(status.success(), "a clean stop: {}", second.stderr());
    assert_eq!(
        committed(&offsets, &path).await,
        Some(Offset(text.len() as u64)),
        "the stop committed the end of the file"
    );
    assert_eq!(
        next_offset(&client, &base).await,
        LINES,
        "one event per line: the {killed_at} published before the kill were not stored again"
    );
    let ends = stored_line_ends(&client, &base, LINES).await;
    let expected: BTreeSet<u64> = text
        .match_indices('\n')
        .map(|(at, _)| at as u64 + 1)
        .collect();
    assert_eq!(ends.iter().copied().collect::<BTreeSet<u64>>(), expected);
}

/// A config error is one line naming the key, with exit status 2, and starts nothing.
#[test]
fn a_config_error_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"name": "tail", "config": {"connector.class": "file-source", "topic": "lines", "path": "/x", "max_batch": "ten"}}"#,
    )
    .expect("write");
    let file = file.display().to_string();
    let run = run_trellis(
        &["connect", "run", &file, "--url", "http://127.0.0.1:1"],
        "TRELLIS_SERVER",
        "",
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("`max_batch`"), "{}", run.stderr);
    assert!(
        !dir.path().join("tail.offsets").exists(),
        "nothing was started"
    );

    // The HTTP sink's `sink` object is checked as a subscription's, before anything starts.
    let http_sink = dir.path().join("sink.yaml");
    std::fs::write(
        &http_sink,
        "name: out\nconfig:\n  connector.class: http-sink\n  topic: lines\n  sink: {urls: ['ftp://127.0.0.1:9']}\n",
    )
    .expect("write");
    let http_sink = http_sink.display().to_string();
    let run = run_trellis(&["connect", "run", &http_sink], "TRELLIS_SERVER", "");
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("`sink`"), "{}", run.stderr);
    assert!(run.stderr.contains("sink.urls[0]"), "{}", run.stderr);
}

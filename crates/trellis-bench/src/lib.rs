//! Benchmark tooling for Trellis, in the spirit of `xtask`: never published, never a dependency.
//!
//! # Layout
//!
//! - `src/bin/trellis-loadgen.rs`: an HTTP/1.1 keep-alive load generator, one connection per task,
//!   closed-loop by default or open-loop with `--rate`, latencies in an HDR histogram.
//! - `src/bin/trellis-bench-receiver.rs`: the smallest hyper server we can write. It reads each body
//!   and answers a fixed status, which makes it the throughput ceiling for the same load generator.
//!   With `--stats` it also stands in for a webhook that counts what it receives and times each
//!   event from its publish (a send time the load generator stamped) to its receipt.
//! - `bench/publish.sh` (at the workspace root) drives both against `trellis serve`, and
//!   `bench/delivery.sh` measures delivery from `trellis serve` to the receiver.
//!
//! The library target is empty on purpose: each binary is one file, read top to bottom.

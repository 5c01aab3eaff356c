//! End-to-end tests of the `trellis` binary as a user runs it: a child process on 127.0.0.1:0
//! with a temp data dir.

mod cli;
mod crash;

use std::path::Path;

pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_trellis"))
}

//! `trellis-bench-receiver`: the smallest HTTP/1 server hyper allows, used as a throughput ceiling.
//!
//! It reads every request body to the end and answers a fixed status (202 by default) with an
//! empty body or `{}`. `bench/publish.sh` drives it with the same load generator and settings as
//! `trellis serve`, so the ratio between the two rates is what Trellis itself costs on this box.
//! It can also stand in for a webhook endpoint (`--status 200`).
//!
//! It keeps no state, does no routing and logs nothing per request, on purpose: anything it did
//! would lower the ceiling it exists to measure.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

/// Minimal HTTP/1 server: reads each request body and answers a fixed status.
#[derive(Debug, Parser)]
#[command(name = "trellis-bench-receiver", version)]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the bound address is printed on stdout
    /// as `listening on <addr>`.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Status code of every answer.
    #[arg(long, default_value = "202", value_parser = parse_status)]
    status: StatusCode,
    /// Answer `{}` with `content-type: application/json` instead of an empty body.
    #[arg(long)]
    json_body: bool,
    /// Runtime worker threads; one per core by default.
    #[arg(long)]
    threads: Option<usize>,
}

/// The fixed answer; cloning it only bumps reference counts.
#[derive(Clone)]
struct Reply {
    status: StatusCode,
    body: Bytes,
    is_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n_threads) = args.threads {
        builder.worker_threads(n_threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(args))
}

/// Accepts connections until SIGTERM or Ctrl-C, then returns; open connections are dropped.
async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let local_addr = listener.local_addr().context("reading the bound address")?;
    // Rust's stdout is line-buffered, so a script waiting on this line sees it at once.
    println!("listening on {local_addr}");

    let reply = Reply {
        status: args.status,
        body: if args.json_body {
            Bytes::from_static(b"{}")
        } else {
            Bytes::new()
        },
        is_json: args.json_body,
    };
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, reply.clone()));
                }
                Err(error) => {
                    // Usually out of file descriptors; keep serving the connections we have.
                    eprintln!("Accept failed: {error}.");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sigterm.recv() => break,
            _ = &mut ctrl_c => break,
        }
    }
    Ok(())
}

async fn serve_connection(stream: TcpStream, reply: Reply) {
    // Small answers on a keep-alive connection: without this, Nagle holds them back.
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let service = service_fn(move |request| answer(request, reply.clone()));
    // A client that hangs up mid-request is routine when a load generator stops; nothing to report.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer(
    request: Request<Incoming>,
    reply: Reply,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    // Read the body to the end, as a real server must, but keep none of it.
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    if reply.is_json {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(response)
}

fn parse_status(raw: &str) -> Result<StatusCode, String> {
    raw.parse::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| {
            format!("must be an HTTP status code from 100 to 999, e.g. 202; got `{raw}`")
        })
}

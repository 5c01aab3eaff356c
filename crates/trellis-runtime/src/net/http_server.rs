//! The HTTP listener's server: the axum router on hyper-util's HTTP/1 + HTTP/2 connections,
//! each over a [`TrackedIo`] so its watchdog sees its requests, with a graceful shutdown that
//! the drain can cut short.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::conn::ConnState;
use super::listener::Listener;
use super::tracking::{AnsweringBody, ReadingBody};

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and waits
/// for every connection to finish its requests and close (or to be cut off by the drain).
pub(crate) async fn serve(listener: Listener, router: Router, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    // hyper's own HTTP/1 header read timeout stays off (it needs a timer): it also runs while
    // a keep-alive connection waits for its next request, so it could not be longer than the
    // idle timeout. The connection's watchdog times heads and idleness apart.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A refused head ends the input where it starts (see `head_gate.rs`); hyper must still
    // answer the requests before it rather than drop them at that end of input.
    builder.http1().half_close(true);
    loop {
        let io = tokio::select! {
            () = shutdown.cancelled() => break,
            io = listener.accept() => io,
        };
        let service = ConnService {
            router: router.clone(),
            state: Arc::clone(io.state()),
        };
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(message = "An HTTP connection ended with an error.", %error);
            }
        });
    }
    // Close the listening socket now, so new clients are refused rather than left waiting in the
    // backlog while the drain runs.
    drop(listener);
    graceful.shutdown().await;
}

/// The router, as one connection's requests see it.
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<AnsweringBody<Body>>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<AnsweringBody<Body>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<Incoming>) -> ResponseFuture {
        let in_flight = self.state.request_started();
        let request = request.map(|body| Body::new(ReadingBody::new(body, &self.state)));
        // The router is always ready (`poll_ready` is a no-op for it).
        let answer = self.router.clone().call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| AnsweringBody::new(body, in_flight)))
        })
    }
}

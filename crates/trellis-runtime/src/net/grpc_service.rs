//! A gRPC service wrapped so that each call counts as in flight on its connection until its
//! response stream ends: a connection with a quiet `Subscribe` stream is busy, not idle.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tonic::server::NamedService;
use tower_service::Service;

use super::conn::ConnHandle;
use super::tracking::AnsweringBody;

#[derive(Clone)]
pub(crate) struct TrackedCalls<S>(pub(crate) S);

impl<S: NamedService> NamedService for TrackedCalls<S> {
    const NAME: &'static str = S::NAME;
}

type CallFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for TrackedCalls<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> CallFuture {
        // tonic puts the connection's info on every request it serves over our listener.
        let in_flight = request
            .extensions()
            .get::<ConnHandle>()
            .map(|conn| conn.0.request_started());
        let call = self.0.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(match in_flight {
                Some(guard) => response.map(|body| Body::new(AnsweringBody::new(body, guard))),
                None => response,
            })
        })
    }
}

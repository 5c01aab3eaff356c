//! Request and response bodies that tell their connection's watchdog what is in flight: a
//! request counts from its head until its answer is sent (or abandoned), and its body counts as
//! being read until it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::conn::{BodyGuard, ConnState, RequestGuard};

/// A request body; while it is being read the body read timeout applies.
pub(crate) struct ReadingBody<B> {
    inner: B,
    reading: Option<BodyGuard>,
}

impl<B: Body> ReadingBody<B> {
    pub(crate) fn new(inner: B, state: &Arc<ConnState>) -> Self {
        let reading = (!inner.is_end_stream()).then(|| state.body_started());
        ReadingBody { inner, reading }
    }
}

impl<B> Body for ReadingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.reading = None,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.reading = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
pub(crate) struct AnsweringBody<B> {
    inner: B,
    _in_flight: RequestGuard,
}

impl<B> AnsweringBody<B> {
    pub(crate) fn new(inner: B, in_flight: RequestGuard) -> Self {
        AnsweringBody {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B> Body for AnsweringBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

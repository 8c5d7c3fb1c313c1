//! The body of every API response: a whole in-memory body, or a stream of chunks a task
//! produces (the streaming watch). Its error type is `Infallible`: a stream ends, it never fails
//! half way from hyper's point of view (a watch stream that must stop says why in its last line).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// A response body: [`ApiBody::full`] or [`ApiBody::stream`].
#[derive(Debug)]
pub struct ApiBody(Inner);

#[derive(Debug)]
enum Inner {
    Full(Full<Bytes>),
    /// Chunks as the producer sends them; the body ends when every sender is gone. The channel
    /// is bounded, so a slow reader makes the producer wait instead of growing a queue.
    Stream(mpsc::Receiver<Bytes>),
}

impl ApiBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> ApiBody {
        ApiBody(Inner::Full(Full::new(bytes.into())))
    }

    /// A body streamed from `chunks` (sent chunked, no length).
    pub fn stream(chunks: mpsc::Receiver<Bytes>) -> ApiBody {
        ApiBody(Inner::Stream(chunks))
    }
}

impl From<Full<Bytes>> for ApiBody {
    fn from(full: Full<Bytes>) -> ApiBody {
        ApiBody(Inner::Full(full))
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            Inner::Full(full) => Pin::new(full).poll_frame(cx),
            Inner::Stream(chunks) => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(full) => full.is_end_stream(),
            Inner::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(full) => full.size_hint(),
            Inner::Stream(_) => SizeHint::default(),
        }
    }
}

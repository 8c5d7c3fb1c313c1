//! A guard in front of hyper that reads every request head before hyper does and refuses the
//! hostile ones with a JSON 400 and a closed connection (RFC 9112 §6.1, §6.3).
//!
//! Why a stream wrapper and not a check in the handler: when a request carries both
//! `Content-Length` and `Transfer-Encoding`, hyper drops `Content-Length` from the header map
//! before any handler runs, so the handler cannot tell a smuggling attempt from an honest chunked
//! upload. The guard sees the bytes.
//!
//! | head                                              | what the guard does                         |
//! |---------------------------------------------------|---------------------------------------------|
//! | `Content-Length` or no body                       | passes it on, then exactly that many bytes  |
//! | `Transfer-Encoding: chunked` alone                | passes it on with `connection: close` added, then stops looking (the connection ends after this request, so no later head goes unchecked) |
//! | `Content-Length` and `Transfer-Encoding`          | refuses: 400 `conflicting_length`           |
//! | a transfer coding other than exactly `chunked`    | refuses: 400 `unsupported_transfer_coding`  |
//! | a head that does not parse                        | refuses: 400 `bad_request`                  |
//! | a head over the header limit or with too many headers | refuses: 431 `header_too_large`         |
//!
//! A refusal hands hyper a synthetic head (`GET /` with [`REFUSED_HEADER`] and
//! `connection: close`) instead of the hostile one, and never the bytes after it; the service
//! answers it with [`refusal_response`]. A client that sends [`REFUSED_HEADER`] itself only gets
//! a 400.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::StatusCode;

/// The header the guard puts on the synthetic head that stands in for a refused one.
pub const REFUSED_HEADER: &str = "x-raft-kv-refused";

/// Most headers in one request head (hyper's own default is 100).
const HEADERS_COUNT_MAX: usize = 100;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// What the guard decided about one complete request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadVerdict {
    /// A head of `head_bytes` bytes whose body is `body_bytes` long (0: no body).
    Sized { head_bytes: usize, body_bytes: u64 },
    /// A head of `head_bytes` bytes with a chunked body.
    Chunked { head_bytes: usize },
    /// A head to refuse.
    Refuse(Refusal),
}

/// Why a head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding` (request smuggling).
    ConflictingLength,
    /// A transfer coding other than exactly `chunked`, or `Transfer-Encoding` twice.
    UnsupportedTransferCoding,
    /// A `Content-Length` that is not one decimal number (or two that differ).
    BadContentLength,
    /// Not an HTTP/1.x request head.
    BadRequest,
    /// Over the header byte limit or `HEADERS_COUNT_MAX`.
    HeaderTooLarge,
}

impl Refusal {
    /// The machine-readable code (the JSON body's `code`, and [`REFUSED_HEADER`]'s value).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::ConflictingLength => "conflicting_length",
            Refusal::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Refusal::BadContentLength => "bad_content_length",
            Refusal::BadRequest => "bad_request",
            Refusal::HeaderTooLarge => "header_too_large",
        }
    }

    fn from_code(code: &str) -> Refusal {
        [
            Refusal::ConflictingLength,
            Refusal::UnsupportedTransferCoding,
            Refusal::BadContentLength,
            Refusal::HeaderTooLarge,
        ]
        .into_iter()
        .find(|refusal| refusal.code() == code)
        .unwrap_or(Refusal::BadRequest)
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::ConflictingLength => {
                "a request may not carry both Content-Length and Transfer-Encoding"
            }
            Refusal::UnsupportedTransferCoding => {
                "the only transfer coding accepted is a single `Transfer-Encoding: chunked`"
            }
            Refusal::BadContentLength => "Content-Length must be one decimal number",
            Refusal::BadRequest => "the request head is not valid HTTP/1.1",
            Refusal::HeaderTooLarge => "the request head is over the header limit",
        }
    }
}

/// Classifies the head at the start of `buffer`: `None` while it is incomplete (and under the
/// limit), else the verdict.
pub fn classify_head(buffer: &[u8], header_bytes_max: usize) -> Option<HeadVerdict> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_COUNT_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_bytes = match request.parse(buffer) {
        Ok(httparse::Status::Complete(head_bytes)) if head_bytes <= header_bytes_max => head_bytes,
        Ok(httparse::Status::Complete(_)) => {
            return Some(HeadVerdict::Refuse(Refusal::HeaderTooLarge))
        }
        Ok(httparse::Status::Partial) if buffer.len() > header_bytes_max => {
            return Some(HeadVerdict::Refuse(Refusal::HeaderTooLarge))
        }
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => {
            return Some(HeadVerdict::Refuse(Refusal::HeaderTooLarge))
        }
        Err(_) => return Some(HeadVerdict::Refuse(Refusal::BadRequest)),
    };
    let mut content_length: Option<u64> = None;
    let mut transfer_encodings = 0usize;
    let mut chunked = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(header.value)
                .ok()
                .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|text| text.parse::<u64>().ok());
            match (parsed, content_length) {
                (Some(length), None) => content_length = Some(length),
                (Some(length), Some(previous)) if length == previous => {}
                _ => return Some(HeadVerdict::Refuse(Refusal::BadContentLength)),
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encodings += 1;
            chunked = header.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
    }
    Some(match (content_length, transfer_encodings) {
        (Some(_), 1..) => HeadVerdict::Refuse(Refusal::ConflictingLength),
        (None, 1) if chunked && request.version == Some(1) => HeadVerdict::Chunked { head_bytes },
        (None, 1..) => HeadVerdict::Refuse(Refusal::UnsupportedTransferCoding),
        (length, 0) => HeadVerdict::Sized {
            head_bytes,
            body_bytes: length.unwrap_or(0),
        },
    })
}

/// The head with `connection: close` added before its final empty line.
fn with_connection_close(head: &[u8]) -> Vec<u8> {
    let without_blank_line = head
        .strip_suffix(b"\r\n")
        .or_else(|| head.strip_suffix(b"\n"))
        .unwrap_or(head);
    let mut out = Vec::with_capacity(head.len() + 20);
    out.extend_from_slice(without_blank_line);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// The synthetic head hyper gets instead of a refused one.
fn refusal_head(refusal: Refusal) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\n{REFUSED_HEADER}: {}\r\nconnection: close\r\n\r\n",
        refusal.code()
    )
    .into_bytes()
}

/// The answer to the synthetic head of a refused request, or `None` for any other request.
pub fn refusal_response<B>(
    request: &hyper::Request<B>,
) -> Option<hyper::Response<http_body_util::Full<bytes::Bytes>>> {
    let code = request.headers().get(REFUSED_HEADER)?;
    let refusal = Refusal::from_code(code.to_str().unwrap_or(""));
    let body = serde_json::json!({"error": refusal.message(), "code": refusal.code()});
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
        body.to_string(),
    )));
    *response.status_mut() = refusal.status();
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    Some(response)
}

/// Where the guard is in the byte stream.
#[derive(Debug)]
enum Position {
    /// At the start of a request head.
    Head,
    /// Inside a body with this many bytes still to pass.
    Body { remaining_bytes: u64 },
    /// After a chunked head: the connection ends after this request, bytes pass unchecked.
    PassThrough,
    /// After a refusal: hyper gets nothing more (the socket is drained, so that closing it
    /// does not reset the connection before the client reads the 400).
    Refused,
}

/// The stream hyper reads through: see the module docs.
#[derive(Debug)]
pub struct HeadGuard<S> {
    inner: S,
    header_bytes_max: usize,
    /// Bytes read from the socket and not yet judged.
    unjudged: Vec<u8>,
    /// Bytes judged and not yet handed to hyper, from `ready_from` on.
    ready: Vec<u8>,
    ready_from: usize,
    position: Position,
    inner_eof: bool,
    /// The buffer each socket read lands in, allocated (and zeroed) once on the first read:
    /// a fresh zeroed array per read cost a 16 KiB memset for every few bytes received.
    scratch: Vec<u8>,
}

impl<S> HeadGuard<S> {
    /// Guards `inner`; heads over `header_bytes_max` are refused with 431.
    pub fn new(inner: S, header_bytes_max: usize) -> HeadGuard<S> {
        HeadGuard {
            inner,
            header_bytes_max,
            unjudged: Vec::new(),
            ready: Vec::new(),
            ready_from: 0,
            position: Position::Head,
            inner_eof: false,
            scratch: Vec::new(),
        }
    }

    /// Judges what is buffered as far as it can; returns whether it made progress.
    fn judge(&mut self) -> bool {
        match self.position {
            Position::Refused => {
                self.unjudged.clear();
                false
            }
            Position::PassThrough => {
                if self.unjudged.is_empty() {
                    return false;
                }
                self.ready.append(&mut self.unjudged);
                true
            }
            Position::Body { remaining_bytes } => {
                if remaining_bytes == 0 {
                    self.position = Position::Head;
                    return true;
                }
                if self.unjudged.is_empty() {
                    return false;
                }
                let take_bytes = usize::try_from(remaining_bytes)
                    .unwrap_or(usize::MAX)
                    .min(self.unjudged.len());
                self.ready.extend(self.unjudged.drain(..take_bytes));
                self.position = Position::Body {
                    remaining_bytes: remaining_bytes - take_bytes as u64,
                };
                true
            }
            Position::Head => {
                if self.unjudged.is_empty() {
                    return false;
                }
                match classify_head(&self.unjudged, self.header_bytes_max) {
                    None => false,
                    Some(HeadVerdict::Sized {
                        head_bytes,
                        body_bytes,
                    }) => {
                        self.ready.extend(self.unjudged.drain(..head_bytes));
                        self.position = Position::Body {
                            remaining_bytes: body_bytes,
                        };
                        true
                    }
                    Some(HeadVerdict::Chunked { head_bytes }) => {
                        let head: Vec<u8> = self.unjudged.drain(..head_bytes).collect();
                        self.ready.extend(with_connection_close(&head));
                        self.position = Position::PassThrough;
                        true
                    }
                    Some(HeadVerdict::Refuse(refusal)) => {
                        tracing::info!(code = refusal.code(), "hostile request head refused");
                        self.unjudged.clear();
                        self.ready.extend(refusal_head(refusal));
                        self.position = Position::Refused;
                        true
                    }
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HeadGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_from < this.ready.len() {
                let give_bytes = (this.ready.len() - this.ready_from).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_from..this.ready_from + give_bytes]);
                this.ready_from += give_bytes;
                if this.ready_from == this.ready.len() {
                    this.ready.clear();
                    this.ready_from = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.judge() {
                continue;
            }
            if this.inner_eof {
                if matches!(this.position, Position::Refused) {
                    // hyper answers the synthetic head and closes; it needs nothing more.
                    return Poll::Pending;
                }
                // An incomplete head at EOF: hand it over, hyper reports the broken request.
                let rest = std::mem::take(&mut this.unjudged);
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready = rest;
                continue;
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0u8; READ_CHUNK_BYTES];
            }
            let mut chunk_buf = tokio::io::ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = chunk_buf.filled();
                    if filled.is_empty() {
                        this.inner_eof = true;
                    } else {
                        this.unjudged.extend_from_slice(filled);
                    }
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HeadGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 8192;

    #[test]
    fn a_head_with_content_length_passes_with_its_body_length() {
        let head = b"PUT /v1/kv/a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(
            classify_head(head, LIMIT),
            Some(HeadVerdict::Sized {
                head_bytes: head.len() - 5,
                body_bytes: 5
            })
        );
    }

    #[test]
    fn content_length_and_transfer_encoding_together_are_refused_in_either_order() {
        for head in [
            &b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
        ] {
            assert_eq!(
                classify_head(head, LIMIT),
                Some(HeadVerdict::Refuse(Refusal::ConflictingLength))
            );
        }
    }

    #[test]
    fn only_a_single_plain_chunked_coding_is_accepted() {
        let chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            classify_head(chunked, LIMIT),
            Some(HeadVerdict::Chunked {
                head_bytes: chunked.len()
            })
        );
        for head in [
            &b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"
                [..],
            &b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"[..],
        ] {
            assert_eq!(
                classify_head(head, LIMIT),
                Some(HeadVerdict::Refuse(Refusal::UnsupportedTransferCoding)),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn bad_or_differing_content_lengths_are_refused() {
        for head in [
            &b"PUT / HTTP/1.1\r\ncontent-length: +5\r\n\r\n"[..],
            &b"PUT / HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n"[..],
            &b"PUT / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
        ] {
            assert_eq!(
                classify_head(head, LIMIT),
                Some(HeadVerdict::Refuse(Refusal::BadContentLength))
            );
        }
    }

    #[test]
    fn an_incomplete_head_waits_until_it_passes_the_limit() {
        assert_eq!(classify_head(b"GET / HTTP/1.1\r\nhost:", LIMIT), None);
        let long = [b'a'; 100];
        let mut head = b"GET / HTTP/1.1\r\nx: ".to_vec();
        head.extend_from_slice(&long);
        assert_eq!(
            classify_head(&head, 64),
            Some(HeadVerdict::Refuse(Refusal::HeaderTooLarge))
        );
        assert_eq!(
            classify_head(b"\x00\x01 garbage\r\n\r\n", LIMIT),
            Some(HeadVerdict::Refuse(Refusal::BadRequest))
        );
    }

    #[test]
    fn connection_close_is_added_before_the_blank_line() {
        assert_eq!(
            with_connection_close(b"POST / HTTP/1.1\r\nte: x\r\n\r\n"),
            b"POST / HTTP/1.1\r\nte: x\r\nconnection: close\r\n\r\n".to_vec()
        );
        assert_eq!(
            with_connection_close(b"POST / HTTP/1.1\nte: x\n\n"),
            b"POST / HTTP/1.1\nte: x\nconnection: close\r\n\r\n".to_vec()
        );
    }
}

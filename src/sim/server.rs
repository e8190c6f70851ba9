//! A small HTTP/1.1 server on a tokio `TcpListener`, written by hand with `httparse`.
//!
//! Why not axum/hyper: faults must reach the socket itself (reset with SO_LINGER 0, hold it
//! open forever, announce a length and send half, wait before the first byte), and a framework
//! hides exactly that. What it does:
//!
//! - one task per connection, keep-alive by default (`Connection: close` and HTTP/1.0 honoured),
//!   pipelined requests read in order;
//! - a request head of at most 64 KiB (else `431`), a `Content-Length` body of at most 32 MiB
//!   (else `413` in the API's error shape); chunked request bodies get `411`;
//!   `Expect: 100-continue` is answered;
//! - JSON with `Content-Length`, streams (SSE, Bedrock's event-stream frames) with
//!   `Transfer-Encoding: chunked` (close-delimited for HTTP/1.0), `TCP_NODELAY` so each event
//!   leaves when written.
//!
//! Every connection task also watches the stop signal, so shutdown closes hanging sockets too.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::engine::{Action, Body, Engine, Request, Response};
use super::wire;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// Most headers in one request (more is answered like a head that is too large).
const MAX_HEADERS: usize = 100;
/// How long a closing connection keeps reading (and discarding) what the client still sends,
/// so an answer sent before the body was read is not destroyed by a reset.
const LINGER: Duration = Duration::from_secs(1);

/// Accept connections until `stop` turns true (or every sender is gone), then wait for the
/// connection tasks to end and report on `done`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    engine: Arc<Engine>,
    mut stop: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    let conn_stop = stop.clone();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Small SSE writes must leave at once, not wait for Nagle and delayed ACKs.
                    let _ = stream.set_nodelay(true);
                    let engine = Arc::clone(&engine);
                    let mut stop = conn_stop.clone();
                    tasks.spawn(async move {
                        tokio::select! {
                            _ = serve(stream, &engine) => {}
                            _ = stopped(&mut stop) => {}
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    let _ = done.send(true);
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means every handle is gone: that is a stop too.
    let _ = stop.wait_for(|s| *s).await;
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        let conn = self
            .header("connection")
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if self.http10 {
            conn.contains("keep-alive")
        } else {
            !conn.contains("close")
        }
    }

    fn into_request(self, body: Vec<u8>) -> Request {
        Request {
            method: self.method,
            path: self.path,
            headers: self.headers,
            body,
        }
    }
}

enum ReadHead {
    Head(Head),
    /// The client closed (or broke) the connection.
    Closed,
    TooLarge,
    Malformed(String),
}

/// Serve one connection until it closes.
async fn serve(mut stream: TcpStream, engine: &Engine) {
    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    loop {
        let head = match read_head(&mut stream, &mut buf).await {
            ReadHead::Head(head) => head,
            ReadHead::Closed => return,
            ReadHead::TooLarge => {
                let message = "the request head is larger than 64 KiB or has more than 100 headers";
                let _ = finish(&mut stream, &plain_error(431, message), false, false).await;
                return;
            }
            ReadHead::Malformed(why) => {
                let message = format!("malformed HTTP request: {why}");
                let _ = finish(&mut stream, &plain_error(400, &message), false, false).await;
                return;
            }
        };
        let keep_alive = head.keep_alive();
        let http10 = head.http10;
        let length = match body_length(&head) {
            Ok(n) => n,
            Err((status, message, outcome)) => {
                let req = head.into_request(Vec::new());
                let response = engine.early(&req, status, &message, outcome);
                let _ = finish(&mut stream, &response, false, http10).await;
                return;
            }
        };
        let expects_continue = head
            .header("expect")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
        if expects_continue
            && buf.len() < length
            && stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        while buf.len() < length {
            let missing = length - buf.len();
            match fill(&mut stream, &mut buf, missing).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let req = head.into_request(body);
        match engine.handle(&req) {
            Action::Send {
                delay,
                response,
                truncate,
            } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // An HTTP/1.0 stream is delimited by the close itself.
                let close = truncate
                    || response.close
                    || !keep_alive
                    || (http10 && matches!(response.body, Body::Stream { .. }));
                let result = if close {
                    finish(&mut stream, &response, truncate, http10).await
                } else {
                    write_body(&mut stream, &response, false, false, http10).await
                };
                if close || result.is_err() {
                    return;
                }
            }
            Action::Reset { delay } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // SO_LINGER 0: closing sends RST instead of FIN.
                let _ = stream.set_zero_linger();
                return;
            }
            Action::Hang => {
                hang(&mut stream).await;
                return;
            }
        }
    }
}

/// Read until a whole request head is buffered; it is removed from `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> ReadHead {
    loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                Ok(Some((head, len))) => {
                    buf.drain(..len);
                    return ReadHead::Head(head);
                }
                Ok(None) => {}
                Err(read) => return read,
            }
        }
        if buf.len() >= MAX_HEAD {
            return ReadHead::TooLarge;
        }
        let room = MAX_HEAD - buf.len();
        match fill(stream, buf, room).await {
            Ok(0) | Err(_) => return ReadHead::Closed,
            Ok(_) => {}
        }
    }
}

/// `Ok(None)`: incomplete, read more.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, ReadHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            if len > MAX_HEAD {
                return Err(ReadHead::TooLarge);
            }
            let target = req.path.unwrap_or("/");
            let path = target.split('?').next().unwrap_or(target).to_owned();
            let head = Head {
                method: req.method.unwrap_or("").to_owned(),
                path,
                http10: req.version == Some(0),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ReadHead::TooLarge),
        Err(e) => Err(ReadHead::Malformed(e.to_string())),
    }
}

/// The body length from the head, or the early answer (status, message, log outcome).
fn body_length(head: &Head) -> Result<usize, (u16, String, &'static str)> {
    if head.header("transfer-encoding").is_some() {
        return Err((
            411,
            "chunked request bodies are not supported by the simulator: send a Content-Length"
                .into(),
            "length_required",
        ));
    }
    let mut length: Option<usize> = None;
    for (name, value) in &head.headers {
        if name != "content-length" {
            continue;
        }
        let parsed = value.trim().parse::<usize>().ok();
        match (parsed, length) {
            (Some(n), None) => length = Some(n),
            (Some(n), Some(m)) if n == m => {}
            _ => {
                return Err((
                    400,
                    "the Content-Length header is not a single non-negative integer".into(),
                    "invalid_request",
                ))
            }
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return Err((
            413,
            format!("the request body of {length} bytes is larger than the 32 MiB limit"),
            "request_too_large",
        ));
    }
    Ok(length)
}

/// Read at most `want` more bytes (up to 64 KiB at a time) into `buf`.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let step = want.clamp(1, 64 * 1024);
    let start = buf.len();
    buf.resize(start + step, 0);
    let result = stream.read(&mut buf[start..]).await;
    let n = *result.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    result
}

/// A hang: keep reading (and discarding) until the client goes away.
async fn hang(stream: &mut TcpStream) {
    let mut scratch = [0u8; 4096];
    while let Ok(n) = stream.read(&mut scratch).await {
        if n == 0 {
            return;
        }
    }
}

/// Write a last response (half of it when `truncate`), then close politely: FIN, and keep
/// discarding what the client still sends for a moment, so it reads the answer before it sees
/// the connection go (closing with unread input would send a reset instead).
async fn finish(
    stream: &mut TcpStream,
    response: &Response,
    truncate: bool,
    http10: bool,
) -> io::Result<()> {
    write_body(stream, response, truncate, true, http10).await?;
    stream.shutdown().await?;
    let mut scratch = [0u8; 4096];
    let drain = async {
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    Ok(())
}

/// How the body of a response is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// HTTP/1.0 streaming: the body ends when the connection does.
    UntilClose,
}

fn head_bytes(response: &Response, content_type: &str, framing: Framing, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ndate: {}\r\ncontent-type: {content_type}\r\n",
        response.status,
        wire::reason(response.status),
        httpdate::fmt_http_date(SystemTime::now()),
    );
    match framing {
        Framing::Length(n) => out.push_str(&format!("content-length: {n}\r\n")),
        Framing::Chunked => out.push_str("transfer-encoding: chunked\r\n"),
        Framing::UntilClose => {}
    }
    for (name, value) in &response.headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    if close || framing == Framing::UntilClose {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn push_chunk(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Write `response`, or only its first half (announcing the full length) when `truncate`.
async fn write_body(
    stream: &mut TcpStream,
    response: &Response,
    truncate: bool,
    close: bool,
    http10: bool,
) -> io::Result<()> {
    match &response.body {
        Body::Json(bytes) => {
            let mut out = head_bytes(
                response,
                "application/json",
                Framing::Length(bytes.len()),
                close,
            );
            let end = if truncate {
                bytes.len() / 2
            } else {
                bytes.len()
            };
            out.extend_from_slice(&bytes[..end]);
            stream.write_all(&out).await
        }
        Body::Stream {
            content_type,
            parts,
        } => {
            let framing = if http10 {
                Framing::UntilClose
            } else {
                Framing::Chunked
            };
            let chunked = framing == Framing::Chunked;
            let mut out = head_bytes(response, content_type, framing, close);
            if truncate {
                let full: Vec<u8> = parts.iter().flat_map(|p| p.bytes.iter().copied()).collect();
                if chunked {
                    // Promise the whole chunk, deliver half of it.
                    out.extend_from_slice(format!("{:x}\r\n", full.len()).as_bytes());
                }
                out.extend_from_slice(&full[..full.len() / 2]);
                return stream.write_all(&out).await;
            }
            for part in parts {
                if !part.wait.is_zero() {
                    // Send what is ready, then pause: parts without a wait share one write.
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                        out.clear();
                    }
                    tokio::time::sleep(part.wait).await;
                }
                push_chunk(&mut out, &part.bytes, chunked);
            }
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            stream.write_all(&out).await
        }
    }
}

/// An error from the HTTP layer itself, before any request could be logged.
fn plain_error(status: u16, message: &str) -> Response {
    let body = serde_json::json!({
        "type": "error",
        "error": {"type": wire::error_type(status), "message": message},
    });
    Response {
        status,
        headers: Vec::new(),
        body: Body::Json(serde_json::to_vec(&body).unwrap_or_default()),
        close: true,
    }
}

//! Raw socket servers for transport tests: full control of what goes on the wire (resets,
//! stalls, truncated bodies, malformed framing).
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A raw socket server for one connection: `script` gets the accepted stream.
pub async fn raw_server<F, Fut>(script: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        script(stream).await;
    });
    addr
}

/// Read one whole request (head plus Content-Length bytes of body) and return its bytes.
pub async fn read_request(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let len = parse_request(&buf[..end + 4]).content_length();
            if buf.len() >= end + 4 + len {
                return Ok(buf);
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A request as a raw server read it.
pub struct Request {
    /// `POST /v1/... HTTP/1.1`.
    pub request_line: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (as much of it as the bytes hold, up to Content-Length).
    pub body: Vec<u8>,
}

impl Request {
    fn content_length(&self) -> usize {
        self.headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap())
    }
}

/// Split a request's bytes into its request line, headers and body.
pub fn parse_request(bytes: &[u8]) -> Request {
    let end = find(bytes, b"\r\n\r\n").unwrap_or(bytes.len());
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut r = Request {
        request_line,
        headers,
        body: Vec::new(),
    };
    let start = (end + 4).min(bytes.len());
    let len = r.content_length().min(bytes.len() - start);
    r.body = bytes[start..start + len].to_vec();
    r
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

//! A scripted webhook receiver on loopback: it records every request and answers as the test's
//! script says, including the failures a real endpoint shows (slow answers, resets mid-answer,
//! connections closed without an answer).
//!
//! It speaks just enough HTTP/1.1 for Trellis' client: keep-alive, `Content-Length` bodies.
//! Failures are produced at the socket level, which a framework server would not allow.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// When its body was fully read.
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with extra headers, such as `Retry-After` or `Location`.
    StatusWithHeaders(u16, Vec<(String, String)>),
    /// Waits, then answers with the status (unless the client gave up first).
    Sleep(Duration, u16),
    /// Sends the start of an answer, then resets the connection.
    ResetMidResponse,
    /// Closes the connection without answering.
    Close,
    /// Answers with the status and no word of closing, waits, then closes the connection:
    /// what a server's keep-alive timeout does to an idle connection.
    StatusThenCloseAfter(u16, Duration),
}

type Script = dyn Fn(usize, &ReceivedRequest) -> Reply + Send + Sync;

/// A running receiver; it stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    accept_task: JoinHandle<()>,
}

struct State {
    requests: Mutex<Vec<ReceivedRequest>>,
    script: Mutex<Arc<Script>>,
    n_connections: AtomicUsize,
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0`. `script` gets the request's index (0-based, over
    /// all requests this receiver got) and the request.
    pub async fn start(
        script: impl Fn(usize, &ReceivedRequest) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(Arc::new(script)),
            n_connections: AtomicUsize::new(0),
        });
        let accept_state = Arc::clone(&state);
        let accept_task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accept_state.n_connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_connection(stream, Arc::clone(&accept_state)));
            }
        });
        Ok(Receiver {
            addr,
            state,
            accept_task,
        })
    }

    /// A receiver that answers every request with `status`.
    pub async fn answering(status: u16) -> std::io::Result<Receiver> {
        Receiver::start(move |_, _| Reply::Status(status)).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn n_requests(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// How many connections were accepted so far: with keep-alive, fewer than requests.
    pub fn n_connections(&self) -> usize {
        self.state.n_connections.load(Ordering::Relaxed)
    }

    /// Replaces the script, for a receiver that recovers (or breaks) mid-test.
    pub fn set_script(
        &self,
        script: impl Fn(usize, &ReceivedRequest) -> Reply + Send + Sync + 'static,
    ) {
        *lock(&self.state.script) = Arc::new(script);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::with_capacity(8192);
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let (index, script) = {
            let mut requests = lock(&state.requests);
            requests.push(request.clone());
            (requests.len() - 1, Arc::clone(&lock(&state.script)))
        };
        let reply = script(index, &request);
        let mut close_after = None;
        let (status, headers) = match reply {
            Reply::Status(status) => (status, Vec::new()),
            Reply::StatusThenCloseAfter(status, idle) => {
                close_after = Some(idle);
                (status, Vec::new())
            }
            Reply::StatusWithHeaders(status, headers) => (status, headers),
            Reply::Sleep(duration, status) => {
                tokio::time::sleep(duration).await;
                (status, Vec::new())
            }
            Reply::ResetMidResponse => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
                let _ = stream.flush().await;
                // Linger 0 makes the close a reset rather than an orderly shutdown.
                let _ = stream.set_zero_linger();
                return;
            }
            Reply::Close => return,
        };
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-length: 0\r\n",
            reason(status)
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if let Some(idle) = close_after {
            tokio::time::sleep(idle).await;
            return;
        }
    }
}

/// Reads one request (head and `Content-Length` body); `None` at EOF or on anything malformed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<ReceivedRequest> {
    loop {
        let mut header_slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut header_slots);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = parsed.method?.to_owned();
                let path = parsed.path?.to_owned();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|header| {
                        (
                            header.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(header.value).into_owned(),
                        )
                    })
                    .collect();
                let body_len = headers
                    .iter()
                    .find(|(name, _)| name == "content-length")
                    .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                while buf.len() < head_len + body_len {
                    if stream.read_buf(buf).await.ok()? == 0 {
                        return None;
                    }
                }
                let body = buf[head_len..head_len + body_len].to_vec();
                buf.drain(..head_len + body_len);
                return Some(ReceivedRequest {
                    at: Instant::now(),
                    method,
                    path,
                    headers,
                    body,
                });
            }
            Ok(httparse::Status::Partial) => {
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        302 => "Found",
        400 => "Bad Request",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
